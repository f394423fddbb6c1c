"""Shared fixtures and the data the test tiers need.

The unit tier (`make test-fast`) needs no data: every file it reads is generated in its real format
(`tests/fixtures.py`). The full tier (`make test`) also runs the `integration` tests and those marked `real_data`,
which read real files from the project's data folder: $SKIPVAE_DATA_DIR, else ./data (fill it with `make data`).
When one of those files is missing the run stops before the first test, naming the missing files.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA_DIR = Path(os.environ.get("SKIPVAE_DATA_DIR") or ROOT / "data").resolve()
os.environ["SKIPVAE_DATA_DIR"] = str(DATA_DIR)  # also for the runs the tests start in other processes
CONFIGS = ROOT / "configs"
# Every experiment is a file at the top of configs/; presets, parts and remedies live in folders of their own.
EXPERIMENT_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml"))
PRESETS = sorted(f"presets/{p.name}" for p in (CONFIGS / "presets").glob("*.yaml"))
REMEDIES = sorted(f"remedies/{p.name}" for p in (CONFIGS / "remedies").glob("*.yaml"))


def experiment_parts(config: str) -> dict[str, str | None]:
    """What an experiment file says of its model, read from the file itself (cheap enough for test collection):
    the model's class path and those of its decoder and refinement (None when it has none)."""
    import yaml

    model = yaml.safe_load((CONFIGS / config).read_text())["model"]

    def class_path(part) -> str | None:
        if isinstance(part, str) and part.endswith(".yaml"):  # a part file, relative to the configs folder
            part = yaml.safe_load((CONFIGS / part).read_text())
        return part if part is None or isinstance(part, str) else part["class_path"]

    init_args = model.get("init_args", {})
    return {
        "model": model["class_path"],
        "decoder": class_path(init_args.get("decoder")),
        "refinement": class_path(init_args.get("refinement")),
    }


# The real files the full tier reads (each entry: alternatives, any one will do).
REAL_FILES = (
    *(
        (f"mnist/{name}",)
        for name in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
    ),
    *(
        (f"mnist/binarized_mnist_{split}.amat", f"mnist/binarized_mnist_{split}.amat.gz")
        for split in ("train", "valid", "test")
    ),
    ("yahoo/valid.txt",),
    ("yahoo/test.txt",),
    ("reference/mnist-noskip-latents.npz",),
    ("reference/mnist-skip-latents.npz",),
)


def missing_real_files(data_dir: Path = DATA_DIR) -> list[str]:
    return [options[0] for options in REAL_FILES if not any((data_dir / name).exists() for name in options)]


def pytest_collection_finish(session):
    """Stop before the first test when selected tests need real files that are not in the data folder."""
    if not any(item.get_closest_marker(m) for item in session.items for m in ("integration", "real_data")):
        return
    missing = missing_real_files()
    if missing:
        pytest.exit(
            f"the full test tier needs real data files missing from {DATA_DIR}: {', '.join(missing)}. "
            "Fetch them with `make data` (or set SKIPVAE_DATA_DIR to a folder that holds them); "
            "`make test-fast` needs none.",
            returncode=4,
        )


@pytest.fixture(autouse=True, scope="session")
def _no_pytest_arguments():
    """Tests call cli_main(args) in this process: pytest's own command line is not the CLI's."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    yield
    sys.argv = argv


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request, monkeypatch):
    """The unit tier (`make test-fast`) starts no process: a test that does must be marked `integration`."""
    if request.node.get_closest_marker("integration") is None:
        import subprocess

        def refuse(*args, **kwargs):
            raise AssertionError("a unit test started a process: mark it `integration`")

        monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder (for tests marked `real_data`)."""
    return DATA_DIR / "mnist"


@pytest.fixture(scope="session")
def debug_run(tmp_path_factory) -> Path:
    """The log folder of one debug fit of the MLP SkipVAE (`configs/presets/debug.yaml`), trained once per test session
    and shared by every test that needs *a* trained model (`debug_run / "checkpoints" / "last.ckpt"`). Tests must
    not write into it."""
    from helpers import MLP, config_args, logging_args

    from main import cli_main

    tmp_path = tmp_path_factory.mktemp("debug_run")
    cli_main(["fit", *config_args(MLP, "presets/debug.yaml"), *logging_args(tmp_path)])
    return tmp_path / "run" / "version_0"


@pytest.fixture(scope="session")
def fixture_data_dir(tmp_path_factory) -> Path:
    """A data folder of every dataset, generated in the real formats (with other checksums: use `check_file false`,
    which `fixture_args` adds)."""
    from fixtures import make_data_dir

    return make_data_dir(tmp_path_factory.mktemp("data"))


def fixture_args(data_dir: Path) -> list[str]:
    """Arguments that point any experiment's datamodule at the generated fixtures of `fixture_data_dir`."""
    return ["--data.init_args.data_dir", str(data_dir), "--data.init_args.check_file", "false"]
