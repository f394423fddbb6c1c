"""Stochastic variational inference (SVI) that refines an amortized posterior, with its reverse pass: the
inference of the semi-amortized VAE (Kim, Wiseman, Miller, Sontag and Rush, 2018). This file holds what every
strategy shares; each way of computing the reverse pass's products is one class beside it.

Forward (`UnrolledSVI.refine`). lambda = (mean, logvar) starts at the encoder's output; each of K steps takes the
gradient of the batch loss f(lambda) = mean over the batch of E_eps[-log p(x|z)] + beta KL(q_lambda || p), one fresh
eps per step, clips its mean and log-variance parts each to norm `max_grad_norm` over the batch, and moves with
heavy-ball momentum:
    g_k = clip(grad f(lambda_k)),  p_{k+1} = momentum p_k - g_k,  lambda_{k+1} = lambda_k + lr p_{k+1}.

Reverse (`UnrolledSVI.backward`). Given dL/dlambda_K of a loss L at lambda_K, the adjoints run back through the steps:
    a_p <- a_p + lr a_lambda;   a_lambda <- a_lambda - J_lambda(g_k)^T a_p;   dL/dtheta -= J_theta(g_k)^T a_p;
    a_p <- momentum a_p
which gives dL/dlambda_0 (for the encoder) and the decoder's gradient through the K steps. The products
J(g_k)^T a_p are the strategy's (`hessian_products`; `models.refinement.SVI` builds the one it names):

- "exact", `models/svi_exact.py`: double backward, the gradient of the forward algorithm to rounding.
- "finite_difference", `models/svi_finite_difference.py`: the same products by finite differences, r = 1e-5.
- "official", `models/svi_official.py`: the SA-VAE authors' reverse pass (finite differences and three more clips),
  which produced the published SA-VAE and Skip-SA-VAE numbers; not the gradient of the forward algorithm.

Nothing here reads a value back to the host, so that a GPU's queue never waits on Python: clip scales are tensors,
the K steps' random seeds are drawn up front from torch's CPU generator, clip counters stay on the device. Sums
over the decoder's parameters are `torch._foreach_*` operations, one dispatch for all of them. Each step runs on
random streams seeded by its own seed, so that a reverse step can recompute it with the same eps and dropout masks.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from networks.distributions import at_least_float32

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (mean, logvar) -> batch loss, a scalar
Context = Callable[[], AbstractContextManager]  # what a network's double backward must run in
HessianProducts = Literal["official", "finite_difference", "exact"]


@dataclass
class SVITrace:
    """What the reverse pass needs of a forward pass: the objective, the parameters asked about, the context of the
    decoder's double backward, lambda_k and the random seed of each step; each strategy adds its own records."""

    objective: Objective
    params: list[torch.Tensor]
    double_backward: Context
    means: list[torch.Tensor] = field(default_factory=list)
    logvars: list[torch.Tensor] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)  # the strategy's, one per step
    totals: list[torch.Tensor] = field(default_factory=list)  # sums over the forward steps (finite differences)
    shifted_totals: list[torch.Tensor] = field(default_factory=list)  # and over the reverse steps


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
    if max_norm <= 0:
        return vector
    norm = gradient.norm()
    unit = gradient / norm
    return torch.where(norm > max_norm, (max_norm / norm) * (vector - unit * (unit * vector).sum()), vector)


def joint_clip_scales(groups: Sequence[Sequence[torch.Tensor]], max_norm: float) -> list[torch.Tensor]:
    """The SA-VAE authors' clipping factor of each group of tensors: max_norm / (the group's norm + 1e-6) where that
    is below 1, else 1; norms in float64, each factor a 0-dimensional tensor on the tensors' device."""
    norms = torch._foreach_norm([t for group in groups for t in group], 2, dtype=torch.float64)
    if len(groups) == 1:
        totals = torch.linalg.vector_norm(torch.stack(norms)) if len(norms) > 1 else norms[0]
    elif all(len(group) == 1 for group in groups):
        totals = torch.stack(norms)
    else:
        raise ValueError("joint_clip_scales takes one group of tensors, or groups of one tensor each")
    scales = torch.full_like(totals, max_norm).div_(totals + 1e-6).clamp_(max=1.0)
    return [scales] if len(groups) == 1 else list(scales.unbind())


def shifted(points: Sequence[torch.Tensor], directions: Sequence[torch.Tensor], r: float) -> list[torch.Tensor]:
    """points + r directions, as new leaves that require grad (where a difference quotient is evaluated)."""
    with torch.no_grad():
        return [x.requires_grad_() for x in torch._foreach_add(list(points), torch._foreach_mul(list(directions), r))]


def subtract(totals: list[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    """totals -= values, where an empty `totals` stands for zeros (one operation for all tensors; a zero comes out as
    -0 rather than 0 - 0 = +0, which no arithmetic that follows tells apart)."""
    if not values:
        return
    if totals:
        torch._foreach_sub_(totals, list(values))
    else:
        totals.extend(torch._foreach_neg(list(values)))


def zeros_for_missing(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients with None (a tensor the loss does not use) replaced by zeros."""
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


class ClipCounts:
    """How often each clip of a reverse pass was active, kept on the device (read with `read`, e.g. in a
    benchmark or a test): per clip, the active count and the number of evaluations."""

    def __init__(self) -> None:
        self.active: dict[str, torch.Tensor] = {}
        self.evaluated: dict[str, int] = {}

    def add(self, name: str, scale: torch.Tensor) -> None:
        fired = (scale < 1).to(torch.int64)
        self.active[name] = self.active[name] + fired if name in self.active else fired
        self.evaluated[name] = self.evaluated.get(name, 0) + 1

    def read(self) -> dict[str, tuple[int, int]]:
        """{clip: (times active, times evaluated)}."""
        return {name: (int(self.active[name]), count) for name, count in self.evaluated.items()}


class UnrolledSVI(ABC):
    """K steps of SVI with momentum on (mean, logvar), and the gradients of a loss at the refined posterior with
    respect to the starting posterior and the decoder's parameters (see the module docstring). A subclass is one way
    of computing the reverse pass: what its forward steps record (`forward_step`) and its products (`reverse_step`).
    """

    name: str

    def __init__(
        self,
        steps: int = 20,
        lr: float = 1.0,
        momentum: float = 0.5,
        max_grad_norm: float = 5.0,
        finite_difference_step: float = 1e-5,
    ):
        self.steps, self.lr, self.momentum, self.max_grad_norm = steps, lr, momentum, max_grad_norm
        self.finite_difference_step = finite_difference_step
        # When set: how often each clip of the reverse pass was active ("official" mode), for benchmarks and tests.
        self.clip_counts: ClipCounts | None = None

    def precision(self, device: torch.device) -> AbstractContextManager:
        """The context of every gradient evaluation: the run's precision, unless a strategy needs another."""
        return nullcontext()

    def clip(self, g_mean: torch.Tensor, g_logvar: torch.Tensor) -> list[torch.Tensor]:
        """The forward pass's clipping: mean and log-variance gradients each to `max_grad_norm`."""
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
        """grad of the objective (unclipped) with respect to mean, logvar and `params`, on streams seeded by `seed`;
        None for a parameter the objective does not use."""
        with seeded(seed, mean.device), self.precision(mean.device):
            loss = objective(mean, logvar)
        return torch.autograd.grad(loss, (mean, logvar, *params), create_graph=create_graph, allow_unused=True)

    def forward_step(
        self, trace: SVITrace | None, mean: torch.Tensor, logvar: torch.Tensor, seed: int, objective: Objective
    ) -> list[torch.Tensor]:
        """The clipped gradient (mean, logvar) of one forward step at lambda_k = (mean, logvar) (leaves that require
        grad), recording in `trace` what the reverse pass will need (nothing when `trace` is None)."""
        return self.clip(*self.raw_gradients(objective, mean, logvar, seed))

    @abstractmethod
    def reverse_step(
        self, trace: SVITrace, k: int, vector: list[torch.Tensor], param_grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """(J_lambda(g_k)^T v) for v = `vector` at step k, as [mean part, logvar part]; the parameters' part
        J_theta(g_k)^T v is subtracted from `param_grads` here (`subtract`: empty stands for zeros) or summed for
        `finish`."""

    def clip_adjoint(self, adjoint: list[torch.Tensor]) -> list[torch.Tensor]:
        """The new lambda-adjoint of a reverse step (the authors' code clips it)."""
        return adjoint

    def finish(self, trace: SVITrace, param_grads: list[torch.Tensor]) -> None:  # noqa: B027 (most need nothing)
        """What is left to do to `param_grads` after the last reverse step."""

    def refine(
        self,
        objective: Objective,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        params: Sequence[torch.Tensor] = (),
        double_backward: Context = nullcontext,
        for_backward: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, SVITrace]:
        """lambda_K from lambda_0 = (mean, logvar) (detached); the K steps' seeds are drawn from torch's generator.
        `params`: the parameters `backward` will be asked about; `double_backward`: the context the decoder's
        double backward must run in (`Decoder.double_backward_context`); `for_backward`: whether `backward` follows
        (if not, the trace holds only the lambda_k and the seeds)."""
        mean, logvar = at_least_float32(mean.detach()), at_least_float32(logvar.detach())
        momenta = [torch.zeros_like(mean), torch.zeros_like(logvar)]
        trace = SVITrace(objective, list(params), double_backward)
        # One draw of K values, the same numbers and the same generator state as K draws of one.
        seeds: list[int] = torch.randint(2**62, (self.steps,)).tolist() if self.steps else []
        with torch.enable_grad():
            for seed in seeds:
                trace.means.append(mean)
                trace.logvars.append(logvar)
                trace.seeds.append(seed)
                gradients = self.forward_step(
                    trace if for_backward else None, mean.requires_grad_(), logvar.requires_grad_(), seed, objective
                )
                with torch.no_grad():
                    momenta = list(torch._foreach_sub(torch._foreach_mul(momenta, self.momentum), gradients))
                    mean, logvar = torch._foreach_add([mean, logvar], torch._foreach_mul(momenta, self.lr))
        return mean, logvar, trace

    def backward(
        self, trace: SVITrace, grad_mean: torch.Tensor, grad_logvar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(dL/dmean_0, dL/dlogvar_0, the part of dL/dparams that flows through the SVI steps, for the `params` given
        to `refine`) from dL/dlambda_K = (grad_mean, grad_logvar)."""
        adjoint = [at_least_float32(grad_mean.detach()), at_least_float32(grad_logvar.detach())]
        adjoint_momentum = [torch.zeros_like(adjoint[0]), torch.zeros_like(adjoint[1])]
        param_grads: list[torch.Tensor] = []  # empty: zeros
        with torch.enable_grad():
            for k in reversed(range(len(trace.seeds))):
                adjoint_momentum = list(torch._foreach_add(adjoint_momentum, torch._foreach_mul(adjoint, self.lr)))
                products = self.reverse_step(trace, k, adjoint_momentum, param_grads)
                adjoint = self.clip_adjoint(list(torch._foreach_sub(adjoint, products)))
                adjoint_momentum = list(torch._foreach_mul(adjoint_momentum, self.momentum))
        self.finish(trace, param_grads)
        if not param_grads:
            param_grads = [torch.zeros_like(p) for p in trace.params]
        return adjoint[0], adjoint[1], param_grads
