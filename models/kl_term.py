"""The KL term of the training loss, from the KL of each latent dimension of each example.

A part of the model (`VAE.kl_term`) chosen by `class_path`, so that a remedy that changes only the loss (free bits:
`models/remedies/free_bits.py`) is one file. It changes what is optimised, never what is reported: logged and
evaluated KLs and ELBOs are always the exact KL(q(z|x) || p(z)), and SA-VAE's inner SVI objective is the ELBO.
"""

import torch


class KLTerm:
    """Base class and the default: the batch mean of the exact KL (the ELBO's term)."""

    def __call__(self, kl_per_dimension: torch.Tensor) -> torch.Tensor:
        """The loss's KL, a scalar in nats per example, from KL(q(z_d|x) || p(z_d)) of shape (batch, latent)."""
        return kl_per_dimension.sum(-1).mean()

    def check(self, latent_dim: int) -> None:
        """Refuse, when the model is built, a latent dimension the term cannot use (raise
        `MisconfigurationException`)."""
