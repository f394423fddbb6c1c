"""SLURM preemption: a checkpoint between two batches, the job requeued, the run continued exactly.

Clusters preempt and time out jobs; SLURM can warn a job with a signal before it ends (`#SBATCH
--signal=USR1@120`). Lightning's own SLURM handler saves a checkpoint inside the signal handler, wherever the
process happens to be (in the middle of a batch, or of a collective under DDP), into `hpc_ckpt_N.ckpt`, and resumes
from it with the data order of a new epoch. Here the handler only takes note; at the end of the current training
batch every process agrees, the run's `last.ckpt` is written there (with the epoch's data order and the random
generators, `runtime/random_state.py`), global rank 0 runs `scontrol requeue` for this job (or array task), and
the run stops with `Preempted` as the next batch starts (once the batch's values are logged), which `main.py`
reports in one line. The requeued job runs the same command with
`--ckpt_path last` (`experiments/slurm/main.sbatch`; the study runner's array tasks resume by themselves), and
ends with the weights and logged values of a run that was never stopped.
"""

import signal as signals
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from runtime.slurm import slurm_job


class Preempted(Exception):
    """The run stopped after saving a checkpoint, because SLURM is about to end the job."""


class RequeueOnPreemption(Callback):
    """Under SLURM: on `signal`, a checkpoint at the next batch boundary, the job requeued, the run stopped."""

    def __init__(self, signal: str = "SIGUSR1", requeue: bool = True):
        """
        Args:
            signal: the signal SLURM sends before it ends the job (`#SBATCH --signal=USR1@<seconds>`).
            requeue: run `scontrol requeue` for the job after the checkpoint (off: save and stop only).
        """
        if not (signal.startswith("SIG") and hasattr(signals, signal)):
            raise MisconfigurationException(f"preemption.signal: {signal!r} is not a signal name such as SIGUSR1")
        self.signal, self.requeue = getattr(signals, signal), requeue
        self.requested, self.active = False, False
        self.stopped: str | None = None  # what was saved, once it was
        self._previous: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before Lightning's own SLURM handler would be installed, which then leaves this signal to this one.
        if stage == "fit" and slurm_job() is not None:
            self._previous, self.active = signals.signal(self.signal, self._note), True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.active:
            signals.signal(self.signal, signals.SIG_DFL if self._previous is None else self._previous)
            self._previous, self.active = None, False

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True  # acted on between two batches: a signal handler runs wherever the process is

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self.active:
            return
        requested = trainer.strategy.reduce_boolean_decision(self.requested, all=False)
        last_of_epoch = trainer.fit_loop.epoch_loop.batch_idx + 1 >= trainer.num_training_batches
        if not requested or last_of_epoch or self.stopped is not None:  # an epoch's end: after its checkpoint
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every process: the random states are gathered
        job = slurm_job()
        if trainer.is_global_zero and self.requeue and job is not None:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode != 0:
                reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"exit {result.returncode}"]
                raise Preempted(f"saved {path}, but `scontrol requeue {job}` failed ({reason[0]}): resubmit the job")
            rank_zero_info(f"requeued SLURM job {job}")
        # Stopped as the next batch starts: this batch's values are logged after this hook.
        self.stopped = f"saved {path} at step {trainer.global_step}" + (f"; job {job} requeued" if job else "")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.stopped is not None:
            raise Preempted(self.stopped)

    @staticmethod
    def checkpoint_path(trainer: L.Trainer) -> Path:
        """The run's `last.ckpt`, which `--ckpt_path last` resumes."""
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.dirpath is None:
            return Path(trainer.default_root_dir) / "preempted.ckpt"
        return Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
