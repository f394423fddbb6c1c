"""ELBO parts against independent computations."""

import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal, kl_divergence

from networks.distributions import (
    bernoulli_log_prob,
    categorical_log_prob,
    gaussian_kl,
    log_normal,
    log_standard_normal,
)


class TestKL:
    def test_closed_form_matches_torch_distributions(self):
        mean, logvar = torch.randn(7, 5), torch.randn(7, 5)
        q = Independent(Normal(mean, torch.exp(0.5 * logvar)), 1)
        p = Independent(Normal(torch.zeros(5), torch.ones(5)), 1)
        torch.testing.assert_close(gaussian_kl(mean, logvar), kl_divergence(q, p))

    def test_closed_form_matches_monte_carlo(self):
        torch.manual_seed(1)
        mean, logvar = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) * 0.5
        z = mean + torch.exp(0.5 * logvar) * torch.randn(200_000, 4, 3, dtype=torch.float64)
        mc = (log_normal(z, mean, logvar) - log_standard_normal(z)).mean(0)
        # MC standard error is about sqrt(Var/200k) < 0.01 for these scales.
        torch.testing.assert_close(mc, gaussian_kl(mean, logvar), atol=0.03, rtol=0)

    def test_log_normal_matches_torch(self):
        z, mean, logvar = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 4)
        expected = Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
        torch.testing.assert_close(log_normal(z, mean, logvar), expected)
        torch.testing.assert_close(log_standard_normal(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


class TestLikelihoods:
    def test_bernoulli_matches_torch_distributions(self):
        logits = torch.randn(3, 1, 5, 5) * 4
        x = torch.bernoulli(torch.full((3, 1, 5, 5), 0.4))
        expected = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
        torch.testing.assert_close(bernoulli_log_prob(logits, x), expected)

    def test_bernoulli_is_finite_for_saturated_logits(self):
        logits = torch.tensor([[100.0, -100.0]])
        assert torch.isfinite(bernoulli_log_prob(logits, torch.tensor([[0.0, 1.0]]))).all()

    def test_categorical_masks_padding(self):
        logits = torch.randn(2, 4, 6)
        targets = torch.tensor([[3, 4, 2, 0], [5, 2, 0, 0]])
        mask = targets != 0
        expected = torch.stack(
            [
                Categorical(logits=logits[b, : int(mask[b].sum())]).log_prob(targets[b, : int(mask[b].sum())]).sum()
                for b in range(2)
            ]
        )
        torch.testing.assert_close(categorical_log_prob(logits, targets, mask), expected)
