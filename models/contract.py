"""What the rest of the project may use of a model, written once: the run's callbacks (`LatentVariableModel`,
`EvaluationOutputs`) and the model's own parts (`ModelWithParts`: refinements and training procedures).

Both sides import it from here, below them, so the parts need not import the model class that holds them, and the
callbacks need not know any model class: a new model that keeps this contract gets every diagnostic and part for free
(`tests/test_models.py` checks each class).
"""

from collections.abc import Callable, Iterable
from typing import Any, NotRequired, Protocol, TypedDict, runtime_checkable

import lightning as L
import torch
from torch import nn

from networks.decoders import Decoder


@runtime_checkable
class LatentDecoder(Protocol):
    """p(x|z): log-likelihoods for IW-NLL and ancestral samples for the sample logger."""

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor: ...

    def sample(self, z: torch.Tensor, greedy: bool = False) -> torch.Tensor: ...


@runtime_checkable
class LatentVariableModel(Protocol):
    """A model with a Gaussian posterior q(z|x) = N(mean, exp(logvar)) and a decoder p(x|z)."""

    @property
    def decoder(self) -> LatentDecoder: ...

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


class ModelWithParts(Protocol):
    """What a model's parts (`models/refinement.py`, `models/procedure.py` and the remedies) may use of the model
    that holds them: its networks and loss terms, and the LightningModule's trainer, logging and clipping."""

    _trainer: L.Trainer | None
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

    @property
    def decoder(self) -> Decoder: ...

    @property
    def trainer(self) -> L.Trainer: ...

    @property
    def global_step(self) -> int: ...

    @property
    def refines_posterior(self) -> bool: ...

    def __call__(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]: ...

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def elbo_terms(
        self, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]: ...

    def training_loss(self, terms: dict[str, torch.Tensor], beta: float) -> torch.Tensor: ...

    def kl_weight(self) -> float: ...

    def inference_parameters(self) -> list[nn.Parameter]: ...

    def log(self, name: str, value: Any, *, batch_size: int | None = None) -> None: ...

    def clip_gradients(self, optimizer: torch.optim.Optimizer) -> None: ...
