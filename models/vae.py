"""The VAE and Skip-VAE LightningModules: the wiring of encoder, decoder, ELBO, logging and optimiser.

The two classes are identical except for `latent_skip`, which the decoder reads in one place
(`Decoder.takes_latent`). The model is built from parts, each an `__init__` argument chosen in the config by
`class_path` with its own settings: the encoder and the decoder (`networks/contract.py`; the built-in ones are config
parts in `configs/parts/`), the optimizer, and those posterior-collapse remedies change: the KL weight schedule
(`models/kl_schedule.py`), the KL term of the training loss (`models/kl_term.py`), a normalisation of the posterior
means and the training procedure (`models/procedure.py`); and the posterior refinement (`models/refinement.py`: none,
or SA-VAE's SVI, which makes the SA-VAE and Skip-SA-VAE of the paper). Every part builds and initialises itself; the
model adds nothing to them. LightningCLI stores the parts' configs in the hyper-parameters, so checkpoints reload
with `load_from_checkpoint`. What applies to every model of the project lives elsewhere: checkpoint identity
(`runtime/checkpoint_identity.py`), the non-finite-step guard and random-state checkpointing (`runtime/guards.py`,
`runtime/random_state.py`).
"""

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar, cast

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from lightning.fabric.utilities.data import AttributeDict
from torch import nn
from torchmetrics import MeanMetric

from models.contract import EvaluationOutputs
from models.kl_schedule import KLSchedule, LinearWarmup
from models.kl_term import KLTerm
from models.procedure import TrainingProcedure
from models.refinement import PosteriorRefinement
from networks.contract import DataSpec, TextFormat
from networks.decoders import DecoderPart
from networks.distributions import at_least_float32, gaussian_kl_per_dim, per_example_normal
from networks.encoders import EncoderPart
from runtime.checkpoint_identity import CheckpointIdentity

OptimizerPart = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]  # the model's parameters -> an optimizer


class VAE(CheckpointIdentity, L.LightningModule):
    """Gaussian-latent VAE whose decoder sees z at its first layer only.

    Loss: the negative ELBO in nats per example, -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)), with the KL in
    closed form and beta from the KL schedule (by default 1); a `kl_term` part may replace the KL in the loss (never in
    what is logged). Logged `*/elbo` values are negative ELBOs (positive nats, an upper bound on the NLL; lower is
    better).
    """

    hparams: AttributeDict  # the saved init arguments, read as attributes
    latent_skip: ClassVar[bool] = False
    eval_metric_names: tuple[str, ...]  # logged as val/<name>, test/<name>: elbo, recon, kl and the refinement's

    def __init__(
        self,
        encoder: EncoderPart,
        decoder: DecoderPart,
        data_dims: Sequence[PositiveInt],
        latent_dim: PositiveInt = 20,
        text_format: TextFormat | None = None,
        optimizer: OptimizerPart = torch.optim.Adam,
        kl_schedule: KLSchedule | None = None,
        kl_term: KLTerm | None = None,
        mean_normalisation: Callable[[int], nn.Module] | None = None,
        refinement: PosteriorRefinement | None = None,
        procedure: TrainingProcedure | None = None,
    ):
        """
        Args:
            encoder: the inference network q(z|x), a `networks.encoders.Encoder` built with (data, latent_dim) and its
                own settings (`networks/contract.py`; e.g. `configs/parts/residual_conv_encoder.yaml`).
            decoder: the generative network p(x|z), a `networks.decoders.Decoder` built with (data, latent_dim,
                latent_skip) and its own settings.
            data_dims: shape of one example, [channels, height, width] for images or [vocab_size] for text; linked
                from the datamodule, not set by hand.
            latent_dim: dimension of z.
            text_format: for text, the ids of `<pad>`, `<bos>` and `<eos>` and the longest document; linked from the
                datamodule.
            optimizer: the optimizer of every parameter, built with them (default: Adam, lr 1e-3, the authors' image
                setting; their text models use SGD, lr 1).
            kl_schedule: the KL weight beta at each step (`models/kl_schedule.py`, e.g. the authors' text warm-up
                `LinearWarmup`); default: beta = 1.
            kl_term: the KL term of the training loss (`models/kl_term.py`); default: the exact KL.
            mean_normalisation: a module applied to the encoder's posterior means, built with the latent dimension
                (e.g. BN-VAE's batch normalisation, `models/remedies/bn_vae.py`); default: none.
            refinement: a posterior refined beyond the encoder's, on which the decoder is trained
                (`models/refinement.py`: SA-VAE's `SVI`); default: none.
            procedure: the training procedure (`models/procedure.py`); default: standard training.
        """
        super().__init__()
        self.save_hyperparameters()
        data = DataSpec(tuple(data_dims), text_format)
        self.encoder = encoder(data, latent_dim)
        self.decoder = decoder(data, latent_dim, self.latent_skip)
        self.mean_normalisation = mean_normalisation(latent_dim) if mean_normalisation is not None else None
        self.make_optimizer = optimizer
        self.kl_schedule = kl_schedule if kl_schedule is not None else LinearWarmup()
        self.kl_term = kl_term if kl_term is not None else KLTerm()
        self.kl_term.check(latent_dim)
        self.refinement = refinement
        self.procedure = procedure if procedure is not None else TrainingProcedure()
        self.procedure.setup(self)
        refined_metrics = self.refinement.metric_names if self.refinement is not None else ()
        self.eval_metric_names = ("elbo", "recon", "kl", *refined_metrics)
        self.eval_metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("val", "test") for name in self.eval_metric_names}
        )

    @property
    def latent_dim(self) -> int:
        return self.hparams.latent_dim

    @property
    def refines_posterior(self) -> bool:
        """Whether the decoder is trained on a posterior refined beyond the encoder's."""
        return self.refinement is not None

    @property
    def needed_validation_metrics(self) -> tuple[str, ...]:
        """The validation metrics the training procedure reads after every validation epoch."""
        return self.procedure.needed_metrics

    # ------------------------------------------------------------------ model
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), in float32 at least (also under mixed precision), the means through
        `mean_normalisation` when there is one."""
        mean, logvar = self.encoder(x)
        mean, logvar = at_least_float32(mean), at_least_float32(logvar)
        if self.mean_normalisation is not None:
            mean = at_least_float32(self.mean_normalisation(mean))
        return mean, logvar

    def inference_parameters(self) -> list[nn.Parameter]:
        """The parameters of q(z|x): the encoder's and the mean normalisation's."""
        modules = [self.encoder] + ([self.mean_normalisation] if self.mean_normalisation is not None else [])
        return [p for module in modules for p in module.parameters()]

    def kl_weight(self) -> float:
        """beta at the current optimizer step (from the KL schedule); 1 without a trainer. Derived from
        global_step, so a resumed run continues it."""
        if self._trainer is None:
            return 1.0
        trainer = self.trainer
        steps_per_epoch = trainer.num_training_batches / trainer.accumulate_grad_batches
        if getattr(trainer, "max_steps", -1) not in (-1, None):
            total_steps = float(trainer.max_steps)
        else:
            max_epochs = getattr(trainer, "max_epochs", None)
            total_steps = steps_per_epoch * max_epochs if max_epochs not in (-1, None) else math.inf
        return self.kl_schedule.weight(self.global_step, steps_per_epoch, total_steps)

    def elbo_terms(
        self, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One-sample ELBO terms per example at the posterior (mean, logvar), z = mean + std * noise:
        recon = -log p(x|z), kl = KL(q(z|x)||p(z)) and elbo = recon + kl (the negative ELBO), each (batch,), and
        kl_per_dimension (batch, latent)."""
        z = mean + torch.exp(0.5 * logvar) * noise
        recon = -self.decoder.log_prob(x, z)
        kl_per_dimension = gaussian_kl_per_dim(mean, logvar)
        kl = kl_per_dimension.sum(-1)
        return {"recon": recon, "kl": kl, "elbo": recon + kl, "kl_per_dimension": kl_per_dimension}

    def training_loss(self, terms: dict[str, torch.Tensor], beta: float) -> torch.Tensor:
        """The batch mean of recon + beta x the KL term (by default the exact KL: the negative ELBO with the KL
        schedule's weight)."""
        return terms["recon"].mean() + beta * self.kl_term(terms["kl_per_dimension"])

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The ELBO terms at the encoder's posterior, with its `mean` and `logvar`; noise defaults to a fresh
        standard-normal draw."""
        mean, logvar = self.encode(x)
        if noise is None:
            noise = torch.randn_like(mean)
        return {**self.elbo_terms(x, mean, logvar, noise), "mean": mean, "logvar": logvar}

    @torch.no_grad()
    def sample(self, n: int, greedy: bool = False) -> torch.Tensor:
        """Draw n examples: z ~ N(0, I), then x ~ p(x|z) autoregressively."""
        z = torch.randn(n, self.latent_dim, device=self.device)
        return self.decoder.sample(z, greedy=greedy)

    # ------------------------------------------------------------------ steps
    def log_training(self, loss: torch.Tensor, beta: float, **terms: torch.Tensor) -> None:
        """`train/loss` and `train/beta`, and the batch means of the per-example `terms` as `train/<name>`."""
        logs: dict[str, torch.Tensor | float] = {"loss": loss, **{n: v.mean() for n, v in terms.items()}, "beta": beta}
        batch_size = len(next(iter(terms.values())))
        for name, value in logs.items():
            self.log(f"train/{name}", value, prog_bar=name == "elbo", batch_size=batch_size)

    def training_step(self, batch: dict, batch_idx: int):
        self.procedure.before_step(self, batch)
        beta = self.kl_weight()
        if self.refinement is not None:
            backward_on, logs = self.refinement.training_loss(self, batch["x"], beta)
            self.log_training(logs.pop("loss"), beta, **logs)
            return backward_on
        out = self(batch["x"])
        loss = self.training_loss(out, beta)
        self.log_training(loss, beta, elbo=out["elbo"], recon=out["recon"], kl=out["kl"])
        return loss

    def evaluation_noise(self, batch: dict) -> torch.Tensor:
        """The z noise of evaluation, seeded by each example's index: val/test ELBOs do not depend on batching or
        process count."""
        return per_example_normal(batch["index"].cpu(), (self.latent_dim,), seed=0).to(self.device)

    def evaluate(self, batch: dict) -> EvaluationOutputs:
        """What the callbacks read of an evaluation batch (`diagnostics.contract.EvaluationOutputs`), with every
        per-example value of `eval_metric_names`: at the encoder's posterior, completed by the refinement."""
        noise = self.evaluation_noise(batch)
        out = self(batch["x"], noise)
        outputs = EvaluationOutputs(
            mean=out["mean"], logvar=out["logvar"], elbo=out["elbo"], recon=out["recon"], kl=out["kl"]
        )
        return self.refinement.evaluate(self, batch, outputs, noise) if self.refinement is not None else outputs

    def _evaluation_step(self, batch: dict, stage: str) -> EvaluationOutputs:
        outputs = self.evaluate(batch)
        values = cast(Mapping[str, torch.Tensor], outputs)
        for name in self.eval_metric_names:
            metric = cast(MeanMetric, self.eval_metrics[f"{stage}_{name}"])
            metric.update(values[name].detach())
            self.log(f"{stage}/{name}", metric, prog_bar=name == "elbo", on_step=False, on_epoch=True)
        return outputs

    def validation_step(self, batch: dict, batch_idx: int):
        return self._evaluation_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int):
        return self._evaluation_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """The encoder's posterior of each example and one z drawn from it with the evaluation noise, on the CPU
        (`diagnostics.posteriors.PosteriorWriter` writes them)."""
        mean, logvar = self.encode(batch["x"])
        z = mean + torch.exp(0.5 * logvar) * self.evaluation_noise(batch)
        outputs = {"mean": mean, "logvar": logvar, "z": z, "index": batch["index"]}
        if "label" in batch:
            outputs["labels"] = batch["label"]
        return {key: value.detach().cpu() for key, value in outputs.items()}

    # ------------------------------------------------------------------ the training procedure's hooks
    def check_fit(self, trainer) -> None:
        """Refuse a fit the model's parts cannot follow under `trainer`'s settings. The CLI calls it before the run
        writes anything; the start of fitting calls it again (for a fit without the CLI)."""
        self.kl_schedule.check_fit(trainer)
        self.procedure.check_fit(self, trainer)

    def on_fit_start(self) -> None:
        self.check_fit(self.trainer)

    def on_before_optimizer_step(self, optimizer) -> None:
        """A procedure that holds the encoder for this step: its gradients are dropped before clipping and the
        step (DDP has already synchronised them)."""
        if not self.procedure.updates_encoder():
            for parameter in self.inference_parameters():
                parameter.grad = None

    def on_validation_epoch_end(self) -> None:
        """After the callbacks' epoch end (MI and AU are logged by then): the procedure reads the metrics."""
        if self._trainer is not None and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.procedure.after_validation(self, self.trainer.callback_metrics)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["training_procedure"] = self.procedure.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.procedure.load_state_dict(checkpoint.get("training_procedure", {}))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())


class SkipVAE(VAE):
    """Skip-VAE: the same model, with z fed to every decoder layer and to the output layer."""

    latent_skip: ClassVar[bool] = True
