"""The learning-rate schedule of the paper's text models, as a callback (it needs validation results)."""

import math

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info


class HalveLearningRateAfterPlateau(Callback):
    """Once `monitor` fails to improve on its best value at the end of a validation epoch, from epoch `start_epoch`
    on (counted from 1), the learning rate is multiplied by `factor` at the end of that and of every later epoch;
    training stops when it falls below `min_lr`. This is the schedule of the paper's text code (SGD lr 1, halved
    each epoch once validation stops improving at epoch 15 or later, stopped below 0.03; for SA-VAE models it
    follows the refined bound, `val/elbo_svi`). Off when `start_epoch` is None (the image models keep Adam's
    learning rate).

    Assumes one validation per training epoch. The state (best value, whether decay has started) is saved in
    checkpoints, so a resumed run continues it.
    """

    def __init__(
        self, monitor: str = "val/elbo", start_epoch: int | None = None, factor: float = 0.5, min_lr: float = 0.03
    ):
        super().__init__()
        self.monitor, self.start_epoch, self.factor, self.min_lr = monitor, start_epoch, factor, min_lr
        self.best = math.inf
        self.decaying = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after the validation epoch's metrics are computed (they are not yet in `on_validation_epoch_end`).
        if self.start_epoch is None or trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        epochs_done = trainer.current_epoch + 1
        if value < self.best:
            self.best = value
        elif epochs_done >= self.start_epoch:
            self.decaying = True
        if not self.decaying:
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= self.factor
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        rank_zero_info(f"epoch {epochs_done}: learning rate multiplied by {self.factor} to {lr:.4g}")
        if trainer.logger is not None:
            trainer.logger.log_metrics({"train/lr": lr}, step=trainer.global_step)
        if lr < self.min_lr:
            rank_zero_info(f"learning rate {lr:.4g} is below {self.min_lr}: stopping")
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "decaying": self.decaying}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.decaying = state_dict["best"], state_dict["decaying"]
