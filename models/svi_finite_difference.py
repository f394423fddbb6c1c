"""The reverse pass of the SVI steps by finite differences: the exact strategy's products with
H w = (grad f(lambda_k + r w) - grad f(lambda_k)) / r, r = 1e-5, w = J_clip^T a_p (the clipping's Jacobian applied
exactly), one gradient evaluation per reverse step. grad_lambda f(lambda_k) is kept from the forward pass; the
decoder's gradients at the lambda_k and at the shifted points are each summed over the steps in float64, so that the
decoder's part is one difference of two sums, not K copies of the parameters' gradients. In float32 it is off by a
few percent to tens of percent; it needs a smooth decoder (the gradient of a ReLU network jumps where
lambda_k + r w crosses a kink). Gradient evaluations run in IEEE float32 (`models.svi.ieee_float32`).
"""

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch

from models.svi import (
    Objective,
    SVITrace,
    UnrolledSVI,
    clip_norm_vjp,
    ieee_float32,
    shifted,
    subtract,
    zeros_for_missing,
)


def add_float64(totals: list[torch.Tensor], grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]):
    """totals += grads in float64 (missing gradients are zeros); `totals` starts empty."""
    grads = zeros_for_missing(grads, like)
    if not totals:
        totals.extend(torch.zeros_like(t, dtype=torch.float64) for t in like)
    if grads:
        torch._foreach_add_(totals, grads)


class FiniteDifferenceSVI(UnrolledSVI):
    """Finite-difference products of the exact gradient (r = `finite_difference_step`). Its forward steps also take
    the parameters' gradients, which `record` keeps as the reverse pass needs them (a subclass: the authors')."""

    name = "finite_difference"

    def precision(self, device: torch.device) -> AbstractContextManager:
        return ieee_float32(device)

    def forward_step(
        self, trace: SVITrace | None, mean: torch.Tensor, logvar: torch.Tensor, seed: int, objective: Objective
    ) -> list[torch.Tensor]:
        if trace is None:
            return super().forward_step(None, mean, logvar, seed, objective)
        g_mean, g_logvar, *param_grads = self.raw_gradients(objective, mean, logvar, seed, trace.params)
        clipped = self.clip(g_mean, g_logvar)
        self.record(trace, [g_mean, g_logvar], clipped, param_grads)
        return clipped

    def record(
        self,
        trace: SVITrace,
        gradients: list[torch.Tensor],
        clipped: list[torch.Tensor],
        param_grads: Sequence[torch.Tensor | None],
    ) -> None:
        """Keeps the unclipped lambda-gradient; adds the parameters' gradients to their float64 sum."""
        trace.records.append(tuple(gradients))
        add_float64(trace.totals, param_grads, trace.params)

    def reverse_step(
        self, trace: SVITrace, k: int, vector: list[torch.Tensor], param_grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """The lambda part now; the parameters' gradients at the shifted points are summed for `finish`."""
        r, gradients = self.finite_difference_step, trace.records[k]
        w = [clip_norm_vjp(g, v, self.max_grad_norm) for g, v in zip(gradients, vector)]
        point = shifted((trace.means[k], trace.logvars[k]), w, r)
        g_mean, g_logvar, *perturbed = self.raw_gradients(
            trace.objective, point[0], point[1], trace.seeds[k], trace.params
        )
        add_float64(trace.shifted_totals, perturbed, trace.params)
        return list(torch._foreach_div(torch._foreach_sub([g_mean, g_logvar], list(gradients)), r))

    def finish(self, trace: SVITrace, param_grads: list[torch.Tensor]) -> None:
        """dL/dtheta -= (sum of shifted gradients - sum of gradients) / r, rounded to the parameters' precision."""
        if trace.shifted_totals:
            r = self.finite_difference_step
            quotients = torch._foreach_div(torch._foreach_sub(trace.shifted_totals, trace.totals), r)
            subtract(param_grads, [q.to(p.dtype) for q, p in zip(quotients, trace.params)])
