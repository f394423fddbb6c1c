"""`main.py predict` writes the encoder's posteriors to an .npz (one process or two), and `experiments.diagnose`
reads such files: the reference table of docs/metrics.md, the test metrics of the same checkpoint, and clear errors."""

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, ROOT
from helpers import MLP, config_args, error_line, logging_args, main_exit, read_events, run_main

from experiments import diagnose
from main import cli_main

FIRST_1000 = ["--data.init_args.eval_batch_size", "500", "--trainer.accelerator", "cpu"]  # 2 batches of 500


@pytest.fixture
def checkpoint(debug_run):
    return debug_run / "checkpoints" / "last.ckpt"


def predict(tmp_path, checkpoint, *extra) -> dict[str, np.ndarray]:
    """The posteriors `main.py predict` writes: in this process, or in a fresh one when `extra` names the ddp
    preset (its processes start from the command line)."""
    output = tmp_path / "posteriors.npz"
    args = [
        "predict",
        *config_args(MLP),
        *logging_args(tmp_path),
        *FIRST_1000,
        "--ckpt_path",
        str(checkpoint),
        "--posteriors.output",
        str(output),
        *extra,
    ]
    if any(arg.endswith("presets/ddp.yaml") for arg in extra):
        result = run_main(args)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        cli_main(args)
    with np.load(output) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.integration
def test_predict_writes_the_encoders_posteriors_on_one_or_two_processes(tmp_path, checkpoint):
    from datamodules import MNISTDataModule
    from models import SkipVAE

    one = predict(
        tmp_path / "one", checkpoint, "--trainer.limit_predict_batches", "4", "--data.init_args.eval_batch_size", "250"
    )
    assert {k: (v.dtype.name, v.shape) for k, v in one.items()} == {
        "mean": ("float32", (1000, 20)),
        "logvar": ("float32", (1000, 20)),
        "z": ("float32", (1000, 20)),
        "labels": ("int64", (1000,)),
        "index": ("int64", (1000,)),
    }
    data = MNISTDataModule()
    data.setup("test")
    batch = data.on_after_batch_transfer(data.datasets["test"].__getitems__(list(range(1000))), 0)
    model = SkipVAE.load_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        mean, logvar = model.encode(batch["x"])
    np.testing.assert_array_equal(one["index"], np.arange(1000))
    np.testing.assert_array_equal(one["labels"], batch["label"].numpy())
    np.testing.assert_allclose(one["mean"], mean.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(one["logvar"], logvar.numpy(), rtol=1e-6, atol=1e-6)
    # two processes (gloo), two batches of 250 each: every second example each, the same 1,000 in dataset order
    # (a limit of 1 would read as 1.0, all batches)
    two = predict(
        tmp_path / "two",
        checkpoint,
        "--config",
        str(ROOT / "configs" / "presets/ddp.yaml"),
        "--trainer.limit_predict_batches",
        "2",
        "--data.init_args.eval_batch_size",
        "250",
    )
    for key in ("index", "labels"):
        np.testing.assert_array_equal(two[key], one[key], err_msg=key)
    for key in ("mean", "logvar", "z"):  # one process on 2 threads, two on 1 each: other matmul blockings
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert [p.name for p in (tmp_path / "two").glob("*.npz")] == ["posteriors.npz"]  # one file, no shards beside it


@pytest.mark.integration
def test_diagnose_of_a_predicted_file_equals_the_test_metrics(tmp_path, checkpoint):
    posteriors = predict(tmp_path, checkpoint, "--trainer.limit_predict_batches", "2")
    cli_main(
        [
            "test",
            *config_args(MLP, "presets/debug.yaml"),
            *logging_args(tmp_path / "test"),
            *FIRST_1000,
            "--trainer.limit_test_batches",
            "2",
            "--ckpt_path",
            str(checkpoint),
        ]
    )
    events = read_events(tmp_path / "test" / "run" / "version_0")
    tensors = {key: torch.from_numpy(value) for key, value in posteriors.items()}
    tensors["mean"], tensors["logvar"] = tensors["mean"].double(), tensors["logvar"].double()
    values = diagnose.diagnose(tensors, batch_size=500)
    for name in ("kl", "mi", "mi_batch", "au"):  # the test's minibatch MI used its batches of 500
        assert values[name] == pytest.approx(events.Scalars(f"test/{name}")[-1].value, rel=1e-6), name


@pytest.mark.integration  # the full-set MI of 2 x 10,000 posteriors: about half a minute
def test_reference_table_in_the_readme_is_the_commands_output(capsys):
    files = [str(DATA_DIR / "reference" / f"mnist-{name}-latents.npz") for name in ("noskip", "skip")]
    assert diagnose.main(files) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("| file | examples | KL | MI | MI (batch 50) | AU (0.02) | probe |")
    assert printed in (ROOT / "docs" / "metrics.md").read_text()


def write(path, **arrays):
    np.savez(path, **arrays)
    return path


GOOD = {"mean": np.zeros((4, 3), np.float32), "logvar": np.zeros((4, 3), np.float32)}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("text", "is not an .npz file"),
        ("missing", "lacks logvar (it holds: mean)"),
        ("shapes", "mean and logvar must have the same shape"),
        ("nan", "logvar must hold finite floating-point values"),
        ("labels", "labels must be 4 integers, one per row"),
        ("absent", "no such file"),
    ],
)
def test_diagnose_bad_file_is_one_error_line(tmp_path, capsys, case, expected):
    path = tmp_path / "f.npz"
    if case == "text":
        path.write_text("mean,logvar\n0,0\n")
    elif case == "missing":
        write(path, mean=GOOD["mean"])
    elif case == "shapes":
        write(path, mean=GOOD["mean"], logvar=np.zeros((4, 2), np.float32))
    elif case == "nan":
        write(path, mean=GOOD["mean"], logvar=np.full((4, 3), np.nan, np.float32))
    elif case == "labels":
        write(path, **GOOD, labels=np.zeros(4, np.float32))
    assert diagnose.main([str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: ") and expected in captured.err


class TestPredictErrors:
    @pytest.mark.integration
    def test_unwritable_output(self, tmp_path, checkpoint, capsys):
        blocker = tmp_path / "file"
        blocker.write_text("")
        result = main_exit(
            [
                "predict",
                *config_args(MLP),
                *logging_args(tmp_path),
                "--ckpt_path",
                str(checkpoint),
                "--posteriors.output",
                str(blocker / "out.npz"),
            ],
            capsys,
        )
        assert result.returncode == 1 and error_line(result).startswith(f"error: cannot write to {blocker}")

    @pytest.mark.integration
    def test_checkpoint_of_another_model(self, tmp_path, checkpoint, capsys):
        result = main_exit(
            ["predict", *config_args("mnist_vae.yaml"), *logging_args(tmp_path), "--ckpt_path", str(checkpoint)], capsys
        )
        assert result.returncode == 1 and error_line(result).startswith("error: ")
        assert "model class SkipVAE (configured: VAE)" in result.stderr

    def test_unknown_split(self, tmp_path, capsys):
        with pytest.raises(SystemExit):
            cli_main(["predict", *config_args(MLP), "--data.init_args.predict_split", "training"])
        assert "predict_split" in capsys.readouterr().err
