"""The semi-amortized VAE (SA-VAE; Kim, Wiseman, Miller, Sontag and Rush, 2018) and Skip-SA-VAE: the encoder's
posterior refined by SVI (`models/svi.py`) before the decoder sees it, on the same networks as VAE and SkipVAE.

As in the official code (harvardnlp/sa-vae, reused by the Skip-VAE paper): the training loss is the negative ELBO
at the refined posterior lambda_K, with fresh noise. The decoder gets its gradient at lambda_K plus what flows
through the K steps; the encoder gets dL/dlambda_0 through the steps (the amortized ELBO is not in the loss).
KL warm-up's beta applies inside SVI and in the loss; evaluation runs the same K steps with beta = 1.
"""

from typing import ClassVar, Literal

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, PositiveFloat

from callbacks.contract import EvaluationOutputs
from models.svi import HessianProducts, Objective, SVIRefinement, seeded
from models.vae import VAE


class SAVAE(VAE):
    """VAE whose posterior is refined by `svi_steps` SVI steps; with `svi_steps: 0` it is exactly the VAE.

    Logged besides the VAE's values: `*/elbo_svi` and `*/kl_svi` at the refined posterior. `*/elbo`, `*/kl` and the
    probe use the encoder's posterior, MI and AU the one `diagnostics_posterior` names; IW-NLL and perplexities use
    the refined posterior as the proposal. The SVI loss is the batch mean, so a step moves each example by
    lr / batch size: evaluate with the training batch size (the configs set `eval_batch_size` to it).
    """

    eval_metric_names: ClassVar[tuple[str, ...]] = (*VAE.eval_metric_names, "elbo_svi", "kl_svi")
    refines_posterior: ClassVar[bool] = True

    def __init__(
        self,
        svi_steps: NonNegativeInt = 20,
        svi_lr: PositiveFloat = 1.0,
        svi_momentum: ClosedUnitInterval = 0.5,
        svi_max_grad_norm: NonNegativeFloat = 5.0,
        svi_hessian_products: HessianProducts = "exact",
        diagnostics_posterior: Literal["encoder", "refined"] = "encoder",
        **kwargs,
    ):
        """
        Args:
            svi_steps: K, SVI steps per batch (0: the VAE).
            svi_lr: SVI learning rate of the mean and the log-variance, on the batch-mean loss.
            svi_momentum: heavy-ball momentum of the SVI steps.
            svi_max_grad_norm: the gradients of the mean and of the log-variance are each clipped to this norm over
                the batch at every step (0: no clipping).
            svi_hessian_products: how the reverse pass through the steps is computed (see `models/svi.py`):
                "exact" (double backward: the gradient of the forward algorithm; recommended for new work),
                "official" (the SA-VAE authors' finite differences with their three extra clips, which produced the
                published SA-VAE and Skip-SA-VAE numbers; the experiment configs of the paper use it) or
                "finite_difference" (finite differences of the exact products, r = 1e-5, float32).
            diagnostics_posterior: the posterior of the latent diagnostics (MI, AU, per-dimension KL): the
                encoder's (the paper code's image models) or the refined one (its text models).
        """
        super().__init__(**kwargs)
        self.svi = SVIRefinement(svi_steps, svi_lr, svi_momentum, svi_max_grad_norm, svi_hessian_products)

    def svi_objective(self, x: torch.Tensor, beta: float) -> Objective:
        """f(mean, logvar): the batch mean of -log p(x|z) + beta KL, z drawn with fresh noise on each call; always
        the ELBO's KL, whatever KL term the training loss uses."""

        def objective(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
            terms = self.elbo_terms(x, mean, logvar, torch.randn_like(mean))
            return (terms["recon"] + beta * terms["kl"]).mean()

        return objective

    def svi_training_loss(self, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(surrogate, logged values). The surrogate is what Lightning's backward runs on (so gradient clipping,
        DDP synchronisation and accumulation apply as usual): its value means nothing, its gradients are the
        SA-VAE's, dL/dtheta at and through the SVI steps and dL/dlambda_0 for the encoder. `loss` (logged) is L."""
        mean, logvar = self.encode(x)
        objective = self.svi_objective(x, beta)
        params = [p for p in self.decoder.parameters() if p.requires_grad]
        refined_mean, refined_logvar, trace = self.svi.refine(objective, mean, logvar, params)
        refined_mean.requires_grad_()
        refined_logvar.requires_grad_()
        noise = torch.randn_like(mean)
        refined = self.elbo_terms(x, refined_mean, refined_logvar, noise)
        loss = self.training_loss(refined, beta)
        grad_mean, grad_logvar, *direct = torch.autograd.grad(
            loss, [refined_mean, refined_logvar, *params], allow_unused=True
        )
        grad_mean0, grad_logvar0, through_svi = self.svi.backward(objective, trace, grad_mean, grad_logvar, params)
        surrogate = (mean * grad_mean0).sum() + (logvar * grad_logvar0).sum()
        for param, at_svi, through in zip(params, direct, through_svi):
            surrogate = surrogate + (param * (through if at_svi is None else at_svi + through)).sum()
        with torch.no_grad():
            amortized = self.elbo_terms(x, mean, logvar, noise) if self.svi.steps else refined
        logs = {
            "loss": loss.detach(),
            "elbo": amortized["elbo"],
            "recon": amortized["recon"],
            "kl": amortized["kl"],
            "elbo_svi": refined["elbo"].detach(),
            "kl_svi": refined["kl"].detach(),
        }
        return surrogate, logs

    def training_step(self, batch: dict, batch_idx: int):
        self.procedure.before_step(self, batch)
        beta = self.kl_weight()
        surrogate, logs = self.svi_training_loss(batch["x"], beta)
        self.log_training(logs.pop("loss"), beta, **logs)
        return surrogate

    def evaluate(self, batch: dict) -> EvaluationOutputs:
        """The VAE's outputs at the encoder's posterior, `elbo_svi` and `kl_svi` at the refined one (same z noise),
        and the refined posterior as the IW proposal. The SVI steps need gradients, so they run outside inference
        mode, on random streams seeded by the batch's smallest example index (apart from the training streams)."""
        noise = self.evaluation_noise(batch)
        outputs = super().evaluate(batch)  # the same noise
        with torch.inference_mode(False), seeded(int(batch["index"].min()), noise.device):
            x, mean, logvar = batch["x"].clone(), outputs["mean"].clone(), outputs["logvar"].clone()
            refined_mean, refined_logvar, _ = self.svi.refine(self.svi_objective(x, 1.0), mean, logvar)
        refined = self.elbo_terms(batch["x"], refined_mean, refined_logvar, noise)
        outputs["elbo_svi"], outputs["kl_svi"] = refined["elbo"], refined["kl"]
        outputs["proposal_mean"], outputs["proposal_logvar"] = refined_mean, refined_logvar
        outputs["proposal_elbo"] = refined["elbo"]
        if self.hparams.diagnostics_posterior == "refined":
            outputs["diagnostics_mean"], outputs["diagnostics_logvar"] = refined_mean, refined_logvar
        return outputs


class SkipSAVAE(SAVAE):
    """Skip-SA-VAE: the SA-VAE with z fed to every decoder layer and to the output layer, as in SkipVAE."""

    latent_skip: ClassVar[bool] = True
