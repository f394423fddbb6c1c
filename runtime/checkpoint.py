"""The run's checkpoints: the best by the monitored value, and `last.ckpt` at the end of every epoch, whether or not
the monitored value improved (Lightning's `save_last=True` writes it only beside a new best). So `--ckpt_path last`
(resume, preemption, `test` of the last weights) is always the newest epoch, as the exact-resume guarantee needs.
"""

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint`, whose `last.ckpt` is written at every save point, improved or not."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: L.Trainer) -> None:
        # Skipped when this step is saved already (a new best writes `last.ckpt` with it), in sanity checks and
        # outside fitting.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
