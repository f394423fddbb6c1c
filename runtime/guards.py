"""Run guards: never update the weights from a non-finite loss or gradient."""

import math
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(FloatingPointError):
    """The training loss or its gradients became NaN or infinite."""


class NonFiniteGuard(Callback):
    """Checks every optimizer step, before gradient clipping and the update: the step's training loss (the model's
    logged `train/loss`, once there is one: a training procedure may take optimizer steps before it logs) and every
    gradient norm, in one device-to-host sync. `action="stop"` ends training with an error naming the step, the
    loss parts and the last good checkpoint; `"skip"` drops the step (no update, no optimizer state change) and
    counts it in `train/skipped_steps`. Under DDP the processes agree, so they all stop or all skip. Works for
    manual optimization too: Lightning runs `on_before_optimizer_step` inside `optimizer.step()`.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop"):
        """
        Args:
            action: what a NaN/infinite training loss or gradient does: "stop" or "skip" (see the class).
        """
        super().__init__()
        self.action = action
        self.skipped_steps = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        parts = {
            name.removeprefix("train/"): value
            for name, value in trainer.callback_metrics.items()
            if name.startswith("train/") and name != "train/skipped_steps"
        }
        loss = parts.get("loss", 0.0)  # none logged yet (an optimizer step before the model's first): gradients only
        values = [torch.as_tensor(loss, dtype=torch.float32, device=pl_module.device).reshape(1)]
        if getattr(trainer.precision_plugin, "scaler", None) is None:  # fp16 loss scaling handles inf grads itself
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            if grads:
                values.append(torch.stack(torch._foreach_norm(grads)).float())
        bad = not bool(torch.isfinite(torch.cat(values)).all())
        if trainer.world_size > 1:  # every process must stop or skip together
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad and self.action == "stop":
            what = "a gradient" if torch.isfinite(values[0]).all() else "the training loss"
            raise NonFiniteLossError(self._message(trainer, what, parts))
        if bad:
            for parameter in pl_module.parameters():
                parameter.grad = None  # optimizers skip parameters without a gradient: no update, no state change
            self.skipped_steps += 1
        pl_module.log("train/skipped_steps", float(self.skipped_steps))

    @staticmethod
    def _message(trainer: L.Trainer, what: str, parts: dict) -> str:
        values = {name: float(value) for name, value in parts.items()}
        shown = {name: value for name, value in values.items() if not math.isfinite(value)} or dict(
            list(values.items())[:1]
        )
        logged = ", ".join(f"{name} {value:.4g}" for name, value in shown.items())
        checkpoints = [
            path
            for callback in trainer.checkpoint_callbacks
            for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""))
            if path
        ]
        last = f"last good checkpoint {checkpoints[0]}" if checkpoints else "no checkpoint yet"
        return (
            f"{what} is not finite at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
            f"{trainer.fit_loop.epoch_loop.batch_idx}; {logged}); not applied, {last}; lower the lr or use "
            "--nonfinite.action skip"
        )

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_steps = state_dict["skipped_steps"]
