"""BN-VAE (Zhu, Bi, Liu, Ma, Li and Wu, "A Batch Normalized Inference Network Keeps the KL Vanishing Away",
ACL 2020): batch normalisation of the posterior means with a fixed scale gamma and a learnt shift beta_d.

Over a batch, each dimension's normalised mean has variance gamma^2 and mean beta_d, so the batch's expected KL is
bounded below by a constant the optimiser cannot push down:

    E_x[KL(q(z|x) || p)] = 1/2 sum_d (E[mu_d^2] + E[sigma_d^2 - log sigma_d^2 - 1]) >= 1/2 sum_d (gamma^2 + beta_d^2)
                         >= latent_dim gamma^2 / 2

(sigma^2 - log sigma^2 - 1 >= 0). Zhu et al. use gamma between 0.3 and 0.9 (0.6 and 0.7 on Yahoo); smaller gamma
keeps more of the prior's shape. In evaluation the running statistics replace the batch's, so the bound holds in
expectation. The scale is a buffer, not a parameter: no optimiser, initialisation or weight decay can move it.
"""

import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat
from torch import nn


class BatchNormMeans(nn.Module):
    """Batch normalisation of the posterior means, scale fixed at `gamma`, shift learnt (initially 0)."""

    gamma: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, latent_dim: int, gamma: PositiveFloat = 0.6, momentum: float = 0.1, eps: float = 1e-5):
        """
        Args:
            latent_dim: the dimension of z (given by the model).
            gamma: the fixed scale; the batch's expected KL is at least latent_dim x gamma^2 / 2.
            momentum: of the running statistics used in evaluation (PyTorch's BatchNorm1d default).
            eps: added to the batch variance (PyTorch's default).
        """
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("gamma", torch.full((latent_dim,), float(gamma)))
        self.shift = nn.Parameter(torch.zeros(latent_dim))
        self.register_buffer("running_mean", torch.zeros(latent_dim))
        self.register_buffer("running_var", torch.ones(latent_dim))

    def forward(self, mean: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            mean,
            self.running_mean,
            self.running_var,
            self.gamma,
            self.shift,
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
        )
