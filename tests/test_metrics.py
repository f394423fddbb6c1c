"""Latent diagnostics against brute-force computations, closed-form models and the authors' posteriors."""

import math

import numpy as np
import pytest
import torch
from conftest import DATA_DIR
from scipy.special import logsumexp

from diagnostics.metrics import (
    ActiveUnits,
    ImportanceWeightedNLL,
    KLDivergence,
    MutualInformation,
    TokenPerplexity,
    sample_posterior,
)
from networks.distributions import log_importance_weights

BATCHES = [7, 1, 13, 4]  # uneven sizes, including a single-example batch


def random_posteriors(n=25, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 1.5, torch.randn(n, d, generator=g) * 0.5 - 0.5


def split(*tensors, sizes=BATCHES):
    start = 0
    for size in sizes:
        yield tuple(t[start : start + size] for t in tensors)
        start += size


def np_kl(mean, logvar):
    return 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar)


def np_log_normal(z, mean, logvar):
    return -0.5 * (np.log(2 * np.pi) + logvar + (z - mean) ** 2 / np.exp(logvar)).sum(-1)


def np_full_mi(mean, logvar, z):
    """The paper code's estimator, written as a plain loop over examples."""
    n = len(mean)
    kl = np_kl(mean, logvar).sum(1).mean()
    agg = 0.0
    for i in range(n):
        log_q = logsumexp(np_log_normal(z[i][None], mean, logvar)) - np.log(n)
        log_p = np_log_normal(z[i][None], np.zeros_like(z[i])[None], np.zeros_like(z[i])[None])[0]
        agg += log_q - log_p
    return kl - agg / n


def np_batch_mi(mean, logvar, z):
    d = mean.shape[1]
    neg_entropy = (-0.5 * (d * (np.log(2 * np.pi) + 1) + logvar.sum(1))).mean()
    log_q = np.array([logsumexp(np_log_normal(z[i][None], mean, logvar)) - np.log(len(mean)) for i in range(len(mean))])
    return neg_entropy - log_q.mean()


def load_reference(name):
    data = np.load(DATA_DIR / "reference" / f"mnist-{name}-latents.npz")
    return torch.from_numpy(data["mean"]), torch.from_numpy(data["logvar"])


class TestAgainstBruteForce:
    def test_kl_and_per_dimension(self):
        mean, logvar = random_posteriors()
        metric = KLDivergence()
        for m, lv in split(mean, logvar):
            metric.update(m, lv)
        expected = np_kl(mean.numpy().astype(np.float64), logvar.numpy().astype(np.float64))
        assert metric.compute().item() == pytest.approx(expected.sum(1).mean(), rel=1e-12)
        np.testing.assert_allclose(metric.per_dimension.numpy(), expected.mean(0), rtol=1e-12)

    @pytest.mark.parametrize("threshold", [0.01, 0.02, 1.0])
    def test_active_units(self, threshold):
        mean, logvar = random_posteriors()
        mean[:, 0] = 3.0 + 0.01 * mean[:, 0]  # an inactive dimension with a large offset
        metric = ActiveUnits(threshold=threshold)
        for m, _ in split(mean, logvar):
            metric.update(m)
        variances = mean.double().numpy().var(0, ddof=1)
        assert metric.compute().item() == int((variances > threshold).sum())
        np.testing.assert_allclose(metric.variances.numpy(), variances, rtol=1e-9)

    def test_full_mi_matches_loop(self):
        mean, logvar = random_posteriors()
        index = torch.arange(len(mean))
        metric = MutualInformation("full", seed=3)
        for m, lv, i in split(mean, logvar, index):
            metric.update(m, lv, i)
        z = sample_posterior(mean, logvar, index, seed=3).double().numpy()
        expected = np_full_mi(mean.double().numpy(), logvar.double().numpy(), z)
        assert metric.compute().item() == pytest.approx(expected, rel=1e-6)

    def test_batch_mi_matches_loop(self):
        mean, logvar = random_posteriors()
        index = torch.arange(len(mean))
        metric = MutualInformation("batch", seed=3)
        expected, total = 0.0, 0
        for m, lv, i in split(mean, logvar, index):
            metric.update(m, lv, i)
            z = sample_posterior(m, lv, i, seed=3).double().numpy()
            expected += np_batch_mi(m.double().numpy(), lv.double().numpy(), z) * len(m)
            total += len(m)
        assert metric.compute().item() == pytest.approx(expected / total, rel=1e-6)

    def test_full_mi_ignores_repeated_examples(self):
        mean, logvar = random_posteriors()
        index = torch.arange(len(mean))
        once, twice = MutualInformation(seed=1), MutualInformation(seed=1)
        once.update(mean, logvar, index)
        twice.update(mean, logvar, index)
        twice.update(mean[:3], logvar[:3], index[:3])  # as a padded distributed shard would
        assert twice.compute().item() == once.compute().item()

    def test_result_does_not_depend_on_batching(self):
        mean, logvar = random_posteriors(n=40)
        index = torch.arange(40)
        whole, pieces = MutualInformation(seed=2), MutualInformation(seed=2)
        whole.update(mean, logvar, index)
        for m, lv, i in split(mean, logvar, index, sizes=[1, 9, 30]):
            pieces.update(m, lv, i)
        assert pieces.compute().item() == pytest.approx(whole.compute().item(), rel=1e-12)

    def test_perplexity(self):
        metric = TokenPerplexity()
        metric.update(torch.tensor([10.0, 20.0]), torch.tensor([4, 6]))
        metric.update(torch.tensor([5.0]), torch.tensor([1]))
        assert metric.compute().item() == pytest.approx(math.exp(35.0 / 11.0))


@pytest.mark.real_data
class TestOnAuthorsPosteriors:
    """The released test-set posteriors of the paper's MNIST models without and with skip connections."""

    @pytest.mark.parametrize("name", ["noskip", "skip"])
    def test_kl_and_au_match_numpy(self, name):
        mean, logvar = load_reference(name)
        kl, au = KLDivergence(), ActiveUnits(0.02)
        for start in range(0, len(mean), 999):
            kl.update(mean[start : start + 999], logvar[start : start + 999])
            au.update(mean[start : start + 999])
        m, lv = mean.double().numpy(), logvar.double().numpy()
        assert kl.compute().item() == pytest.approx(np_kl(m, lv).sum(1).mean(), rel=1e-10)
        assert au.compute().item() == int((m.var(0, ddof=1) > 0.02).sum())

    @pytest.mark.parametrize("name", ["noskip", "skip"])
    def test_full_mi_matches_loop_on_subset(self, name):
        mean, logvar = load_reference(name)
        mean, logvar, index = mean[:1500], logvar[:1500], torch.arange(1500)
        metric = MutualInformation(seed=0, chunk_size=256)
        for m, lv, i in split(mean, logvar, index, sizes=[500, 1, 999]):
            metric.update(m, lv, i)
        z = sample_posterior(mean, logvar, index, seed=0).double().numpy()
        expected = np_full_mi(mean.double().numpy(), logvar.double().numpy(), z)
        assert metric.compute().item() == pytest.approx(expected, rel=1e-6)

    def test_skip_model_uses_its_latent_code_more(self):
        results = {}
        for name in ("noskip", "skip"):
            mean, logvar = load_reference(name)
            index = torch.arange(len(mean))
            mi, kl, au = MutualInformation(seed=0), KLDivergence(), ActiveUnits(0.02)
            mi.update(mean, logvar, index)
            kl.update(mean, logvar)
            au.update(mean)
            results[name] = (kl.compute().item(), mi.compute().item(), au.compute().item())
            assert results[name][1] <= math.log(len(mean))
        assert all(s > n for s, n in zip(results["skip"], results["noskip"]))


class TestKnownMutualInformation:
    """x ~ N(0, I), q(z|x) = N(a * x, s^2): the aggregate posterior is N(0, a^2 + s^2) and
    I(x; z) = sum_d 1/2 log((a_d^2 + s_d^2) / s_d^2) exactly."""

    A = torch.tensor([0.5, 1.0, 2.0, 0.0])
    S = torch.tensor([1.0, 0.5, 0.3, 1.0])
    TRUE_MI = float(0.5 * torch.log((A**2 + S**2) / S**2).sum())

    def posteriors(self, n, seed=0):
        x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
        return x * self.A, torch.log(self.S**2).expand(n, 4)

    def test_full_estimator_within_0_05_nats(self):
        mean, logvar = self.posteriors(10_000)
        metric = MutualInformation("full", seed=0)
        for m, lv, i in split(mean, logvar, torch.arange(10_000), sizes=[2500] * 4):
            metric.update(m, lv, i)
        assert metric.compute().item() == pytest.approx(self.TRUE_MI, abs=0.05)

    def test_batch_estimator_is_low_and_grows_with_batch_size(self):
        mean, logvar = self.posteriors(10_000)
        values = {}
        for size in (50, 2000):
            metric = MutualInformation("batch", seed=0)
            for m, lv, i in split(mean, logvar, torch.arange(10_000), sizes=[size] * (10_000 // size)):
                metric.update(m, lv, i)
            values[size] = metric.compute().item()
        assert values[50] < values[2000] < self.TRUE_MI + 0.05
        assert values[2000] == pytest.approx(self.TRUE_MI, abs=0.15)


class LinearGaussianDecoder(torch.nn.Module):
    """p(x|z) = N(W z + b, sigma^2 I): log p(x) = log N(x; b, W W^T + sigma^2 I) in closed form."""

    def __init__(self, weight, bias, sigma):
        super().__init__()
        self.weight, self.bias, self.sigma = weight, bias, sigma

    def log_prob(self, x, z):
        mean = z @ self.weight.T + self.bias
        return torch.distributions.Normal(mean, self.sigma).log_prob(x).sum(-1)

    def marginal(self, x):
        cov = self.weight @ self.weight.T + self.sigma**2 * torch.eye(len(self.bias), dtype=x.dtype)
        return torch.distributions.MultivariateNormal(self.bias, cov).log_prob(x)


class TestImportanceWeightedNLL:
    def setup_method(self):
        g = torch.Generator().manual_seed(0)
        self.decoder = LinearGaussianDecoder(
            torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64), 0.7
        )
        self.x = torch.randn(5, 6, generator=g, dtype=torch.float64) * 2
        # A deliberately imperfect posterior: prior-like, so the ELBO is loose and K matters.
        self.mean = torch.zeros(5, 3, dtype=torch.float64)
        self.logvar = torch.zeros(5, 3, dtype=torch.float64)

    def nll(self, k, chunk=7, seed=0):
        noise = torch.randn(5, k, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        log_w = log_importance_weights(self.decoder.log_prob, self.x, self.mean, self.logvar, noise, chunk)
        return ImportanceWeightedNLL.per_example(log_w), log_w

    def test_approaches_exact_marginal_as_k_grows(self):
        exact = -self.decoder.marginal(self.x)
        gaps = [(self.nll(k)[0] - exact).abs().mean().item() for k in (1, 10, 5000)]
        assert gaps[2] < gaps[1] < gaps[0]
        torch.testing.assert_close(self.nll(5000)[0], exact, atol=0.05 * exact.abs().max().item(), rtol=0.02)

    def test_below_negative_elbo_on_every_example(self):
        nll, log_w = self.nll(500)
        negative_elbo = -log_w.mean(1)  # same samples: Jensen makes this hold exactly
        assert (nll <= negative_elbo + 1e-12).all()

    def test_chunking_does_not_change_the_result(self):
        torch.testing.assert_close(self.nll(50, chunk=1)[0], self.nll(50, chunk=10_000)[0])

    def test_metric_averages_per_example_values(self):
        nll, log_w = self.nll(20)
        metric = ImportanceWeightedNLL()
        metric.update(log_w[:2])
        metric.update(log_w[2:])
        assert metric.compute().item() == pytest.approx(nll.mean().item(), rel=1e-12)
