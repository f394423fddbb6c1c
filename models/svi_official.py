"""The reverse pass of the SA-VAE authors' code (harvardnlp/sa-vae `optim_n2n.py`, run by the Skip-VAE code), which
produced the published SA-VAE and Skip-SA-VAE numbers. Finite differences along v = a_p itself (no clipping
Jacobian), and three more clips, each to `max_grad_norm` with the authors' scale max_norm / (norm + 1e-6): the
perturbed gradient with respect to (mean, logvar, every decoder parameter) is clipped jointly, one norm over all of
them; the decoder part H_theta v = (that clipped gradient - the unclipped one stored in the forward pass) / r is
clipped jointly over the parameters before it is subtracted; H_lambda v = (clipped perturbed gradient - the clipped
gradient stored in the forward pass) / r; and the new a_lambda is clipped (mean and log-variance jointly). The
forward pass is the same as the other strategies', with the authors' clipping scale, and keeps K copies of the
decoder's unclipped gradients.

Whenever a clip is active this is not the gradient of the forward algorithm: with max_grad_norm 5 on the image
models all three clips fire at every reverse step and the encoder's gradient is the direction of the amortized
ELBO's gradient at the encoder's output, rescaled. With no clip active it equals the finite-difference strategy's.
Gradient evaluations run in IEEE float32 (`models.svi.ieee_float32`).
"""

from collections.abc import Sequence

import torch

from models.svi import SVITrace, joint_clip_scales, shifted, subtract, zeros_for_missing
from models.svi_finite_difference import FiniteDifferenceSVI


class OfficialSVI(FiniteDifferenceSVI):
    """The authors' finite differences with their three extra clips (`clip_counts` counts when each is active)."""

    name = "official"

    def joint_clip(self, tensors: Sequence[torch.Tensor], counted: str = "") -> list[torch.Tensor]:
        """The tensors scaled by the authors' joint factor (kept where max_grad_norm <= 0); counted under `counted`
        in `clip_counts` when one is set."""
        if self.max_grad_norm <= 0:
            return list(tensors)
        (scale,) = joint_clip_scales([tensors], self.max_grad_norm)
        if counted and self.clip_counts is not None:
            self.clip_counts.add(counted, scale)
        return list(torch._foreach_mul(list(tensors), scale))

    def clip(self, g_mean: torch.Tensor, g_logvar: torch.Tensor) -> list[torch.Tensor]:
        """The mean's and the log-variance's gradient each with the authors' scale."""
        if self.max_grad_norm <= 0:
            return [g_mean, g_logvar]
        return list(
            torch._foreach_mul([g_mean, g_logvar], joint_clip_scales([[g_mean], [g_logvar]], self.max_grad_norm))
        )

    def record(
        self,
        trace: SVITrace,
        gradients: list[torch.Tensor],
        clipped: list[torch.Tensor],
        param_grads: Sequence[torch.Tensor | None],
    ) -> None:
        """Keeps the clipped lambda-gradient and the parameters' unclipped gradients of the step."""
        trace.records.append((clipped, zeros_for_missing(param_grads, trace.params)))

    def reverse_step(
        self, trace: SVITrace, k: int, vector: list[torch.Tensor], param_grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """The authors' clipped difference quotients (H_lambda v, H_theta v) along v = `vector` at step k."""
        r, (gradients, stored_param_grads) = self.finite_difference_step, trace.records[k]
        point = shifted((trace.means[k], trace.logvars[k]), vector, r)
        raw = self.raw_gradients(trace.objective, point[0], point[1], trace.seeds[k], trace.params)
        perturbed = self.joint_clip(zeros_for_missing(raw, (*point, *trace.params)), "perturbed gradient")
        if trace.params:
            quotients = torch._foreach_div(torch._foreach_sub(perturbed[2:], stored_param_grads), r)
            subtract(param_grads, self.joint_clip(quotients, "H_theta v"))
        return list(torch._foreach_div(torch._foreach_sub(perturbed[:2], list(gradients)), r))

    def clip_adjoint(self, adjoint: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.joint_clip(adjoint, "lambda adjoint")

    def finish(self, trace: SVITrace, param_grads: list[torch.Tensor]) -> None:
        """Nothing: each reverse step has subtracted its own clipped H_theta v."""
