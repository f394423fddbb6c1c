"""`main.py predict` writes the posteriors q(z|x) of a split to one `.npz`, in the format of the Skip-VAE authors'
released MNIST test posteriors, so that `python -m experiments.diagnose` reads this project's and theirs alike.

Keys (N examples, D latent dimensions, in dataset order):
    mean    float32 (N, D)  the encoder's posterior mean
    logvar  float32 (N, D)  its log-variance
    z       float32 (N, D)  one draw mean + exp(logvar / 2) * eps, eps seeded by the example's index (as evaluation)
    labels  int64 (N,)      class labels, where the dataset has them
    index   int64 (N,)      each example's index in the split (not in the authors' files)
"""

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from diagnostics.contract import datamodule_of

KEYS = ("mean", "logvar", "z", "labels", "index")


class PosteriorWriter(BasePredictionWriter):
    """Gathers the `predict_step` outputs of every process on rank 0, which writes them, sorted by example index, to
    one `.npz`. No example is written twice, none is dropped."""

    def __init__(self, output: str | None = None):
        """
        Args:
            output: the `.npz` to write; default `<log dir>/posteriors_<split>.npz` (the split is the datamodule's
                `predict_split`).
        """
        super().__init__(write_interval="epoch")
        self.output = output

    def target(self, trainer: L.Trainer) -> Path:
        if self.output is not None:
            return Path(self.output)
        split = getattr(datamodule_of(trainer), "hparams", {}).get("predict_split", "test")
        return Path(trainer.log_dir or ".") / f"posteriors_{split}.npz"

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        target = self.target(trainer)  # trainer.log_dir is a collective under DDP: asked on every process
        shard = {key: torch.cat([p[key] for p in predictions]).numpy() for key in KEYS if key in predictions[0]}
        shards: list[Any] | None = [shard]
        if trainer.world_size > 1:  # every process's shard to rank 0, through the process group
            shards = [None] * trainer.world_size if trainer.is_global_zero else None
            torch.distributed.gather_object(shard, shards, dst=0)
        if trainer.is_global_zero and shards is not None:
            self.write(target, shards)

    def write(self, target: Path, shards: list[dict[str, np.ndarray]]) -> None:
        merged = {key: np.concatenate([s[key] for s in shards]) for key in shards[0]}
        order = np.argsort(merged["index"], kind="stable")
        merged = {key: value[order] for key, value in merged.items()}
        if len(np.unique(merged["index"])) != len(order):
            raise RuntimeError("an example was predicted twice: the predict loader must not repeat examples")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(target, allow_pickle=False, **merged)
        print(f"wrote the posteriors of {len(order)} examples to {target}")
