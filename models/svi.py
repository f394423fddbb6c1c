"""Stochastic variational inference (SVI) that refines an amortized posterior, with its exact reverse pass: the
inference of the semi-amortized VAE (Kim, Wiseman, Miller, Sontag and Rush, 2018).

Forward. lambda = (mean, logvar) starts at the encoder's output; each of K steps takes the gradient of the batch
loss f(lambda) = mean over the batch of E_eps[-log p(x|z)] + beta KL(q_lambda || p), one fresh eps per step,
clips its mean and log-variance parts each to norm `max_grad_norm` over the batch, and moves with heavy-ball
momentum:  g_k = clip(grad f(lambda_k)),  p_{k+1} = momentum p_k - g_k,  lambda_{k+1} = lambda_k + lr p_{k+1}.

Reverse. Given dL/dlambda_K of a loss L at lambda_K, the adjoints run back through the steps:
    a_p <- a_p + lr a_lambda;   a_lambda <- a_lambda - J_lambda(g_k)^T a_p;   dL/dtheta -= J_theta(g_k)^T a_p;
    a_p <- momentum a_p
which gives dL/dlambda_0 (for the encoder) and the decoder's gradient through the K steps. The vector-Jacobian
products of g_k are exact (double backward): each step is recomputed from its stored lambda_k with the random
seed it used (same eps, same dropout masks), one step's graph at a time, so memory does not grow with K. The
products include the derivative of the clipping, as an unrolled autograd graph would.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from models.distributions import at_least_float32

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (mean, logvar) -> batch loss, a scalar


@dataclass
class SVITrace:
    """What the reverse pass needs of a forward pass: lambda_k and the random seed of each step."""

    means: list[torch.Tensor] = field(default_factory=list)
    logvars: list[torch.Tensor] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


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


class SVIRefinement:
    """K steps of SVI with momentum on (mean, logvar), and the exact gradients of a loss at the refined posterior
    with respect to the starting posterior and the decoder's parameters (see the module docstring)."""

    def __init__(self, steps: int = 20, lr: float = 1.0, momentum: float = 0.5, max_grad_norm: float = 5.0):
        self.steps, self.lr, self.momentum, self.max_grad_norm = steps, lr, momentum, max_grad_norm

    def gradient(self, objective: Objective, mean: torch.Tensor, logvar: torch.Tensor, seed: int,
                 create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """g = clip(grad of the objective) at (mean, logvar), with the random streams seeded by `seed`."""
        with seeded(seed, mean.device):
            loss = objective(mean, logvar)
        grads = torch.autograd.grad(loss, (mean, logvar), create_graph=create_graph)
        return tuple(clip_norm(g, self.max_grad_norm) for g in grads)

    def refine(self, objective: Objective, mean: torch.Tensor, logvar: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, SVITrace]:
        """lambda_K from lambda_0 = (mean, logvar) (detached); one seed per step is drawn from torch's generator."""
        mean, logvar = at_least_float32(mean.detach()), at_least_float32(logvar.detach())
        momentum_mean, momentum_logvar = torch.zeros_like(mean), torch.zeros_like(logvar)
        trace = SVITrace()
        with torch.enable_grad():
            for _ in range(self.steps):
                seed = int(torch.randint(2**62, ()))
                trace.means.append(mean)
                trace.logvars.append(logvar)
                trace.seeds.append(seed)
                g_mean, g_logvar = self.gradient(objective, mean.requires_grad_(), logvar.requires_grad_(), seed)
                momentum_mean = self.momentum * momentum_mean - g_mean
                momentum_logvar = self.momentum * momentum_logvar - g_logvar
                mean = (mean + self.lr * momentum_mean).detach()
                logvar = (logvar + self.lr * momentum_logvar).detach()
        return mean, logvar, trace

    def backward(self, objective: Objective, trace: SVITrace, grad_mean: torch.Tensor, grad_logvar: torch.Tensor,
                 params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(dL/dmean_0, dL/dlogvar_0, the part of dL/dparams that flows through the SVI steps) from
        dL/dlambda_K = (grad_mean, grad_logvar)."""
        adjoint = [at_least_float32(grad_mean.detach()), at_least_float32(grad_logvar.detach())]
        adjoint_momentum = [torch.zeros_like(adjoint[0]), torch.zeros_like(adjoint[1])]
        param_grads = [torch.zeros_like(p) for p in params]
        with torch.enable_grad():
            for mean, logvar, seed in zip(reversed(trace.means), reversed(trace.logvars), reversed(trace.seeds)):
                adjoint_momentum = [a_p + self.lr * a for a_p, a in zip(adjoint_momentum, adjoint)]
                mean, logvar = mean.detach().requires_grad_(), logvar.detach().requires_grad_()
                g = self.gradient(objective, mean, logvar, seed, create_graph=True)
                products = torch.autograd.grad(g, (mean, logvar, *params), [-a_p for a_p in adjoint_momentum],
                                               allow_unused=True)
                adjoint = [a + product for a, product in zip(adjoint, products[:2])]
                for total, product in zip(param_grads, products[2:]):
                    if product is not None:
                        total += product
                adjoint_momentum = [self.momentum * a_p for a_p in adjoint_momentum]
        return adjoint[0], adjoint[1], param_grads
