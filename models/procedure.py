"""Training procedures: what happens around the model's optimizer step on each training batch.

A part of the model (`VAE.procedure`) chosen by `class_path`. The base class is the standard procedure, one step
of every parameter on each batch's loss; a procedure that interleaves other updates (aggressive inference-network
training, `models/remedies/aggressive.py`) overrides the hooks below. A procedure's state goes into the model's
checkpoints (`state_dict`), so a resumed run continues it exactly.
"""

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from models.contract import ModelWithParts


class TrainingProcedure:
    """Standard training: every optimizer step updates the encoder and the decoder on the batch's loss.

    `needed_metrics` are the validation metrics `after_validation` reads: the diagnostics that log them refuse a run
    that would not log them at every validation epoch.
    """

    needed_metrics: ClassVar[tuple[str, ...]] = ()

    def setup(self, model: ModelWithParts) -> None:
        """Called when the model is built: refuse a model the procedure cannot train (raise
        `MisconfigurationException` with the reason)."""

    def check_fit(self, model: ModelWithParts, trainer) -> None:
        """Called before a fit writes anything: refuse a run the procedure cannot follow under `trainer`'s settings
        (raise `MisconfigurationException` with the reason)."""

    def before_step(self, model: ModelWithParts, batch: dict) -> None:
        """Runs at the start of each training step, before the model's loss on `batch`."""

    def updates_encoder(self) -> bool:
        """Whether the optimizer step of the model's loss updates the inference network (the encoder)."""
        return True

    def after_validation(self, model: ModelWithParts, metrics: Mapping[str, torch.Tensor]) -> None:
        """Runs after each validation epoch of fitting (not the sanity check), with the logged metrics."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
