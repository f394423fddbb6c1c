"""BN-VAE: the batch's expected KL is at least latent_dim x gamma^2 / 2, whatever the encoder outputs."""

import pytest
import torch
from helpers import tiny

from models.remedies.bn_vae import BatchNormMeans
from networks.distributions import gaussian_kl


@pytest.mark.parametrize("seed", range(5))
def test_expected_kl_lower_bound_on_random_batches(seed):
    torch.manual_seed(seed)
    latent, gamma = 16, 0.5
    norm = BatchNormMeans(latent, gamma=gamma, eps=1e-12)
    with torch.no_grad():
        norm.shift.normal_()  # a learnt shift only adds to the bound
    mean = torch.randn(64, latent) * torch.rand(latent) * 10 + torch.randn(latent) * 3
    logvar = torch.randn(64, latent) * 2
    kl = gaussian_kl(norm(mean), logvar).mean()
    bound = 0.5 * (gamma**2 + norm.shift.detach().pow(2)).sum()
    assert kl >= bound - 1e-4 and bound >= latent * gamma**2 / 2
    # the bound is tight for the posterior whose variance is 1 and shift 0
    with torch.no_grad():
        norm.shift.zero_()
    assert gaussian_kl(norm(mean), torch.zeros_like(logvar)).mean().item() == pytest.approx(
        latent * gamma**2 / 2, rel=1e-4
    )


def test_the_scale_stays_fixed_in_a_model():
    """The scale is no parameter: the text networks' uniform initialisation and the optimiser never see it."""
    model = tiny(kind="lstm", latent_dim=4, mean_normalisation=lambda dim: BatchNormMeans(dim, gamma=0.7))
    assert torch.equal(model.mean_normalisation.gamma, torch.full((4,), 0.7))
    assert any(p is model.mean_normalisation.shift for p in model.inference_parameters())
    model = tiny(latent_dim=4, mean_normalisation=lambda dim: BatchNormMeans(dim, gamma=0.7, eps=1e-12))
    x = torch.bernoulli(torch.full((32, 1, 28, 28), 0.3))
    mean, _ = model.encode(x)  # training mode: the batch's statistics
    torch.testing.assert_close(mean.var(0, unbiased=False), torch.full((4,), 0.49), rtol=1e-4, atol=1e-4)
