"""Callbacks that turn the posteriors computed by the validation/test steps into latent diagnostics.

They reuse the outputs of `validation_step`/`test_step` (`models.contract.EvaluationOutputs`: no second pass
over the data) and accumulate them in torchmetrics, which gather their states across processes before computing,
so the numbers under DDP equal those of a single process (evaluation loaders never repeat an example).
"""

import json
import warnings
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics import MeanMetric, Metric

from diagnostics.contract import TextData, datamodule_of, latent_model
from diagnostics.metrics import ActiveUnits, ImportanceWeightedNLL, KLDivergence, MutualInformation, TokenPerplexity
from models.contract import EvaluationOutputs
from networks.distributions import log_importance_weights, per_example_normal
from runtime.progress import reported

# The values logged here are computed from states gathered across processes, so they are already the same on
# every process; Lightning's advice to average them with `sync_dist=True` does not apply.
warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")


def due_this_epoch(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Whether an every-n-epochs job runs at this validation epoch (never for n = 0, never in the sanity check)."""
    return every_n_epochs > 0 and (trainer.current_epoch + 1) % every_n_epochs == 0 and not trainer.sanity_checking


class EvaluationCallback(Callback):
    """Accumulates `self.metrics` over the batches of every test run and of every `every_n_epochs`-th validation
    epoch, then logs them. Subclasses write `update` (one batch) and `finish` (log the results)."""

    def __init__(self, every_n_epochs: int, metrics: dict[str, Metric]):
        super().__init__()
        self.every_n_epochs = every_n_epochs
        self.metrics = nn.ModuleDict(metrics)  # moved to the model's device as one; subclasses keep typed references
        self._active = False

    def update(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: EvaluationOutputs, batch: dict) -> None:
        raise NotImplementedError

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        raise NotImplementedError

    def _start(self, pl_module: L.LightningModule, active: bool) -> None:
        self._active = active
        self.metrics.to(pl_module.device)
        for metric in self.metrics.values():
            cast(Metric, metric).reset()

    def _batch_end(self, trainer, pl_module, outputs, batch) -> None:
        if self._active and outputs is not None:
            self.update(trainer, pl_module, outputs, batch)

    def _epoch_end(self, trainer, pl_module, stage: str) -> None:
        if self._active:
            with reported(trainer, f"{type(self).__name__}: {stage} metrics over the whole set"):
                self.finish(trainer, pl_module, stage)
        self._active = False

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(pl_module, due_this_epoch(trainer, self.every_n_epochs))

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(pl_module, True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end(trainer, pl_module, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end(trainer, pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._epoch_end(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._epoch_end(trainer, pl_module, "test")


def _log_bar_chart(trainer: L.Trainer, tag: str, values: torch.Tensor, ylabel: str) -> None:
    """A bar chart per latent dimension, as a TensorBoard figure (rank zero only)."""
    experiment: Any = getattr(trainer.logger, "experiment", None)
    if not trainer.is_global_zero or not hasattr(experiment, "add_figure"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.bar(range(len(values)), values.cpu().numpy())
    ax.set_xlabel("latent dimension")
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    experiment.add_figure(tag, fig, global_step=trainer.global_step)  # the x axis of every other view
    plt.close(fig)


class LatentDiagnostics(EvaluationCallback):
    """Logs `{val,test}/mi`, `mi_batch` and `au`, and a per-dimension KL chart, every `every_n_epochs`
    validation epochs and on every test run: MI and AU of the encoder's posterior or of the one the model names as
    `diagnostics_*` (SA-VAE text models: the refined one, as the paper code's text models), the per-dimension KL
    always of the encoder's (as theirs; `{val,test}/kl` itself is logged by the model).
    A test run also writes these values and the per-dimension KL and posterior-mean variances to
    `<log dir>/latent_diagnostics.json`.
    """

    def __init__(self, every_n_epochs: int = 1, au_threshold: float = 0.02, seed: int = 0, chunk_size: int = 1024):
        """
        Args:
            every_n_epochs: run on validation every this many epochs (0: never on validation, only on test).
            au_threshold: a dimension is active when the variance of its posterior mean exceeds this.
            seed: seed of the per-example z draws of the MI estimators.
            chunk_size: rows per block in the N x N aggregate-posterior computation.
        """
        self.kl, self.au = KLDivergence(), ActiveUnits(threshold=au_threshold)
        self.mi = MutualInformation("full", seed=seed, chunk_size=chunk_size)
        self.mi_batch = MutualInformation("batch", seed=seed, chunk_size=chunk_size)
        super().__init__(every_n_epochs, {"kl": self.kl, "au": self.au, "mi": self.mi, "mi_batch": self.mi_batch})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_fit(trainer, pl_module)

    def check_fit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A training procedure that reads MI or AU after every validation epoch (`needed_validation_metrics`) needs
        them logged at every one: refuse the run otherwise (the CLI asks before the run writes anything)."""
        needed = set(getattr(pl_module, "needed_validation_metrics", ())) & {"val/mi", "val/mi_batch", "val/au"}
        if needed and self.every_n_epochs != 1:
            raise MisconfigurationException(
                f"the model's training procedure reads {', '.join(sorted(needed))} after every validation epoch: keep "
                "diagnostics.every_n_epochs at 1"
            )

    def update(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: EvaluationOutputs, batch: dict) -> None:
        mean = outputs.get("diagnostics_mean", outputs["mean"]).detach()
        logvar = outputs.get("diagnostics_logvar", outputs["logvar"]).detach()
        index = batch.get("index")
        self.kl.update(outputs["mean"].detach(), outputs["logvar"].detach())  # the encoder's, as the logged KL
        self.au.update(mean)
        self.mi.update(mean, logvar, index)
        self.mi_batch.update(mean, logvar, index)

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        values = {"kl": self.kl.compute().item()}
        for name, metric in (("mi", self.mi), ("mi_batch", self.mi_batch), ("au", self.au)):
            value = metric.compute()
            values[name] = value.item()
            pl_module.log(f"{stage}/{name}", value.float())
        kl_per_dimension, variances = cast(torch.Tensor, self.kl.per_dimension), cast(torch.Tensor, self.au.variances)
        per_dimension = {
            "kl_per_dimension": kl_per_dimension.tolist(),
            "posterior_mean_variance": variances.tolist(),
        }
        _log_bar_chart(trainer, f"{stage}/kl_per_dimension", kl_per_dimension, "KL (nats)")
        _log_bar_chart(trainer, f"{stage}/posterior_mean_variance", variances, "Var_x E[z_d|x]")
        log_dir = trainer.log_dir if stage == "test" else None  # a collective under DDP: asked on every process
        if log_dir is not None and trainer.is_global_zero:
            # The per-dimension numbers behind the charts, for tables and plots made outside TensorBoard.
            path = Path(log_dir) / "latent_diagnostics.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**values, **per_dimension}, indent=1))


class ImportanceWeightedEvaluation(EvaluationCallback):
    """Logs `test/nll_iw` = -log (1/K) sum_k p(x, z_k) / q(z_k|x) (K = num_samples; q the model's proposal, the
    encoder's posterior or, for SA-VAE, the refined one), and for text also
    `test/ppl_iw` and `test/ppl_elbo` (per-token perplexities, the end-of-sentence token counted). With
    `max_examples`, these cover that subset only, and `test/elbo_subset` gives the ELBO of the same examples.

    The z_k of each example are drawn from a generator seeded by (seed, example index), so the result does
    not depend on batch size or the number of processes. Decoder evaluations run in chunks of `chunk_size`.
    """

    def __init__(
        self,
        num_samples: int = 500,
        chunk_size: int = 100,
        every_n_epochs: int = 0,
        seed: int = 0,
        max_examples: int | None = None,
    ):
        """
        Args:
            num_samples: K, importance samples per example.
            chunk_size: decoder evaluations per forward pass (bounds memory for any K).
            every_n_epochs: also run on validation every this many epochs (0: test only; it is expensive).
            seed: seed of the per-example z_k draws.
            max_examples: evaluate only the examples whose dataset index is below this (a fixed subset, the
                same for any batching or process count); None: every example.
        """
        self.nll_iw, self.ppl_iw, self.ppl_elbo = ImportanceWeightedNLL(), TokenPerplexity(), TokenPerplexity()
        self.elbo_subset = MeanMetric()
        metrics = {
            "nll_iw": self.nll_iw,
            "ppl_iw": self.ppl_iw,
            "ppl_elbo": self.ppl_elbo,
            "elbo_subset": self.elbo_subset,
        }
        super().__init__(every_n_epochs, metrics)
        self.num_samples, self.chunk_size, self.seed = num_samples, chunk_size, seed
        self.max_examples = max_examples

    def update(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: EvaluationOutputs, batch: dict) -> None:
        x = batch["x"]
        mean = outputs.get("proposal_mean", outputs["mean"]).detach()
        logvar = outputs.get("proposal_logvar", outputs["logvar"]).detach()
        elbo = outputs.get("proposal_elbo", outputs["elbo"]).detach()
        decoder = latent_model(pl_module).decoder
        index = batch["index"].cpu()
        if self.max_examples is not None:
            keep = index < self.max_examples
            if not keep.any():
                return
            index, rows = index[keep], keep.nonzero().squeeze(1).to(x.device)
            x, mean, logvar, elbo = x[rows], mean[rows], logvar[rows], elbo[rows]
        noise = per_example_normal(index, (self.num_samples, mean.shape[1]), self.seed).to(mean)
        with trainer.precision_plugin.forward_context():
            log_weights = log_importance_weights(decoder.log_prob, x, mean, logvar, noise, self.chunk_size)
        self.nll_iw.update(log_weights)
        self.elbo_subset.update(elbo.detach().double())
        datamodule = datamodule_of(trainer)
        if isinstance(datamodule, TextData):
            tokens = datamodule.count_tokens(x)
            self.ppl_iw.update(ImportanceWeightedNLL.per_example(log_weights), tokens)
            self.ppl_elbo.update(elbo.detach(), tokens)

    def finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.log(f"{stage}/nll_iw", self.nll_iw.compute().float())
        if self.max_examples is not None:  # the one-sample ELBO of the same examples, to compare with nll_iw
            pl_module.log(f"{stage}/elbo_subset", self.elbo_subset.compute().float())
        # Decided per run, not per batch: every process must take part in the same metric syncs.
        if isinstance(datamodule_of(trainer), TextData):
            pl_module.log(f"{stage}/ppl_iw", self.ppl_iw.compute().float())
            pl_module.log(f"{stage}/ppl_elbo", self.ppl_elbo.compute().float())
