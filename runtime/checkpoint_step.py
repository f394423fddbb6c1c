"""Evaluation runs from a checkpoint log at the checkpoint's training step.

Lightning restores the training loops' progress only when fitting, so `main.py test --ckpt_path ...` would stamp
every scalar, chart and view at step 0, where TensorBoard draws it before the run's validation curves. With the
fit loop's progress read back (nothing else: no optimizer, no generators), the test values sit at the step the
weights were trained to, and the views of a test run line up with the validation views of the same checkpoint.
"""

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn


class CheckpointStep(Callback):
    """In test, validate and predict runs, sets the trainer's global step and epoch to the checkpoint's."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        loops = checkpoint.get("loops")
        if trainer.state.fn != TrainerFn.FITTING and loops and "fit_loop" in loops:
            trainer.fit_loop.load_state_dict(loops["fit_loop"])
