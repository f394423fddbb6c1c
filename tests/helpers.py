"""Helpers for tests that drive the command line."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
MLP = "mnist_skipvae_mlp.yaml"  # the fastest experiment: the tests' model when any trained model will do

# The format of the project's text data (`datamodules/yahoo.py`): <pad> 0, <bos> 1, <eos> 2; documents of at most 30
# predicted tokens.
TEXT_FORMAT = {"pad": 0, "bos": 1, "eos": 2, "longest": 30}


def tiny_networks(kind: str = "mlp") -> dict:
    """The model arguments of tiny built-in networks of one kind ("mlp", "pixelcnn" or "lstm"): the networks as parts,
    the data they are built for and a latent dimension of 3."""
    from functools import partial

    from networks.decoders import GatedPixelCNNDecoder, MLPDecoder
    from networks.encoders import LSTMEncoder, MLPEncoder, ResidualConvEncoder
    from networks.text_decoders import LSTMDecoder

    networks = {
        "mlp": ([1, 28, 28], partial(MLPEncoder, hidden=8), partial(MLPDecoder, hidden=8, num_layers=1)),
        "pixelcnn": (
            [1, 8, 8],
            partial(ResidualConvEncoder, channels=8, stages=2),
            partial(GatedPixelCNNDecoder, channels=6, kernel_sizes=[3, 3]),
        ),
        "lstm": (
            [9],
            partial(LSTMEncoder, embedding_dim=4, hidden=6),
            partial(LSTMDecoder, embedding_dim=4, hidden=6, num_layers=2, dropout=0.3),
        ),
    }
    dims, encoder, decoder = networks[kind]
    text = TEXT_FORMAT if kind == "lstm" else None
    return dict(encoder=encoder, decoder=decoder, data_dims=dims, text_format=text, latent_dim=3)


def tiny(model_class=None, kind: str = "mlp", **overrides):
    """A seeded model of tiny networks (`tiny_networks(kind)`), for tests without a Trainer; `overrides` are init
    arguments of the model."""
    import torch

    from models import VAE

    torch.manual_seed(0)
    return (model_class or VAE)(**{**tiny_networks(kind), **overrides})


def on_fake_trainer(model, step: int, batches: int = 10, max_epochs: int = -1):
    """`model` attached to a stand-in for a trainer that knows what `VAE.kl_weight` reads: the optimizer step, the
    batches per epoch and the run's length (-1: unknown)."""
    model._trainer = SimpleNamespace(
        num_training_batches=batches, accumulate_grad_batches=1, global_step=step, max_steps=-1, max_epochs=max_epochs
    )
    return model


def checkpoint_of(model) -> dict:
    """What a checkpoint of `model` holds for loading it: weights, hyper-parameters and the model's identity."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    return checkpoint


def config_args(*names: str) -> list[str]:
    args = []
    for name in names:
        args += ["--config", str(ROOT / "configs" / name)]
    return args


def printed_config(capsys, *args: str) -> dict:
    """The config `main.py fit <args> --print_config` resolves, as a dict."""
    import pytest
    import yaml

    from main import cli_main

    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli_main(["fit", *args, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


def flat(config: dict, prefix: str = "") -> dict:
    """A nested config as {"dotted.key": value}."""
    items = {}
    for key, value in config.items():
        if isinstance(value, dict):
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def logging_args(save_dir: Path, name: str = "run") -> list[str]:
    return [
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.logger.init_args.version",
        "0",
        "--trainer.enable_progress_bar",
        "false",
    ]


def run_main(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`python main.py ...` in a fresh process (needed for multi-process DDP and for exit codes)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT / "tests")}  # test callbacks import
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Exit:
    """How a `main.py` command ended: its exit code and what it wrote to stderr."""

    returncode: int
    stderr: str


def main_exit(args: list[str], capsys) -> Exit:
    """`main.py`'s `main(args)` in this process, for commands that end early with an error: the exit code and
    stderr of `python main.py ...` without the seconds a fresh process spends importing torch and Lightning."""
    from main import main

    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exit:  # the parser's errors
        code = 0 if exit.code is None else exit.code if isinstance(exit.code, int) else 1  # as the interpreter
    return Exit(code, capsys.readouterr().err)


def error_line(result) -> str:
    """The last stderr line of a failed `python main.py` run (a process or `main_exit`), checked to be a message
    and not a traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def read_events(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def last_scalar(events: EventAccumulator, tag: str) -> float:
    return events.Scalars(tag)[-1].value


class InjectNonFinite(Callback):
    """Test fault injection: at the given global steps, NaN input pixels ("input") or an infinite gradient
    ("gradient")."""

    def __init__(self, steps: list[int], where: str = "input"):
        super().__init__()
        self.steps, self.where = set(steps), where

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.where == "input" and trainer.global_step in self.steps:
            batch["x"].fill_(float("nan"))

    def on_after_backward(self, trainer, pl_module):
        if self.where == "gradient" and trainer.global_step in self.steps:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")


def callbacks_config(path: Path, *callbacks: str) -> list[str]:
    """A config file that sets `trainer.callbacks` (the run's own callbacks come on top) to `callbacks` (YAML items)."""
    items = "\n".join(f"    - {item}" for item in callbacks)
    path.write_text(f"trainer:\n  callbacks:\n{items}\n")
    return ["--config", str(path)]


class StopAfterFirstEpoch(Callback):
    """Ends a run after its first epoch without changing its length (`max_epochs`), as an interrupted run ends."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


class AssertReplicasAgree(Callback):
    """Test check under DDP: at the end of training every process holds the same weights (the gradients were
    synchronised); raises otherwise, which fails the run."""

    def on_train_end(self, trainer, pl_module):
        import torch

        checksums = torch.stack([p.detach().double().sum() for p in pl_module.parameters()])
        gathered = trainer.strategy.all_gather(checksums)
        if not torch.equal(gathered[0], gathered[-1]):
            raise AssertionError(f"the processes' weights differ: {gathered}")


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a run's event files: {tag: [(step, value), ...]}."""
    events = read_events(log_dir)
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def weights(checkpoint) -> dict:
    """The model weights of a checkpoint."""
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_run(full_dir, resumed_dir, resumed_logs_all: bool = True):
    """Same final weights, optimizer state and logged scalars (train per step, val per epoch): all of them when the
    resumed run logged into the interrupted one's folder (`resumed_logs_all`), else each value the resumed run
    logged is the uninterrupted run's at the same step."""
    import torch

    full = torch.load(full_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert full["global_step"] == resumed["global_step"] and full["epoch"] == resumed["epoch"]
    assert full["optimizer_states"][0]["param_groups"] == resumed["optimizer_states"][0]["param_groups"]
    for name, tensor in full["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    for state, other in zip(
        full["optimizer_states"][0]["state"].values(), resumed["optimizer_states"][0]["state"].values()
    ):
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other[key])), key
    full_scalars, resumed_scalars = scalars(full_dir), scalars(resumed_dir)
    if resumed_logs_all:
        assert full_scalars.keys() == resumed_scalars.keys()
        for tag, series in full_scalars.items():
            assert sorted(set(resumed_scalars[tag])) == sorted(set(series)), tag
    else:
        assert resumed_scalars and resumed_scalars.keys() <= full_scalars.keys()
        for tag, series in resumed_scalars.items():
            assert set(series) <= set(full_scalars[tag]), tag


def fit_in_parts(tmp_path, args: list[str], epochs: int = 3):
    """The same run twice: uninterrupted for `epochs`, and stopped after its first epoch (the same `max_epochs`)
    then resumed with `--ckpt_path last` (which continues the newest version folder)."""
    from main import cli_main

    full = [*args, "--trainer.max_epochs", str(epochs)]
    cli_main(["fit", *full, *logging_args(tmp_path, "full")])
    logging = logging_args(tmp_path, "parts")[:4] + ["--trainer.enable_progress_bar", "false"]  # no fixed version
    stop = callbacks_config(tmp_path / "stop.yaml", "class_path: helpers.StopAfterFirstEpoch")
    stopped = cli_main(["fit", *full, *logging, *stop])
    assert stopped.trainer.current_epoch == 1  # ended after its first epoch
    resumed = cli_main(["fit", *full, *logging, "--ckpt_path", "last"])
    assert resumed.trainer.logger.version == 0  # continued in the first run's folder
    return tmp_path / "full" / "version_0", tmp_path / "parts" / "version_0"


# What the generic life of an experiment runs on top of the debug preset: two epochs of two training batches, an
# epoch-end checkpoint to resume from, deterministic algorithms, no sanity check, and none of the views that decode
# autoregressively (the PixelCNN draws pixel by pixel), prior samples and latent-space views: tests/test_cli.py and
# tests/test_latent_views.py check those.
LIFECYCLE = [
    "--samples.every_n_epochs",
    "0",
    "--latent_views.num_points",
    "0",
    "--trainer.max_epochs",
    "2",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.num_sanity_val_steps",
    "0",
    "--trainer.deterministic",
    "true",
    "--checkpoint.save_top_k",
    "-1",
]


def fit_test_predict_resume_reload(tmp_path: Path, configs: list[str], *extra: str) -> dict:
    """The life of an experiment (`configs`: its `--config` arguments), each step through `main.py`'s CLI: a fit of
    two epochs; the same fit resumed from its first epoch's checkpoint in another folder, which must end with the
    same weights, optimizer state and logged values (exact resume); a test run from the resumed run's last
    checkpoint, whose metrics must be finite; `predict`, which must write the posterior of every test example; and
    `load_from_checkpoint(weights_only=True)`, which must rebuild the model with its weights. Returns the test
    run's metrics."""
    import numpy as np
    import torch

    from main import cli_main

    base = [*configs, *config_args("presets/debug.yaml"), *LIFECYCLE, *extra]
    fit = cli_main(["fit", *base, *logging_args(tmp_path, "full")])
    full = tmp_path / "full" / "version_0"
    first_epoch = full / "checkpoints" / "best-000.ckpt"
    assert (full / "checkpoints" / "last.ckpt").exists() and first_epoch.exists()
    cli_main(["fit", *base, *logging_args(tmp_path, "resumed"), "--ckpt_path", str(first_epoch)])
    resumed = tmp_path / "resumed" / "version_0"
    assert_same_run(full, resumed, resumed_logs_all=False)
    last = resumed / "checkpoints" / "last.ckpt"

    test = cli_main(["test", *base, *logging_args(tmp_path, "test"), "--ckpt_path", str(last)])
    metrics = {name: float(value) for name, value in test.trainer.callback_metrics.items()}
    for name in ("test/elbo", "test/recon", "test/kl", "test/mi", "test/au", "test/nll_iw"):
        assert np.isfinite(metrics[name]), name

    output = tmp_path / "posteriors.npz"
    predict = ["predict", *base, *logging_args(tmp_path, "predict"), "--ckpt_path", str(last)]
    cli_main([*predict, "--posteriors.output", str(output)])
    model_class = type(fit.model)
    with np.load(output) as posteriors:
        assert np.array_equal(np.sort(posteriors["index"]), np.arange(len(posteriors["index"])))  # each example once
        assert posteriors["mean"].shape == (len(posteriors["index"]), fit.model.latent_dim)
        assert np.isfinite(posteriors["logvar"]).all()

    model = model_class.load_from_checkpoint(last, map_location="cpu", weights_only=True)
    assert type(model) is model_class
    saved = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(model.state_dict(), saved, rtol=0, atol=0)
    return metrics


class SignalMidEpoch(Callback):
    """Sends this process `signal` (SLURM's warning before it ends a job) as the second batch of `epoch` starts."""

    def __init__(self, epoch: int = 1, signal: str = "SIGUSR1"):
        self.epoch, self.signal = epoch, signal

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        import os
        import signal

        if trainer.current_epoch == self.epoch and batch_idx == 1:
            os.kill(os.getpid(), getattr(signal, self.signal))
