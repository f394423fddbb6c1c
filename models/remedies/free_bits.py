"""Free bits (Kingma, Salimans, Jozefowicz, Chen, Sutskever and Welling, "Improved Variational Inference with
Inverse Autoregressive Flow", NeurIPS 2016, section C.8): the training loss's KL of each latent dimension (or group
of dimensions), averaged over the batch, is held at `lambda_` when it is below, so the optimiser gains nothing by
pushing a dimension's KL under lambda and the decoder is not rewarded for ignoring z:

    KL term = sum over groups j of max(lambda, E_batch[ KL(q(z_j|x) || p(z_j)) ])

Dimensions below lambda get no KL gradient (only the reconstruction's). Reported KLs and ELBOs are unchanged (the
exact KL). Kingma et al. use groups of latent dimensions and lambda of 0.125 to 2 nats per group; with one
dimension per group (the default) it is the "KL thresholding" of Li et al. (2019) and He et al. (2019).
"""

import torch
from jsonargparse.typing import NonNegativeFloat, PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException

from models.kl_term import KLTerm


class FreeBits(KLTerm):
    """The KL per group of `group_size` consecutive latent dimensions, batch-averaged, held at `lambda_` nats."""

    def __init__(self, lambda_: NonNegativeFloat = 0.5, group_size: PositiveInt = 1):
        """
        Args:
            lambda_: the free nats of each group (Kingma et al.'s lambda).
            group_size: latent dimensions per group (1: per dimension); must divide the latent dimension.
        """
        self.lambda_, self.group_size = lambda_, group_size

    def check(self, latent_dim: int) -> None:
        if latent_dim % self.group_size:
            raise MisconfigurationException(
                f"free bits: group_size {self.group_size} does not divide the latent dimension {latent_dim}"
            )

    def __call__(self, kl_per_dimension: torch.Tensor) -> torch.Tensor:
        batch, latent = kl_per_dimension.shape
        per_group = kl_per_dimension.mean(0).view(latent // self.group_size, self.group_size).sum(-1)
        return torch.clamp(per_group, min=self.lambda_).sum()
