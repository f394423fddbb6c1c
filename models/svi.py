"""Stochastic variational inference (SVI) that refines an amortized posterior, with its reverse pass: the
inference of the semi-amortized VAE (Kim, Wiseman, Miller, Sontag and Rush, 2018).

Forward. lambda = (mean, logvar) starts at the encoder's output; each of K steps takes the gradient of the batch
loss f(lambda) = mean over the batch of E_eps[-log p(x|z)] + beta KL(q_lambda || p), one fresh eps per step,
clips its mean and log-variance parts each to norm `max_grad_norm` over the batch, and moves with heavy-ball
momentum:  g_k = clip(grad f(lambda_k)),  p_{k+1} = momentum p_k - g_k,  lambda_{k+1} = lambda_k + lr p_{k+1}.

Reverse. Given dL/dlambda_K of a loss L at lambda_K, the adjoints run back through the steps:
    a_p <- a_p + lr a_lambda;   a_lambda <- a_lambda - J_lambda(g_k)^T a_p;   dL/dtheta -= J_theta(g_k)^T a_p;
    a_p <- momentum a_p
which gives dL/dlambda_0 (for the encoder) and the decoder's gradient through the K steps. Three ways to compute
the products J(g_k)^T a_p (`hessian_products`):

- "exact": double backward through each step, recomputed from lambda_k, including the derivative of the clipping
  (w = J_clip^T a_p; J_clip is symmetric, so J_lambda(g_k)^T a_p = H_lambda,lambda w and J_theta(g_k)^T a_p =
  H_theta,lambda w). The gradient of the forward algorithm to rounding (its cost against finite differences:
  docs/performance.md). The recomputation runs with cuDNN off and attention on PyTorch's math kernel: cuDNN's LSTM
  and the fused attention kernels have no double backward. Recommended for new work.
- "finite_difference": the same products with H w = (grad f(lambda_k + r w) - grad f(lambda_k)) / r, r = 1e-5, one
  gradient evaluation per reverse step. grad_lambda f(lambda_k) is kept from the forward pass; the decoder's
  gradients at the lambda_k are summed in float64 during the forward pass, so the decoder part needs one sum, not
  K copies of the parameters' gradients. In float32 it is off by a few percent to tens of percent.
- "official": the reverse pass of the SA-VAE authors' code (harvardnlp/sa-vae `optim_n2n.py`, run by the
  Skip-VAE code), which produced the published SA-VAE and Skip-SA-VAE numbers. Finite differences along
  v = a_p itself (no clipping Jacobian), and three more clips, each to `max_grad_norm` with the authors' scale
  max_norm / (norm + 1e-6): the perturbed gradient with respect to (mean, logvar, every decoder parameter) is
  clipped jointly, one norm over all of them; the decoder part H_theta v = (that clipped gradient - the unclipped
  one stored in the forward pass) / r is clipped jointly over the parameters before it is subtracted; H_lambda v =
  (clipped perturbed gradient - the clipped gradient stored in the forward pass) / r; and the new a_lambda is
  clipped (mean and log-variance jointly). The forward pass is the same, with the authors' clipping scale and
  K stored copies of the decoder's unclipped gradients. Whenever a clip is active this is not the gradient of
  the forward algorithm: with max_grad_norm 5 on the image models all three clips fire at every reverse step and
  the encoder's gradient is the direction of the amortized ELBO's gradient at the encoder's output, rescaled.
  With no clip active it equals "finite_difference".

All finite-difference gradient evaluations run in IEEE float32 (autocast off, no TF32): a difference at r = 1e-5
means nothing in bfloat16, nor in the TF32 that cuDNN's convolutions use by default on recent GPUs. They need a
smooth decoder: the gradient of a ReLU network jumps where lambda_k + r w crosses a kink.

Each step is recomputed with the random seed it used (same eps, same dropout masks), one step's graph at a time,
so memory holds no graph of more than one step.
"""

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from networks.distributions import at_least_float32

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (mean, logvar) -> batch loss, a scalar
HessianProducts = Literal["official", "finite_difference", "exact"]
HESSIAN_PRODUCTS = ("official", "finite_difference", "exact")


@dataclass
class SVITrace:
    """What the reverse pass needs of a forward pass: lambda_k and the random seed of each step; for finite
    differences also grad_lambda f(lambda_k) (clipped in "official" mode) and the parameters' gradients (their sum
    over k, or in "official" mode one list per step)."""

    means: list[torch.Tensor] = field(default_factory=list)
    logvars: list[torch.Tensor] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    gradients: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    param_gradient_sum: list[torch.Tensor] = field(default_factory=list)
    param_gradients: list[list[torch.Tensor]] = field(default_factory=list)


# The TF32 switches of the float32 operations a decoder runs on a GPU (PyTorch's per-backend settings).
TF32_BACKENDS: tuple[Any, ...] = (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul)  # type: ignore[attr-defined]


@contextmanager
def ieee_float32(device: torch.device) -> Iterator[None]:
    """float32 computed as float32 inside: autocast off, and no TF32 (10 mantissa bits, about 1e-3 relative) in
    cuDNN's convolutions and RNNs or in CUDA matrix products. PyTorch lets cuDNN convolutions use TF32 by default on
    Ampere and later GPUs; in a difference quotient at r = 1e-5 that error is amplified 1e5 times."""
    before = [backend.fp32_precision for backend in TF32_BACKENDS]
    try:
        for backend in TF32_BACKENDS:
            backend.fp32_precision = "ieee"
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        for backend, precision in zip(TF32_BACKENDS, before):
            backend.fp32_precision = precision


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Random streams (CPU and `device`) seeded with `seed` inside, restored afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def clip_norm(gradient: torch.Tensor, max_norm: float) -> torch.Tensor:
    """`gradient` scaled to norm `max_norm` when it is longer (differentiable); max_norm <= 0 keeps it."""
    if max_norm <= 0:
        return gradient
    norm = gradient.norm()
    return gradient * torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm))


def clip_norm_vjp(gradient: torch.Tensor, vector: torch.Tensor, max_norm: float) -> torch.Tensor:
    """J^T vector for J the Jacobian of `clip_norm` at `gradient`: s (v - u (u.v)) with u the unit gradient and
    s = max_norm / |gradient| where clipping is active; v itself where it is not."""
    norm = gradient.norm()
    if max_norm <= 0 or norm <= max_norm:
        return vector
    unit = gradient / norm
    return (max_norm / norm) * (vector - unit * (unit * vector).sum())


def clip_jointly(tensors: Sequence[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """The tensors scaled by one factor, max_norm / (total norm + 1e-6) when that is below 1: the clipping of the
    SA-VAE authors' code (one norm over all of them; max_norm <= 0 keeps them)."""
    if max_norm <= 0:
        return list(tensors)
    total = torch.stack([t.double().norm() for t in tensors]).norm()
    scale = max_norm / (float(total) + 1e-6)
    return [t * scale for t in tensors] if scale < 1 else list(tensors)


def add_float64(totals: list[torch.Tensor], grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]):
    """totals += grads, in float64 (missing gradients are zeros); `totals` starts empty."""
    if not totals:
        totals.extend(torch.zeros_like(p, dtype=torch.float64) for p in params)
    for total, grad in zip(totals, grads):
        if grad is not None:
            total += grad


class UnrolledSVI:
    """K steps of SVI with momentum on (mean, logvar), and the gradients of a loss at the refined posterior with
    respect to the starting posterior and the decoder's parameters (see the module docstring)."""

    def __init__(
        self,
        steps: int = 20,
        lr: float = 1.0,
        momentum: float = 0.5,
        max_grad_norm: float = 5.0,
        hessian_products: HessianProducts = "exact",
        finite_difference_step: float = 1e-5,
    ):
        if hessian_products not in HESSIAN_PRODUCTS:
            raise ValueError(f"hessian_products must be one of {', '.join(HESSIAN_PRODUCTS)}, not {hessian_products!r}")
        self.steps, self.lr, self.momentum, self.max_grad_norm = steps, lr, momentum, max_grad_norm
        self.hessian_products, self.finite_difference_step = hessian_products, finite_difference_step
        # When a Counter: how many times each clip of the reverse pass was active ("official" mode), for benchmarks.
        self.clip_counts: Counter[str] | None = None

    def counted_clip(self, name: str, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """`clip_jointly`, counted in `clip_counts` under `name` when it is active."""
        clipped = clip_jointly(tensors, self.max_grad_norm)
        if self.clip_counts is not None:
            self.clip_counts[name] += int(any(a is not b for a, b in zip(clipped, tensors)))
            self.clip_counts[f"{name} (evaluated)"] += 1
        return clipped

    @property
    def official(self) -> bool:
        return self.hessian_products == "official"

    def precision(self, device: torch.device) -> AbstractContextManager:
        """IEEE float32 gradient evaluations for finite differences; the run's precision otherwise."""
        if self.hessian_products != "exact":
            return ieee_float32(device)
        return nullcontext()

    def clip(self, g_mean: torch.Tensor, g_logvar: torch.Tensor) -> list[torch.Tensor]:
        """The forward pass's clipping: mean and log-variance gradients each to `max_grad_norm` (with the authors'
        scale in "official" mode)."""
        if self.official:
            return [*clip_jointly([g_mean], self.max_grad_norm), *clip_jointly([g_logvar], self.max_grad_norm)]
        return [clip_norm(g_mean, self.max_grad_norm), clip_norm(g_logvar, self.max_grad_norm)]

    def raw_gradients(
        self,
        objective: Objective,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        seed: int,
        params: Sequence[torch.Tensor] = (),
        create_graph: bool = False,
    ) -> tuple:
        """grad of the objective (unclipped) with respect to mean, logvar and `params`, on streams seeded by `seed`."""
        with seeded(seed, mean.device), self.precision(mean.device):
            loss = objective(mean, logvar)
        return torch.autograd.grad(loss, (mean, logvar, *params), create_graph=create_graph, allow_unused=True)

    def refine(
        self, objective: Objective, mean: torch.Tensor, logvar: torch.Tensor, params: Sequence[torch.Tensor] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, SVITrace]:
        """lambda_K from lambda_0 = (mean, logvar) (detached); one seed per step is drawn from torch's generator.
        `params`: the parameters `backward` will be asked about (finite differences keep their gradients here)."""
        mean, logvar = at_least_float32(mean.detach()), at_least_float32(logvar.detach())
        momentum_mean, momentum_logvar = torch.zeros_like(mean), torch.zeros_like(logvar)
        differences = self.hessian_products != "exact"
        trace = SVITrace()
        with torch.enable_grad():
            for _ in range(self.steps):
                seed = int(torch.randint(2**62, ()))
                trace.means.append(mean)
                trace.logvars.append(logvar)
                trace.seeds.append(seed)
                g_mean, g_logvar, *param_grads = self.raw_gradients(
                    objective, mean.requires_grad_(), logvar.requires_grad_(), seed, params if differences else ()
                )
                clipped = self.clip(g_mean, g_logvar)
                if self.official:
                    trace.gradients.append((clipped[0], clipped[1]))
                    trace.param_gradients.append(
                        [torch.zeros_like(p) if g is None else g for p, g in zip(params, param_grads)]
                    )
                elif differences:
                    trace.gradients.append((g_mean, g_logvar))
                    add_float64(trace.param_gradient_sum, param_grads, params)
                momentum_mean = self.momentum * momentum_mean - clipped[0]
                momentum_logvar = self.momentum * momentum_logvar - clipped[1]
                mean = (mean + self.lr * momentum_mean).detach()
                logvar = (logvar + self.lr * momentum_logvar).detach()
        return mean, logvar, trace

    def backward(
        self,
        objective: Objective,
        trace: SVITrace,
        grad_mean: torch.Tensor,
        grad_logvar: torch.Tensor,
        params: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(dL/dmean_0, dL/dlogvar_0, the part of dL/dparams that flows through the SVI steps) from
        dL/dlambda_K = (grad_mean, grad_logvar). `params` must be those given to `refine`."""
        adjoint = [at_least_float32(grad_mean.detach()), at_least_float32(grad_logvar.detach())]
        adjoint_momentum = [torch.zeros_like(adjoint[0]), torch.zeros_like(adjoint[1])]
        count = len(trace.seeds)
        stored: list[tuple[torch.Tensor, torch.Tensor] | None] = [*trace.gradients] or [None] * count
        stored_params: list[list[torch.Tensor] | None] = [*trace.param_gradients] or [None] * count
        steps = zip(
            reversed(trace.means),
            reversed(trace.logvars),
            reversed(trace.seeds),
            reversed(stored),
            reversed(stored_params),
        )
        perturbed_sum: list[torch.Tensor] = []
        param_grads = [torch.zeros_like(p) for p in params]
        products: Sequence[torch.Tensor | None]
        with torch.enable_grad():
            for mean, logvar, seed, gradients, stored_param_grads in steps:
                adjoint_momentum = [a_p + self.lr * a for a_p, a in zip(adjoint_momentum, adjoint)]
                if gradients is None:
                    products = self.exact_products(objective, mean, logvar, seed, adjoint_momentum, params)
                    for total, product in zip(param_grads, products[2:]):
                        if product is not None:
                            total -= product
                elif self.official and stored_param_grads is not None:
                    products = self.official_products(
                        objective, mean, logvar, seed, adjoint_momentum, params, gradients, stored_param_grads
                    )
                    for total, product in zip(param_grads, products[2:]):
                        total -= product
                else:
                    r = self.finite_difference_step
                    w = [clip_norm_vjp(g, a_p, self.max_grad_norm) for g, a_p in zip(gradients, adjoint_momentum)]
                    shifted = [(x + r * w_x).detach().requires_grad_() for x, w_x in zip((mean, logvar), w)]
                    g_mean, g_logvar, *perturbed = self.raw_gradients(objective, shifted[0], shifted[1], seed, params)
                    products = [(g_mean - gradients[0]) / r, (g_logvar - gradients[1]) / r]
                    add_float64(perturbed_sum, perturbed, params)
                adjoint = [a - cast(torch.Tensor, product) for a, product in zip(adjoint, products[:2])]
                if self.official:
                    adjoint = self.counted_clip("lambda adjoint", adjoint)
                adjoint_momentum = [self.momentum * a_p for a_p in adjoint_momentum]
        if perturbed_sum:
            r = self.finite_difference_step
            for total, plus, base in zip(param_grads, perturbed_sum, trace.param_gradient_sum):
                total -= ((plus - base) / r).to(total.dtype)
        return adjoint[0], adjoint[1], param_grads

    def official_products(
        self,
        objective: Objective,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        seed: int,
        vector: Sequence[torch.Tensor],
        params: Sequence[torch.Tensor],
        gradients: tuple[torch.Tensor, torch.Tensor],
        param_gradients: Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        """The authors' clipped difference quotients (H_lambda v, H_theta v) along v = `vector` at one step."""
        r = self.finite_difference_step
        shifted = [(x + r * v).detach().requires_grad_() for x, v in zip((mean, logvar), vector)]
        raw = self.raw_gradients(objective, shifted[0], shifted[1], seed, params)
        perturbed = self.counted_clip(
            "perturbed gradient", [torch.zeros_like(x) if g is None else g for x, g in zip((*shifted, *params), raw)]
        )
        lambda_products = [(g - base) / r for g, base in zip(perturbed[:2], gradients)]
        param_products = self.counted_clip(
            "H_theta v", [(g - base) / r for g, base in zip(perturbed[2:], param_gradients)]
        )
        return [*lambda_products, *param_products]

    def exact_products(
        self,
        objective: Objective,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        seed: int,
        vector: Sequence[torch.Tensor],
        params: Sequence[torch.Tensor],
    ) -> tuple:
        """J(g)^T vector with respect to (mean, logvar, *params) by double backward, g = clip(grad f) at a step."""
        mean, logvar = mean.detach().requires_grad_(), logvar.detach().requires_grad_()
        with torch.backends.cudnn.flags(enabled=False), sdpa_kernel(SDPBackend.MATH):
            raw = self.raw_gradients(objective, mean, logvar, seed, create_graph=True)
            clipped = [clip_norm(part, self.max_grad_norm) for part in raw]
            return torch.autograd.grad(clipped, (mean, logvar, *params), vector, allow_unused=True)
