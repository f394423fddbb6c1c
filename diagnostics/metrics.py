"""Latent-variable diagnostics as torchmetrics: states are float64 sums (or gathered posteriors), so a
metric updated over any split of the data into batches and processes computes the same value.

Inputs are the Gaussian posterior parameters of each example, `mean` and `logvar` of shape (batch, latent).
Where a metric draws z ~ q(z|x) it can seed the draw by the example's dataset index (`index`), which makes the
result independent of batch size, order and number of processes.
"""

import math
from typing import Literal

import torch
from torchmetrics import Metric

from networks.distributions import (
    LOG_2PI,
    gaussian_kl,
    gaussian_kl_per_dim,
    log_standard_normal,
    per_example_normal,
)


def sample_posterior(mean: torch.Tensor, logvar: torch.Tensor, index: torch.Tensor | None, seed: int) -> torch.Tensor:
    """One z ~ q(z|x) per row; seeded per example when `index` is given, else from the global generator."""
    if index is None:
        noise = torch.randn_like(mean)
    else:
        noise = per_example_normal(index, (mean.shape[1],), seed).to(mean)
    return mean + torch.exp(0.5 * logvar) * noise


def add_sum_states(metric: Metric, *names: str) -> None:
    """Scalar float64 states of `metric` that are summed across processes."""
    for name in names:
        metric.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")


def log_aggregate_posterior(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor, chunk_size: int = 1024):
    """log q(z_i) = logsumexp_j log N(z_i; mu_j, sigma_j^2) - log N for every row z_i, in float64.

    The (rows x N) table of log densities is built a chunk of rows at a time with two matrix products, so memory
    stays O(chunk_size * N):  sum_d (z_d - mu_d)^2 / s_d = z^2 . (1/s) - 2 z . (mu/s) + sum_d mu_d^2 / s_d.
    """
    z, means, logvars = z.double(), means.double(), logvars.double()
    precision = torch.exp(-logvars)
    constant = (means.pow(2) * precision).sum(1) + logvars.sum(1) + means.shape[1] * LOG_2PI
    out = torch.empty(len(z), dtype=torch.float64, device=z.device)
    for start in range(0, len(z), chunk_size):
        block = z[start : start + chunk_size]
        quad = block.pow(2) @ precision.T - 2.0 * block @ (means * precision).T
        out[start : start + chunk_size] = torch.logsumexp(-0.5 * (quad + constant), dim=1)
    return out - math.log(len(means))


class KLDivergence(Metric):
    """KL = (1/N) sum_i KL(q(z|x_i) || N(0, I)) in nats per example, closed form:
    KL_i = sum_d 1/2 (mu_id^2 + sigma_id^2 - 1 - log sigma_id^2).

    After `compute()`, `per_dimension` holds the mean KL of each latent dimension (the same sum, split by d).
    """

    full_state_update = False
    higher_is_better = None
    kl_sum: torch.Tensor
    kl_dim_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        add_sum_states(self, "kl_sum", "kl_dim_sum", "count")
        self.per_dimension: torch.Tensor | None = None

    def update(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        per_dim = gaussian_kl_per_dim(mean.double(), logvar.double())
        self.kl_dim_sum = self.kl_dim_sum + per_dim.sum(0)
        self.kl_sum += per_dim.sum()
        self.count += len(mean)

    def compute(self) -> torch.Tensor:
        self.per_dimension = self.kl_dim_sum / self.count
        return self.kl_sum / self.count


class ActiveUnits(Metric):
    """AU = #{d : Var_x(E_q(z|x)[z_d]) > threshold}: the number of latent dimensions whose posterior mean varies
    across the data. Variance is the unbiased sample variance over all N examples, from float64 sums of
    mu_d and mu_d^2. Threshold 0.02 as in the Skip-VAE code; later papers use 0.01.

    After `compute()`, `variances` holds Var_x(mu_d) for each dimension.
    """

    full_state_update = False
    higher_is_better = True

    total: torch.Tensor
    total_sq: torch.Tensor
    count: torch.Tensor

    def __init__(self, threshold: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        add_sum_states(self, "total", "total_sq", "count")
        self.variances: torch.Tensor | None = None

    def update(self, mean: torch.Tensor) -> None:
        mean = mean.double()
        self.total = self.total + mean.sum(0)
        self.total_sq = self.total_sq + mean.pow(2).sum(0)
        self.count += len(mean)

    def compute(self) -> torch.Tensor:
        self.variances = (self.total_sq - self.total.pow(2) / self.count) / (self.count - 1)
        return (self.variances > self.threshold).sum()


class MutualInformation(Metric):
    """Mutual information I(x; z) under the aggregate posterior q(z) = (1/N) sum_j q(z|x_j), in nats.

    estimator="full" (the Skip-VAE paper's code): with one z_i ~ q(z|x_i) per example and q(z) the mixture of
    *all* N posteriors of the evaluation set,
        MI = (1/N) sum_i KL(q(z|x_i) || p(z)) - (1/N) sum_i [log q(z_i) - log p(z_i)].
    Posteriors are gathered across processes (de-duplicated by `index` when given) and log q(z_i) is a chunked
    logsumexp. Since q(z_i) >= q(z_i|x_i) / N, the estimate is at most log N up to the Monte-Carlo error of
    the first term's one-sample counterpart.

    estimator="batch" (the minibatch estimator of later papers, e.g. He et al. 2019): per batch b of size B,
        MI_b = (1/B) sum_i [-H(q(z|x_i))] - (1/B) sum_i log q_b(z_i),  q_b = mixture over the batch only,
    averaged over batches weighted by B. It depends on the batch size and is much lower than "full".
    """

    full_state_update = False
    higher_is_better = None
    means: list[torch.Tensor]
    logvars: list[torch.Tensor]
    z: list[torch.Tensor]
    index: list[torch.Tensor]
    mi_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, estimator: Literal["full", "batch"] = "full", seed: int = 0, chunk_size: int = 1024, **kwargs):
        super().__init__(**kwargs)
        if estimator not in ("full", "batch"):
            raise ValueError(f"estimator must be 'full' or 'batch', got {estimator!r}")
        self.estimator, self.seed, self.chunk_size = estimator, seed, chunk_size
        if estimator == "full":
            for name in ("means", "logvars", "z", "index"):
                self.add_state(name, [], dist_reduce_fx="cat")
        else:
            add_sum_states(self, "mi_sum", "count")

    def update(self, mean: torch.Tensor, logvar: torch.Tensor, index: torch.Tensor | None = None) -> None:
        mean, logvar = mean.detach().float(), logvar.detach().float()
        z = sample_posterior(mean, logvar, None if index is None else index.cpu(), self.seed)
        if self.estimator == "full":
            self.means.append(mean)
            self.logvars.append(logvar)
            self.z.append(z)
            idx = index if index is not None else torch.full((len(mean),), -1, dtype=torch.long)
            self.index.append(idx.to(mean.device))
            return
        neg_entropy = -0.5 * (mean.shape[1] * (LOG_2PI + 1.0) + logvar.double().sum(1))
        log_q = log_aggregate_posterior(z, mean, logvar, self.chunk_size)
        self.mi_sum += (neg_entropy - log_q).sum()
        self.count += len(mean)

    def compute(self) -> torch.Tensor:
        if self.estimator == "batch":
            return self.mi_sum / self.count
        means, logvars, z, index = (_cat(getattr(self, name)) for name in ("means", "logvars", "z", "index"))
        if bool((index >= 0).all()):
            index, first = _first_occurrences(index)
            means, logvars, z = means[first], logvars[first], z[first]
        kl = gaussian_kl(means.double(), logvars.double()).mean()
        aggregate_kl = (
            log_aggregate_posterior(z, means, logvars, self.chunk_size) - log_standard_normal(z.double())
        ).mean()
        return kl - aggregate_kl


class ImportanceWeightedNLL(Metric):
    """NLL_IW = (1/N) sum_i -log (1/K) sum_k exp(w_ik),  w_ik = log p(x_i, z_ik) - log q(z_ik|x_i), z_ik ~ q(z|x_i).

    A lower bound on log p(x_i) for every K that tightens as K grows (Burda et al., 2016); reported as a
    positive NLL in nats per example. `update` takes the (batch, K) table of log weights.
    """

    full_state_update = False
    higher_is_better = False
    nll_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        add_sum_states(self, "nll_sum", "count")

    @staticmethod
    def per_example(log_weights: torch.Tensor) -> torch.Tensor:
        log_weights = log_weights.double()
        return -(torch.logsumexp(log_weights, dim=1) - math.log(log_weights.shape[1]))

    def update(self, log_weights: torch.Tensor) -> None:
        self.nll_sum += self.per_example(log_weights).sum()
        self.count += len(log_weights)

    def compute(self) -> torch.Tensor:
        return self.nll_sum / self.count


class TokenPerplexity(Metric):
    """PPL = exp(sum_i NLL_i / sum_i T_i): per-token perplexity from per-document NLLs (IW or -ELBO).

    T_i counts every predicted token of document i: its words and the end-of-sentence token, not the
    start token (which is given, never predicted), and no padding.
    """

    full_state_update = False
    higher_is_better = False
    nll_sum: torch.Tensor
    tokens: torch.Tensor

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        add_sum_states(self, "nll_sum", "tokens")

    def update(self, nll: torch.Tensor, num_tokens: torch.Tensor) -> None:
        self.nll_sum += nll.double().sum()
        self.tokens += num_tokens.double().sum()

    def compute(self) -> torch.Tensor:
        return torch.exp(self.nll_sum / self.tokens)


def _cat(values) -> torch.Tensor:
    return torch.cat(values) if isinstance(values, list) else values


def _first_occurrences(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique indices and the position of the first row holding each (drops padded repeats)."""
    unique, inverse = torch.unique(index, sorted=True, return_inverse=True)
    positions = torch.arange(len(index), device=index.device)
    first = torch.full((len(unique),), len(index), dtype=torch.long, device=index.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique, first
