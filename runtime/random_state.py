"""Random-number-generator states in checkpoints, so that a resumed run is the same run.

Every random draw of training comes from the global generators: the data order (the sampler seeds itself from
torch's generator at the start of each epoch), dynamic binarization, the reparameterisation noise and dropout.
Lightning restores weights, optimizer, loops and callbacks but not these generators, so without them a resumed run
would see other data orders and noise than an uninterrupted one. Each process's states are saved (a collective:
checkpoints are written by all processes together) and each process gets its own back on resume.

A checkpoint written between two batches of an epoch (a SLURM preemption, see `runtime/preemption.py`) also
holds the epoch's order (the sampler's seed) and how many of its batches were done; the resumed fit starts that
epoch's order after them, with the generators put back when that iteration starts (on the same number of
processes; on another it warns).
"""

import random
import warnings
from typing import Any, cast

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn


def collect_rng_states() -> dict:
    """This process's torch (CPU and CUDA), NumPy and Python generator states, as tensors and plain Python values
    (so that checkpoints stay loadable with `torch.load(weights_only=True)`)."""
    name, keys, position, has_gauss, cached = cast(tuple, np.random.get_state())
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["torch.cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(states["python"])


def gather_rng_states() -> list[dict]:
    """The generator states of every process, in rank order (a collective under torch.distributed)."""
    mine = collect_rng_states()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def restore_rng_states(states: list[dict] | None, rank: int, world_size: int) -> None:
    """Give this process its saved states back; warn instead when that is impossible because the checkpoint was
    written by a different number of processes or holds no states."""
    if not states:
        warnings.warn(
            "the checkpoint holds no random-generator states: the resumed run continues correctly but "
            "its data order and noise differ from an uninterrupted run",
            stacklevel=2,
        )
        return
    if len(states) != world_size:
        if rank == 0:
            warnings.warn(
                f"the checkpoint was written by {len(states)} process(es) and the run resumes on "
                f"{world_size}: the random streams (data order, binarization, z noise) continue from "
                "the seed, so the resumed run is valid but not bit-identical to an uninterrupted one",
                stacklevel=2,
            )
        return
    set_rng_states(states[rank])


class RandomStateCheckpoint(Callback):
    """Saves every process's generator states in each checkpoint and gives each process its own back when a fit
    resumes, before the first batch is drawn (the sanity check does not touch the generators). Tests and validation
    runs from a checkpoint leave the generators alone."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["rng_states"] = gather_rng_states()  # a collective: every process saves checkpoints together
        done = trainer.fit_loop.epoch_loop.batch_idx + 1  # batches of this epoch done (after one's end)
        sampler = getattr(getattr(trainer, "datamodule", None), "train_sampler", None)
        if 0 < done < trainer.num_training_batches and sampler is not None and sampler.seed is not None:
            checkpoint["training_order"] = {"seed": sampler.seed, "batches": done}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        states, rank, world_size = checkpoint.get("rng_states"), trainer.global_rank, trainer.world_size
        restore_rng_states(states, rank, world_size)
        order = checkpoint.get("training_order")
        if order is None:
            return
        resume_epoch = getattr(getattr(trainer, "datamodule", None), "resume_epoch", None)
        if resume_epoch is None or not states or len(states) != world_size:
            warnings.warn(
                f"the checkpoint was written after {order['batches']} batches of an epoch, and this run cannot "
                "go on with that epoch's data order (another number of processes, or another datamodule): the "
                "rest of that epoch repeats some examples and leaves out others",
                stacklevel=2,
            )
            return
        resume_epoch(order["seed"], order["batches"], lambda: restore_rng_states(states, rank, world_size))
        # Lightning's warning that a mid-epoch resume repeats the epoch's first batches does not hold here.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
