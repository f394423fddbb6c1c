"""What the callbacks need from a model and a datamodule.

The model's side is written once in `models/contract.py` (every LightningModule of the project satisfies
`LatentVariableModel`, and its `validation_step`/`test_step` return `EvaluationOutputs`). Datamodules offer
`LabeledData` (the linear probe) or `TextData` (text samples, per-token perplexity) where they can; callbacks skip
what a datamodule does not offer.
"""

from typing import Any, Protocol, cast, runtime_checkable

import lightning as L
import torch

from models.contract import LatentVariableModel


def latent_model(pl_module: L.LightningModule) -> LatentVariableModel:
    """The LightningModule a callback hook receives, as what the callbacks may use of it (every model class of the
    project satisfies the protocol: `tests/test_models.py` checks it)."""
    return cast(LatentVariableModel, pl_module)


def datamodule_of(trainer: L.Trainer) -> Any:
    """The trainer's datamodule (an attribute Lightning sets at run time), None when there is none."""
    return getattr(trainer, "datamodule", None)


@runtime_checkable
class LabeledData(Protocol):
    def probe_train_data(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class TextData(Protocol):
    """Text: token batches that read as words, and the count of the tokens a decoder predicts in each document (the
    words and `<eos>`, not `<bos>`), the denominator of per-token perplexity."""

    def decode(self, tokens: torch.Tensor) -> list[str]: ...

    def count_tokens(self, tokens: torch.Tensor) -> torch.Tensor: ...
