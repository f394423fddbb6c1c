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


def small(model_class=None, **overrides):
    """A seeded MLP model of a few units (latent 3), for tests without a Trainer; `overrides` are init arguments."""
    import torch

    from models import VAE

    torch.manual_seed(0)
    settings = dict(architecture="mlp", latent_dim=3, encoder_hidden=8, decoder_layers=1, decoder_hidden=8)
    return (model_class or VAE)(**{**settings, **overrides})


def on_fake_trainer(model, step: int, batches: int = 10, max_epochs: int = -1):
    """`model` attached to a stand-in for a trainer that knows what `VAE.kl_weight` reads: the optimizer step, the
    batches per epoch and the run's length (-1: unknown)."""
    model._trainer = SimpleNamespace(
        num_training_batches=batches, accumulate_grad_batches=1, global_step=step, max_steps=-1, max_epochs=max_epochs
    )
    return model


def config_args(*names: str) -> list[str]:
    args = []
    for name in names:
        args += ["--config", str(ROOT / "configs" / name)]
    return args


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
