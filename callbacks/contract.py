"""What the callbacks need from a model and a datamodule, written once.

Every LightningModule of the project satisfies `LatentVariableModel` (a test checks each class); its
`validation_step`/`test_step` return `EvaluationOutputs`. Datamodules offer `LabeledData` (the linear probe) or
`TextData` (text samples) where they can; callbacks skip what a datamodule does not offer.
"""

from typing import Any, NotRequired, Protocol, TypedDict, cast, runtime_checkable

import lightning as L
import torch


@runtime_checkable
class LatentDecoder(Protocol):
    """p(x|z): log-likelihoods for IW-NLL, ancestral samples for the sample logger, token counts for perplexity."""

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor: ...

    def sample(self, z: torch.Tensor, greedy: bool = False) -> torch.Tensor: ...

    def count_tokens(self, x: torch.Tensor) -> torch.Tensor | None: ...


@runtime_checkable
class LatentVariableModel(Protocol):
    """A model with a Gaussian posterior q(z|x) = N(mean, exp(logvar)) and a decoder p(x|z)."""

    decoder: LatentDecoder

    @property
    def latent_dim(self) -> int: ...

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class EvaluationOutputs(TypedDict):
    """Per-example outputs of `validation_step`/`test_step`, shape (batch, latent) or (batch,). `mean`/`logvar`
    are the encoder's posterior (KL, MI, AU); `elbo` is the negative ELBO there. A model that refines the
    posterior (SA-VAE) adds the refined one as `proposal_*`, which IW-NLL and perplexity use instead, and may name
    the posterior of the latent diagnostics (MI, AU, per-dimension KL) as `diagnostics_*`."""

    mean: torch.Tensor
    logvar: torch.Tensor
    elbo: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    elbo_svi: NotRequired[torch.Tensor]
    kl_svi: NotRequired[torch.Tensor]
    proposal_mean: NotRequired[torch.Tensor]
    proposal_logvar: NotRequired[torch.Tensor]
    proposal_elbo: NotRequired[torch.Tensor]
    diagnostics_mean: NotRequired[torch.Tensor]
    diagnostics_logvar: NotRequired[torch.Tensor]


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
    def decode(self, tokens: torch.Tensor) -> list[str]: ...
