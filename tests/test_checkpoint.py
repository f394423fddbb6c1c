"""`last.ckpt` is the newest epoch's, also after epochs that did not improve the monitored value (Lightning 2.6
writes it only beside a new best), so that `--ckpt_path last` resumes where training stopped."""

import lightning as L
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from runtime.checkpoint import Checkpoint


class Worsening(BoringModel):
    """A model whose monitored value gets worse after its first epoch: only epoch 0 is ever the best."""

    def on_validation_epoch_end(self) -> None:
        self.log("val/elbo", float(self.current_epoch))


def test_last_checkpoint_follows_every_epoch_while_the_best_stays(tmp_path):
    checkpoint = Checkpoint(dirpath=tmp_path, monitor="val/elbo", mode="min", save_last=True, filename="best")
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Worsening())
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    best = torch.load(tmp_path / "best.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert (best["epoch"], best["global_step"]) == (0, 2)
    assert sorted(path.name for path in tmp_path.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
