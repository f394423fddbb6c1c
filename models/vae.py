"""The VAE and Skip-VAE LightningModules: the wiring of encoder, decoder, ELBO, logging and optimiser.

The two classes are identical except for `latent_skip`, which the decoder reads in one place
(`SkipDecoder.takes_latent`). The model's parts are `__init__` arguments chosen in the config by `class_path`: the
encoder and the decoder (`models/networks.py`; by default the networks an `architecture` name stands for) and
those posterior-collapse remedies change: the KL weight schedule (`models/kl_schedule.py`), the KL term of the
training loss (`models/kl_term.py`), a normalisation of the posterior means and the training procedure
(`models/procedure.py`); and the posterior refinement (`models/refinement.py`: none, or SA-VAE's SVI).
LightningCLI stores their configs in the hyper-parameters, so checkpoints reload with `load_from_checkpoint`.
What applies to every model of the project lives elsewhere: checkpoint identity
(`models/identity.py`), the non-finite-step guard and random-state checkpointing (`callbacks/guards.py`,
`callbacks/random_state.py`).
"""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Literal, cast

import lightning as L
import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveFloat, PositiveInt
from lightning.fabric.utilities.data import AttributeDict
from torch import nn
from torchmetrics import MeanMetric

from callbacks.contract import EvaluationOutputs
from models.distributions import at_least_float32, gaussian_kl_per_dim, per_example_normal
from models.identity import CheckpointIdentity
from models.kl_schedule import KLSchedule, LinearWarmup
from models.kl_term import KLTerm
from models.networks import DecoderPart, EncoderPart, build_networks
from models.procedure import TrainingProcedure
from models.refinement import PosteriorRefinement


class VAE(CheckpointIdentity, L.LightningModule):
    """Gaussian-latent VAE whose decoder sees z at its first layer only.

    Loss: the negative ELBO in nats per example, -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)), with the KL in
    closed form and beta from the KL schedule (by default warmed up linearly from `kl_start` to 1); a `kl_term`
    part may replace the KL in the loss (never in what is logged).
    Logged `*/elbo` values are negative ELBOs (positive nats, an upper bound on the NLL; lower is better).
    """

    hparams: AttributeDict  # the saved init arguments, read as attributes
    latent_skip: ClassVar[bool] = False
    eval_metric_names: tuple[str, ...]  # logged as val/<name>, test/<name>: elbo, recon, kl and the refinement's

    def __init__(
        self,
        architecture: Literal["pixelcnn", "mlp", "lstm"] = "pixelcnn",
        data_dims: Sequence[PositiveInt] = (1, 28, 28),
        latent_dim: PositiveInt = 20,
        encoder_hidden: PositiveInt = 64,
        decoder_layers: PositiveInt = 8,
        decoder_hidden: PositiveInt = 32,
        kernel_sizes: Sequence[PositiveInt] | None = None,
        latent_feature_maps: PositiveInt = 1,
        embedding_dim: PositiveInt = 512,
        dropout: ClosedUnitInterval = 0.5,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: PositiveFloat = 1e-3,
        kl_start: ClosedUnitInterval = 1.0,
        kl_warmup_epochs: NonNegativeFloat = 0.0,
        param_init: NonNegativeFloat = 0.0,
        linear_init: Literal["he_normal", "default"] = "he_normal",
        kl_schedule: KLSchedule | None = None,
        kl_term: KLTerm | None = None,
        mean_normalisation: Callable[[int], nn.Module] | None = None,
        procedure: TrainingProcedure | None = None,
        encoder: EncoderPart | None = None,
        decoder: DecoderPart | None = None,
        refinement: PosteriorRefinement | None = None,
    ):
        """
        Args:
            architecture: "pixelcnn" (residual conv encoder + gated PixelCNN), "mlp" (MLP encoder and decoder)
                or "lstm" (LSTM encoder and LSTM language-model decoder).
            data_dims: shape of one example, [channels, height, width] for images or [vocab_size] for text;
                linked from the datamodule, not set by hand.
            latent_dim: dimension of z.
            encoder_hidden: conv channels (pixelcnn), hidden units (mlp) or LSTM units (lstm) of the encoder.
            decoder_layers: PixelCNN layers, MLP hidden layers or LSTM layers of the decoder.
            decoder_hidden: PixelCNN channels, MLP hidden units or LSTM units of the decoder.
            kernel_sizes: PixelCNN kernel size per layer (default: 3 for every layer).
            latent_feature_maps: how many full-size maps z is projected to at each PixelCNN layer it enters.
            embedding_dim: word embedding size (lstm).
            dropout: dropout on word embeddings and LSTM outputs (lstm).
            optimizer: "adam" (images) or "sgd" (text, as in the paper).
            lr: learning rate.
            kl_start: KL weight beta before the first step; 1.0 disables warm-up.
            kl_warmup_epochs: beta grows by 1 / (kl_warmup_epochs x batches per epoch) at every step, as in the
                paper's code, so it reaches 1 after (1 - kl_start) x kl_warmup_epochs epochs; 0: no warm-up.
            param_init: when > 0, every parameter starts uniform in [-param_init, param_init] (the paper's text
                models use 0.1), whatever `linear_init`.
            linear_init: "he_normal": the weights of every linear layer start N(0, 2 / fan_in), as in the paper
                code's image models (biases keep PyTorch's default); "default": PyTorch's initialisation (the
                paper code's MLP model).
            kl_schedule: the KL weight beta at each step (`models/kl_schedule.py`); default: the linear warm-up of
                `kl_start` and `kl_warmup_epochs`, which are ignored when a schedule is given.
            kl_term: the KL term of the training loss (`models/kl_term.py`); default: the exact KL.
            mean_normalisation: a module applied to the encoder's posterior means, built with the latent dimension
                (e.g. BN-VAE's batch normalisation, `models/remedies/bn_vae.py`); default: none.
            procedure: the training procedure (`models/procedure.py`); default: standard training.
            encoder: the inference network, a class built with (data_dims, latent_dim) and its own settings
                (`models/networks.py`); default: the architecture's, from the flat settings above.
            decoder: the generative network, a `SkipDecoder` built with (data_dims, latent_dim, latent_skip) and its
                own settings; default: the architecture's, from the flat settings above.
            refinement: a posterior refined beyond the encoder's, on which the decoder is trained
                (`models/refinement.py`, e.g. SA-VAE's SVI); default: none (the SA classes: their SVI settings).
        """
        super().__init__()
        self.save_hyperparameters()
        self.kl_schedule = kl_schedule if kl_schedule is not None else LinearWarmup(kl_start, kl_warmup_epochs)
        self.kl_term = kl_term if kl_term is not None else KLTerm()
        self.procedure = procedure if procedure is not None else TrainingProcedure()
        self.refinement = refinement if refinement is not None else self.default_refinement()
        refined_metrics = self.refinement.metric_names if self.refinement is not None else ()
        self.eval_metric_names = ("elbo", "recon", "kl", *refined_metrics)
        self.encoder, self.decoder = build_networks(
            architecture,
            data_dims,
            latent_dim,
            encoder_hidden,
            decoder_layers,
            decoder_hidden,
            kernel_sizes,
            latent_feature_maps,
            embedding_dim,
            dropout,
            self.latent_skip,
            encoder,
            decoder,
        )
        self.initialise(param_init, linear_init)
        # after the networks' initialisation, which would overwrite the normalisation's fixed parameters
        self.mean_normalisation = mean_normalisation(latent_dim) if mean_normalisation is not None else None
        self.procedure.setup(self)
        self.eval_metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("val", "test") for name in self.eval_metric_names}
        )

    def initialise(self, param_init: float, linear_init: str) -> None:
        """The paper code's initialisations: uniform for the text models, He-normal linear weights for images."""
        if param_init > 0:
            for parameter in self.parameters():
                nn.init.uniform_(parameter, -param_init, param_init)
        elif linear_init == "he_normal":
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.in_features))

    def default_refinement(self) -> PosteriorRefinement | None:
        """The refinement when none is configured: none (the SA classes build theirs from their settings)."""
        return None

    @property
    def latent_dim(self) -> int:
        return self.hparams.latent_dim

    @property
    def refines_posterior(self) -> bool:
        """Whether the decoder is trained on a posterior refined beyond the encoder's."""
        return self.refinement is not None

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
        """What the callbacks read of an evaluation batch (`callbacks.contract.EvaluationOutputs`), with every
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
        (`callbacks.posteriors.PosteriorWriter` writes them)."""
        mean, logvar = self.encode(batch["x"])
        z = mean + torch.exp(0.5 * logvar) * self.evaluation_noise(batch)
        outputs = {"mean": mean, "logvar": logvar, "z": z, "index": batch["index"]}
        if "label" in batch:
            outputs["labels"] = batch["label"]
        return {key: value.detach().cpu() for key, value in outputs.items()}

    # ------------------------------------------------------------------ the training procedure's hooks
    def on_fit_start(self) -> None:
        self.procedure.on_fit_start(self)

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

    def configure_optimizers(self):
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class SkipVAE(VAE):
    """Skip-VAE: the same model, with z fed to every decoder layer and to the output layer."""

    latent_skip: ClassVar[bool] = True
