"""Shared fixtures. Real MNIST comes from $SKIPVAE_DATA_DIR, by default the `shared/data` folder beside the
project root; every other data file a test needs is generated in its real format."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SKIPVAE_DATA_DIR", str(ROOT.parent / "shared" / "data"))
DATA_DIR = Path(os.environ["SKIPVAE_DATA_DIR"])
CONFIGS = ROOT / "configs"
PRESETS = {"debug.yaml", "bf16.yaml", "ddp.yaml", "cpu_study.yaml", "yahoo_small.yaml"}
EXPERIMENT_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in PRESETS)


@pytest.fixture(autouse=True, scope="session")
def _no_pytest_arguments():
    """Tests call cli_main(args) in this process: pytest's own command line is not the CLI's."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    yield
    sys.argv = argv


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    folder = DATA_DIR / "mnist"
    if not (folder / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real MNIST files are needed in {folder} (set SKIPVAE_DATA_DIR)")
    return folder


@pytest.fixture(scope="session")
def fixture_data_dir(tmp_path_factory) -> Path:
    """Omniglot and Yahoo files generated in their real formats (the full files are not on every machine)."""
    from fixtures import make_data_dir

    return make_data_dir(tmp_path_factory.mktemp("data"))


def fixture_args(config: str, data_dir: Path) -> list[str]:
    """Arguments that point a config whose full data may be missing at the generated fixtures."""
    if config.startswith(("omniglot", "yahoo")):
        return ["--data.init_args.data_dir", str(data_dir), "--data.init_args.check_file", "false"]
    return []
