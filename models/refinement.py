"""Posterior refinement: a posterior improved beyond the encoder's before the decoder is trained on it.

A part of the model (`VAE.refinement`) chosen by `class_path`; none (the default) trains and evaluates at the
encoder's posterior. `SVI` is the semi-amortized VAE's (SA-VAE; Kim, Wiseman, Miller, Sontag and Rush, 2018): K
steps of stochastic variational inference from the encoder's output (`models/svi.py`), reused by the Skip-VAE
paper. SA-VAE and Skip-SA-VAE are VAE and SkipVAE with this part:

    model:
      class_path: models.SkipVAE
      init_args:
        refinement:
          class_path: models.refinement.SVI
          init_args: {steps: 20, hessian_products: official}
"""

from abc import abstractmethod
from typing import ClassVar, Literal

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, PositiveFloat

from models.contract import EvaluationOutputs, ModelWithParts
from models.svi import HessianProducts, Objective, UnrolledSVI, seeded
from models.svi_exact import ExactSVI, StepGraphs
from models.svi_finite_difference import FiniteDifferenceSVI
from models.svi_official import OfficialSVI
from networks.abstract import CompletePart

STRATEGIES: dict[str, type[UnrolledSVI]] = {
    "exact": ExactSVI,
    "finite_difference": FiniteDifferenceSVI,
    "official": OfficialSVI,
}


class InjectedGradients(torch.autograd.Function):
    """A zero whose backward hands each of `tensors` its given gradient (times the incoming one): one autograd node
    that puts the SA-VAE's gradients on the encoder's output and the decoder's parameters."""

    @staticmethod
    def forward(ctx, gradients: list[torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        ctx.gradients = gradients
        return tensors[0].new_zeros(())

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple:
        return (None, *torch._foreach_mul(ctx.gradients, grad_output))


class PosteriorRefinement(CompletePart):
    """Base class of a refinement: the model's training loss and evaluation at the refined posterior. A subclass
    without `training_loss` or `evaluate` is refused when it is built.

    `metric_names` are logged besides the model's own (`val/<name>`, `test/<name>`), each a per-example value of
    what `evaluate` returns.
    """

    metric_names: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def training_loss(
        self, model: ModelWithParts, x: torch.Tensor, beta: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(what Lightning's backward runs on, the logged values: `loss` and per-example `elbo`, `recon`, `kl` at
        the encoder's posterior, and the refinement's own)."""

    @abstractmethod
    def evaluate(
        self, model: ModelWithParts, batch: dict, outputs: EvaluationOutputs, noise: torch.Tensor
    ) -> EvaluationOutputs:
        """The model's evaluation `outputs` at the encoder's posterior (drawn with `noise`), completed with the
        refined posterior's values."""


class SVI(PosteriorRefinement):
    """SA-VAE: the encoder's posterior refined by `steps` SVI steps; with `steps: 0` the model is exactly the VAE.

    As in the official code (harvardnlp/sa-vae): the training loss is the negative ELBO at the refined posterior
    lambda_K, with fresh noise. The decoder gets its gradient at lambda_K plus what flows through the K steps; the
    encoder gets dL/dlambda_0 through the steps (the amortized ELBO is not in the loss). The KL schedule's beta
    applies inside SVI and in the loss; evaluation runs the same K steps with beta = 1 (in validation, the current
    beta when `validation_beta` says so). Logged besides the model's values: `*/elbo_svi` and `*/kl_svi` at the
    refined posterior (with the KL unweighted). `*/elbo`, `*/kl`, the per-dimension KL and the probe use the
    encoder's posterior, MI and AU the one `diagnostics_posterior` names; IW-NLL and perplexities use the refined
    posterior as the proposal. In the authors' mode the SVI leaves out the decoder parameters their code keeps
    outside its decoder (`Decoder.outside_authors_decoder`). The SVI loss is the batch mean, so a step moves each
    example by lr / batch size: evaluate with the training batch size (the configs set `eval_batch_size` to it).
    """

    metric_names: ClassVar[tuple[str, ...]] = ("elbo_svi", "kl_svi")

    def __init__(
        self,
        steps: NonNegativeInt = 20,
        lr: PositiveFloat = 1.0,
        momentum: ClosedUnitInterval = 0.5,
        max_grad_norm: NonNegativeFloat = 5.0,
        hessian_products: HessianProducts = "exact",
        diagnostics_posterior: Literal["encoder", "refined"] = "encoder",
        validation_beta: Literal["one", "current"] = "one",
        step_graphs: StepGraphs = "recompute",
    ):
        """
        Args:
            steps: K, SVI steps per batch (0: the VAE).
            lr: SVI learning rate of the mean and the log-variance, on the batch-mean loss.
            momentum: heavy-ball momentum of the SVI steps.
            max_grad_norm: the gradients of the mean and of the log-variance are each clipped to this norm over the
                batch at every step (0: no clipping).
            hessian_products: how the reverse pass through the steps is computed (see `models/svi.py`): "exact"
                (double backward: the gradient of the forward algorithm; recommended for new work), "official" (the
                SA-VAE authors' finite differences with their three extra clips, which produced the published
                SA-VAE and Skip-SA-VAE numbers; the experiment configs of the paper use it) or "finite_difference"
                (finite differences of the exact products, r = 1e-5, float32).
            diagnostics_posterior: the posterior of MI and AU: the encoder's (the paper code's image models) or the
                refined one (its text models).
            validation_beta: the KL weight of the SVI objective in validation: "one" (the ELBO's) or "current", the
                KL schedule's at that step, as the paper code's text models do (below 1 during the warm-up). Test
                runs always use 1, as theirs do.
            step_graphs: with "exact" products, whether the reverse pass recomputes each step's graph
                ("recompute", the default: one step's graph in memory at a time, a forward and a first backward more
                per step) or keeps it from the forward pass ("keep": K graphs in memory); "auto" keeps them when
                they fit in half the free memory (see `models/svi_exact.py`). The other modes take no graphs.
        """
        if hessian_products not in STRATEGIES:
            raise ValueError(f"hessian_products must be one of {', '.join(STRATEGIES)}, not {hessian_products!r}")
        if hessian_products == "exact":
            self.svi: UnrolledSVI = ExactSVI(steps, lr, momentum, max_grad_norm, step_graphs=step_graphs)
        else:
            self.svi = STRATEGIES[hessian_products](steps, lr, momentum, max_grad_norm)
        self.diagnostics_posterior, self.validation_beta = diagnostics_posterior, validation_beta

    def objective(self, model: ModelWithParts, x: torch.Tensor, beta: float) -> Objective:
        """f(mean, logvar): the batch mean of -log p(x|z) + beta KL, z drawn with fresh noise on each call; always
        the ELBO's KL, whatever KL term the training loss uses."""

        def objective(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
            terms = model.elbo_terms(x, mean, logvar, torch.randn_like(mean))
            return (terms["recon"] + beta * terms["kl"]).mean()

        return objective

    def svi_parameters(self, model: ModelWithParts, params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        """The decoder parameters the SVI steps are differentiated with respect to: every one, except, in the
        authors' mode, those their code keeps outside its decoder (`Decoder.outside_authors_decoder`), which get
        their gradient at lambda_K only."""
        if not isinstance(self.svi, OfficialSVI):
            return params
        outside = {id(p) for p in model.decoder.outside_authors_decoder()}
        return [p for p in params if id(p) not in outside]

    def training_loss(
        self, model: ModelWithParts, x: torch.Tensor, beta: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The surrogate is what Lightning's backward runs on (so gradient clipping, DDP synchronisation and
        accumulation apply as usual): its value means nothing, its gradients are the SA-VAE's, dL/dtheta at and
        through the SVI steps and dL/dlambda_0 for the encoder. `loss` (logged) is L."""
        mean, logvar = model.encode(x)
        objective = self.objective(model, x, beta)
        params = [p for p in model.decoder.parameters() if p.requires_grad]
        svi_params = self.svi_parameters(model, params)
        refined_mean, refined_logvar, trace = self.svi.refine(
            objective, mean, logvar, svi_params, model.decoder.double_backward_context
        )
        refined_mean.requires_grad_()
        refined_logvar.requires_grad_()
        noise = torch.randn_like(mean)
        refined = model.elbo_terms(x, refined_mean, refined_logvar, noise)
        loss = model.training_loss(refined, beta)
        grad_mean, grad_logvar, *gradients = torch.autograd.grad(
            loss, [refined_mean, refined_logvar, *params], allow_unused=True, materialize_grads=True
        )
        grad_mean0, grad_logvar0, through = self.svi.backward(trace, grad_mean, grad_logvar)
        # The gradient at lambda_K plus what flows through the steps (out of place: autograd's results may alias).
        through_svi = dict(zip(map(id, svi_params), through))
        indices = [i for i, param in enumerate(params) if id(param) in through_svi]
        if indices:
            totals = torch._foreach_add([gradients[i] for i in indices], [through_svi[id(params[i])] for i in indices])
            for i, total in zip(indices, totals):
                gradients[i] = total
        surrogate = InjectedGradients.apply([grad_mean0, grad_logvar0, *gradients], mean, logvar, *params)
        with torch.no_grad():
            amortized = model.elbo_terms(x, mean, logvar, noise) if self.svi.steps else refined
        logs = {
            "loss": loss.detach(),
            "elbo": amortized["elbo"],
            "recon": amortized["recon"],
            "kl": amortized["kl"],
            "elbo_svi": refined["elbo"].detach(),
            "kl_svi": refined["kl"].detach(),
        }
        return surrogate, logs

    def evaluate(
        self, model: ModelWithParts, batch: dict, outputs: EvaluationOutputs, noise: torch.Tensor
    ) -> EvaluationOutputs:
        """`elbo_svi` and `kl_svi` at the refined posterior (the same z noise), and the refined posterior as the IW
        proposal. The SVI steps need gradients, so they run outside inference mode, on random streams seeded by the
        batch's smallest example index (apart from the training streams)."""
        beta = 1.0
        if self.validation_beta == "current" and model._trainer is not None and model.trainer.validating:
            beta = model.kl_weight()
        with torch.inference_mode(False), seeded(int(batch["index"].min()), noise.device):
            x, mean, logvar = batch["x"].clone(), outputs["mean"].clone(), outputs["logvar"].clone()
            refined_mean, refined_logvar, _ = self.svi.refine(
                self.objective(model, x, beta), mean, logvar, for_backward=False
            )
        refined = model.elbo_terms(batch["x"], refined_mean, refined_logvar, noise)
        outputs["elbo_svi"], outputs["kl_svi"] = refined["elbo"], refined["kl"]
        outputs["proposal_mean"], outputs["proposal_logvar"] = refined_mean, refined_logvar
        outputs["proposal_elbo"] = refined["elbo"]
        if self.diagnostics_posterior == "refined":
            outputs["diagnostics_mean"], outputs["diagnostics_logvar"] = refined_mean, refined_logvar
        return outputs
