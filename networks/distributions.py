"""Closed-form densities and divergences shared by the models and the diagnostics.

All functions return per-example values (one number per row) so callers decide how to reduce.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 values (mixed precision) as float32; float32 and float64 unchanged."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def gaussian_kl_per_dim(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) for each latent dimension, shape (batch, latent)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || p(z)) in nats per example, shape (batch,)."""
    return gaussian_kl_per_dim(mean, logvar).sum(-1)


def log_normal(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(logvar))) summed over the last dimension (broadcasting)."""
    return -0.5 * (LOG_2PI + logvar + (z - mean).pow(2) * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) of binary data, summed over all but the first dimension, shape (batch,).

    Computed from logits (not probabilities) so it stays finite for saturated pixels; in float32 or wider.
    """
    logits = at_least_float32(logits)
    nll = F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
    return -nll.flatten(1).sum(-1)


def categorical_log_prob(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(tokens | logits) summed over unmasked positions, shape (batch,).

    logits: (batch, time, vocab); targets, mask: (batch, time). Padded positions (mask False) add nothing.
    """
    log_probs = -F.cross_entropy(at_least_float32(logits).transpose(1, 2), targets, reduction="none")
    return (log_probs * mask).sum(-1)


def per_example_normal(index: torch.Tensor, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard-normal noise of `shape` for each example, from a generator seeded by (seed, example index).

    Evaluation draws made this way do not depend on batch size, order or the number of processes.
    """
    generator = torch.Generator()
    rows = []
    for i in index.tolist():
        generator.manual_seed(seed * 1_000_003 + int(i))
        rows.append(torch.randn(shape, generator=generator))
    return torch.stack(rows)


@torch.no_grad()
def log_importance_weights(
    log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    noise: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for z_k = mean + std * noise[:, k], shape (batch, K), float32.

    `log_likelihood(x, z)` is the decoder's log p(x|z) per row. The batch*K evaluations run in slices of at most
    `chunk_size`, so memory does not grow with K.
    """
    batch, num_samples, _ = noise.shape
    z = (mean.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * noise).flatten(0, 1)
    log_prior = log_standard_normal(z)
    log_q = log_normal(z, mean.repeat_interleave(num_samples, 0), logvar.repeat_interleave(num_samples, 0))
    log_lik = torch.empty(batch * num_samples, device=z.device)
    for start in range(0, batch * num_samples, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, batch * num_samples), device=z.device)
        log_lik[rows] = log_likelihood(x[rows // num_samples], z[rows]).float()
    return (log_lik + log_prior - log_q).view(batch, num_samples)
