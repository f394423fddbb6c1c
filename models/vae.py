"""The VAE and Skip-VAE LightningModules: wiring of encoder, decoder, loss, logging and optimisation.

The two classes are identical except for `latent_skip`, which the decoder reads in one place
(`SkipDecoder.takes_latent`). All networks are built from plain hyper-parameters so that checkpoints
reload with `load_from_checkpoint` and every value can be overridden from the command line.
"""

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from models.decoders import GatedPixelCNNDecoder, LSTMDecoder, MLPDecoder, SkipDecoder
from models.distributions import gaussian_kl, log_normal, log_standard_normal, per_example_normal
from models.encoders import LSTMEncoder, MLPEncoder, ResidualConvEncoder
from models.rng import gather_rng_states, restore_rng_states

# Hyper-parameters that change the networks' shapes: a checkpoint is only usable when these agree.
ARCHITECTURE_KEYS = (
    "architecture", "data_dims", "latent_dim", "encoder_hidden", "decoder_layers", "decoder_hidden",
    "kernel_sizes", "latent_feature_maps", "embedding_dim",
)


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by a different model class or architecture than the one configured."""


class NonFiniteLossError(FloatingPointError):
    """The training loss or its gradients became NaN or infinite."""


class VAE(L.LightningModule):
    """Gaussian-latent VAE whose decoder sees z at its first layer only.

    Loss: the negative ELBO in nats per example, -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)), with the KL in
    closed form and beta warmed up linearly from `kl_start` to 1 over `kl_warmup_epochs` epochs.
    Logged `*/elbo` values are negative ELBOs (positive nats, an upper bound on the NLL; lower is better).
    """

    latent_skip: ClassVar[bool] = False

    def __init__(
        self,
        architecture: Literal["pixelcnn", "mlp", "lstm"] = "pixelcnn",
        data_dims: Sequence[int] = (1, 28, 28),
        latent_dim: int = 20,
        encoder_hidden: int = 64,
        decoder_layers: int = 8,
        decoder_hidden: int = 32,
        kernel_sizes: Sequence[int] | None = None,
        latent_feature_maps: int = 1,
        embedding_dim: int = 512,
        dropout: float = 0.5,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 1e-3,
        kl_start: float = 1.0,
        kl_warmup_epochs: float = 0.0,
        param_init: float = 0.0,
        on_nonfinite: Literal["stop", "skip"] = "stop",
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
            kl_start: KL weight beta at step 0; 1.0 disables warm-up.
            kl_warmup_epochs: epochs over which beta grows linearly from kl_start to 1.
            param_init: when > 0, every parameter starts uniform in [-param_init, param_init] (the paper's text
                models use 0.1); 0 keeps PyTorch's default initialisation.
            on_nonfinite: what a NaN/infinite training loss or gradient does: "stop" ends training at that step
                with an error naming the step, the loss parts and the last checkpoint (weights are never updated
                from such a step); "skip" drops that optimizer step, counted as `train/skipped_steps`.
        """
        super().__init__()
        self.save_hyperparameters()
        if kernel_sizes is not None and len(kernel_sizes) != decoder_layers:
            raise ValueError(
                f"kernel_sizes has {len(kernel_sizes)} entries but decoder_layers is {decoder_layers}; "
                "give one kernel size per layer"
            )
        self.encoder, self.decoder = self._build_networks()
        if param_init > 0:
            for parameter in self.parameters():
                nn.init.uniform_(parameter, -param_init, param_init)
        self.eval_metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("val", "test") for name in ("elbo", "recon", "kl")}
        )
        self.skipped_steps = 0  # optimizer steps dropped for non-finite values (on_nonfinite="skip")
        self._step_parts: dict[str, torch.Tensor | float] = {}  # loss parts of the current step, for error messages

    def _build_networks(self) -> tuple[nn.Module, SkipDecoder]:
        hp = self.hparams
        dims = list(hp.data_dims)
        if hp.architecture == "lstm":
            if len(dims) != 1:
                raise ValueError(f"architecture 'lstm' needs data_dims [vocab_size], got {dims}")
            encoder = LSTMEncoder(dims[0], hp.latent_dim, hp.embedding_dim, hp.encoder_hidden)
            decoder = LSTMDecoder(dims[0], hp.latent_dim, hp.embedding_dim, hp.decoder_hidden, hp.decoder_layers,
                                  hp.dropout, self.latent_skip)
            return encoder, decoder
        if len(dims) != 3:
            raise ValueError(f"architecture '{hp.architecture}' needs data_dims [C, H, W], got {dims}")
        if hp.architecture == "mlp":
            encoder = MLPEncoder(dims, hp.latent_dim, hp.encoder_hidden)
            decoder = MLPDecoder(dims, hp.latent_dim, hp.decoder_hidden, hp.decoder_layers, self.latent_skip)
            return encoder, decoder
        kernels = list(hp.kernel_sizes) if hp.kernel_sizes is not None else [3] * hp.decoder_layers
        encoder = ResidualConvEncoder(dims, hp.latent_dim, hp.encoder_hidden)
        decoder = GatedPixelCNNDecoder(dims, hp.latent_dim, hp.decoder_hidden, kernels, hp.latent_feature_maps,
                                       self.latent_skip)
        # oneDNN's convolutions (CPU) and cuDNN's (tensor cores) are fastest on channels-last tensors.
        return encoder.to(memory_format=torch.channels_last), decoder.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ model
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), always float32 (also under mixed precision)."""
        mean, logvar = self.encoder(x)
        return mean.float(), logvar.float()

    def kl_weight(self) -> float:
        """beta at the current optimizer step: linear from kl_start to 1, derived from global_step (resumable)."""
        hp = self.hparams
        if hp.kl_warmup_epochs <= 0 or self._trainer is None:
            return 1.0
        steps_per_epoch = self.trainer.num_training_batches / self.trainer.accumulate_grad_batches
        if not math.isfinite(steps_per_epoch) or steps_per_epoch <= 0:
            return 1.0
        progress = self.global_step / (hp.kl_warmup_epochs * steps_per_epoch)
        return min(1.0, hp.kl_start + (1.0 - hp.kl_start) * progress)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One-sample ELBO terms per example: recon = -log p(x|z), kl = KL(q(z|x)||p(z)), both (batch,).

        z = mean + std * noise; noise defaults to a fresh standard-normal draw.
        """
        mean, logvar = self.encode(x)
        if noise is None:
            noise = torch.randn_like(mean)
        z = mean + torch.exp(0.5 * logvar) * noise
        recon = -self.decoder.log_prob(x, z)
        kl = gaussian_kl(mean, logvar)
        return {"recon": recon, "kl": kl, "elbo": recon + kl, "mean": mean, "logvar": logvar}

    @torch.no_grad()
    def sample(self, n: int, greedy: bool = False) -> torch.Tensor:
        """Draw n examples: z ~ N(0, I), then x ~ p(x|z) autoregressively."""
        z = torch.randn(n, self.hparams.latent_dim, device=self.device)
        return self.decoder.sample(z, greedy=greedy)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """Decode x from the posterior mean of q(z|x)."""
        mean, _ = self.encode(x)
        return self.decoder.sample(mean, greedy=greedy)

    @torch.no_grad()
    def log_importance_weights(
        self, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor, chunk_size: int
    ) -> torch.Tensor:
        """log p(x, z_k) - log q(z_k|x) for z_k = mean + std * noise[:, k], shape (batch, K), float32.

        The batch*K decoder evaluations run in slices of at most `chunk_size`, so memory does not grow with K.
        """
        batch, num_samples, _ = noise.shape
        z = (mean.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * noise).flatten(0, 1)
        log_prior = log_standard_normal(z)
        log_q = log_normal(z, mean.repeat_interleave(num_samples, 0), logvar.repeat_interleave(num_samples, 0))
        log_lik = torch.empty(batch * num_samples, device=z.device)
        for start in range(0, batch * num_samples, chunk_size):
            rows = torch.arange(start, min(start + chunk_size, batch * num_samples), device=z.device)
            log_lik[rows] = self.decoder.log_prob(x[rows // num_samples], z[rows]).float()
        return (log_lik + log_prior - log_q).view(batch, num_samples)

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        noise = None
        if stage != "train" and "index" in batch:
            # Evaluation z is seeded per example: val/test ELBOs do not depend on batching or process count.
            noise = per_example_normal(batch["index"].cpu(), (self.hparams.latent_dim,), seed=0).to(self.device)
        out = self(batch["x"], noise)
        if stage == "train":
            beta = self.kl_weight()
            loss = (out["recon"] + beta * out["kl"]).mean()
            logs = {"loss": loss, "elbo": out["elbo"].mean(), "recon": out["recon"].mean(),
                    "kl": out["kl"].mean(), "beta": beta}
            self._step_parts = {name: value.detach() if torch.is_tensor(value) else value
                                for name, value in logs.items()}
            for name, value in logs.items():
                self.log(f"train/{name}", value, prog_bar=name == "elbo", batch_size=len(out["kl"]))
            return {"loss": loss}
        for name in ("elbo", "recon", "kl"):
            metric = self.eval_metrics[f"{stage}_{name}"]
            metric.update(out[name].detach())
            self.log(f"{stage}/{name}", metric, prog_bar=name == "elbo", on_step=False, on_epoch=True)
        return {"mean": out["mean"], "logvar": out["logvar"], "elbo": out["elbo"], "recon": out["recon"]}

    def training_step(self, batch: dict, batch_idx: int):
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int):
        return self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int):
        return self._step(batch, "test")

    def on_before_optimizer_step(self, optimizer) -> None:
        """Never update the weights from a non-finite loss or gradient: stop with an error or drop the step.

        One device-to-host sync per step checks the loss and every gradient norm together; under DDP the
        processes agree on the outcome, so they all stop or all skip.
        """
        values = [self._step_parts["loss"].float().reshape(1)]
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:  # fp16 loss scaling handles inf grads
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if grads:
                values.append(torch.stack(torch._foreach_norm(grads)).float())
        bad = not bool(torch.isfinite(torch.cat(values)).all())
        if self.trainer.world_size > 1:  # every process must stop or skip together
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad and self.hparams.on_nonfinite == "stop":
            what = "a gradient" if torch.isfinite(values[0]).all() else "the training loss"
            raise NonFiniteLossError(self._nonfinite_message(what))
        if bad:
            for parameter in self.parameters():
                parameter.grad = None  # optimizers skip parameters without a gradient: no update, no state change
            self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps))

    def _nonfinite_message(self, what: str) -> str:
        parts = ", ".join(f"{name} {value:.4g}" for name, value in self._step_parts.items())
        checkpoints = [path for callback in self.trainer.checkpoint_callbacks
                       for path in (callback.last_model_path, callback.best_model_path) if path]
        last = (f"the last good checkpoint is {checkpoints[0]} (resume with --ckpt_path {checkpoints[0]})"
                if checkpoints else "no checkpoint had been written yet")
        return (f"{what} is not finite at global step {self.global_step} (epoch {self.current_epoch}, batch "
                f"{self.trainer.fit_loop.epoch_loop.batch_idx}; {parts}); weights were not updated from it and "
                f"{last}. Lower the learning rate, keep gradient clipping on (trainer.gradient_clip_val), check the "
                "input data, or set --model.init_args.on_nonfinite skip to drop such steps.")

    def configure_optimizers(self):
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["skipvae_model"] = {"class": type(self).__name__,
                                       "architecture": {k: self.hparams[k] for k in ARCHITECTURE_KEYS}}
        if self._trainer is not None:
            checkpoint["skipvae_model"]["datamodule"] = self._datamodule_name()
            checkpoint["skipvae_training"] = {"rng_states": gather_rng_states(), "skipped_steps": self.skipped_steps}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._check_checkpoint(checkpoint)
        training = checkpoint.get("skipvae_training", {})
        self.skipped_steps = training.get("skipped_steps", 0)
        if self._trainer is not None and self.trainer.training:
            # Loaded just before the fit loop draws its first batch (the sanity check does not touch the generators).
            restore_rng_states(training.get("rng_states"), self.trainer.global_rank, self.trainer.world_size)

    def _datamodule_name(self) -> str | None:
        """The class name of the datamodule this model trains or tests on; None when there is none."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        return type(datamodule).__name__ if datamodule is not None else None

    def _check_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("skipvae_model")
        if saved is None:
            raise CheckpointMismatchError("this checkpoint was not written by a VAE/SkipVAE of this project")
        problems = []
        if saved["class"] != type(self).__name__:
            problems.append(f"model class {saved['class']} (configured: {type(self).__name__})")
        for key, value in saved["architecture"].items():
            mine = self.hparams.get(key)
            if _plain(value) != _plain(mine):
                problems.append(f"{key}={value!r} (configured: {mine!r})")
        datamodule = self._datamodule_name()
        if datamodule is not None and saved.get("datamodule", datamodule) != datamodule:
            problems.append(f"data {saved['datamodule']} (configured: {datamodule})")
        if problems:
            hint = ""
            if self.hparams.architecture == "lstm" and _plain(saved["architecture"]["data_dims"]) != _plain(
                    self.hparams.data_dims):
                hint = (" For text, data_dims is the vocabulary size: pass the training run's vocabulary "
                        "(vocab.txt in its log folder) as --data.init_args.vocab_file.")
            raise CheckpointMismatchError(
                "checkpoint does not match the configured model: " + "; ".join(problems)
                + ". Use the config the checkpoint was trained with (saved as config.yaml next to it)." + hint
            )


def _plain(value):
    """Lists and tuples compare equal when their items do (YAML gives lists, defaults are tuples)."""
    return list(value) if isinstance(value, (list, tuple)) else value


class SkipVAE(VAE):
    """Skip-VAE: the same model, with z fed to every decoder layer and to the output layer."""

    latent_skip: ClassVar[bool] = True
