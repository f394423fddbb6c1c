"""Pictures of the latent space in TensorBoard at the end of a test run (and optionally every n validation
epochs): the embedding projector of posterior means, latent traversals and interpolations.

- Projector (`add_embedding`, tag `<stage>/posterior_means`): the posterior means of the first `num_points`
  examples of rank 0, labelled by class where the data has labels, with image thumbnails or the text itself.
- Traversals (`<stage>/latent_traversals`): the `num_dims` dimensions whose posterior means vary most across those
  examples, each swept from -span to +span (one row per dimension, `steps` columns) with the other dimensions at
  the first example's mean, decoded greedily (the most likely value at each autoregressive step).
- Interpolations (`<stage>/interpolations`): z on the line between the posterior means of two examples, decoded
  greedily; images in rows [input a, decodings, input b], text as a homotopy (Bowman et al., 2016).
Everything is stamped with the global step, so TensorBoard's slider follows training.
"""

from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.seed import isolate_rng
from torchvision.utils import make_grid

from diagnostics.contract import TextData, datamodule_of, latent_model
from diagnostics.evaluation import due_this_epoch
from runtime.modes import evaluation_mode
from runtime.progress import reported


class LatentSpaceViews(Callback):
    """The projector, traversals and interpolations of the module docstring (rank 0)."""

    def __init__(
        self,
        num_points: int = 1000,
        num_dims: int = 5,
        steps: int = 7,
        span: float = 3.0,
        num_interpolations: int = 4,
        every_n_epochs: int = 0,
    ):
        """
        Args:
            num_points: examples in the projector (and among which the most active dimensions are chosen); 0: no views.
            num_dims: dimensions traversed, the most active first (at most the latent size).
            steps: values per traversal row and points per interpolation.
            span: a traversal sweeps z_d over [-span, span] (the prior's standard deviations).
            num_interpolations: interpolated pairs (examples 0-1, 2-3, ...).
            every_n_epochs: also at every this many validation epochs (0: only at the end of a test run).
        """
        super().__init__()
        self.num_points, self.num_dims, self.steps, self.span = num_points, num_dims, steps, span
        self.num_interpolations, self.every_n_epochs = num_interpolations, every_n_epochs
        self.inputs: list[torch.Tensor] = []
        self.means: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.active = False

    def _start(self, trainer: L.Trainer, active: bool) -> None:
        self.inputs, self.means, self.labels = [], [], []
        self.active = active and trainer.is_global_zero and getattr(trainer.logger, "experiment", None) is not None

    def _collect(self, outputs: dict, batch: dict) -> None:
        have = sum(len(m) for m in self.means)
        if not self.active or have >= self.num_points:
            return
        take = self.num_points - have
        self.means.append(outputs["mean"][:take].detach().float().cpu())
        self.inputs.append(batch["x"][:take].cpu())
        if "label" in batch:
            self.labels.append(batch["label"][:take].cpu())

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(trainer, due_this_epoch(trainer, self.every_n_epochs))

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(trainer, True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.active or not self.means:
            return
        self.active = False
        means, inputs = torch.cat(self.means), _concat_inputs(self.inputs)
        labels = torch.cat(self.labels) if self.labels else None
        self.inputs, self.means, self.labels = [], [], []
        traversal_z, dims, values = self.traversal_points(means)
        pairs = [(2 * i, 2 * i + 1) for i in range(self.num_interpolations) if 2 * i + 1 < len(means)]
        weights = torch.linspace(0, 1, self.steps)
        line_z = [(1 - w) * means[a] + w * means[b] for a, b in pairs for w in weights]
        decoded = self.decode(trainer, pl_module, torch.cat([traversal_z, *[z[None] for z in line_z]]))
        views = Views(
            stage,
            means,
            inputs,
            labels,
            dims,
            values,
            decoded[: len(traversal_z)],
            decoded[len(traversal_z) :],
            pairs,
            weights,
        )
        experiment, datamodule = getattr(trainer.logger, "experiment", None), datamodule_of(trainer)
        step = trainer.global_step
        if inputs.dtype == torch.long and isinstance(datamodule, TextData):
            self._write_text(experiment, step, views, datamodule)
        else:
            self._write_images(experiment, step, views)

    def _write_text(self, experiment, step: int, views: "Views", text: TextData) -> None:
        """Documents in the projector's labels, traversals as one sentence per value, homotopies."""
        metadata = [s.replace("\t", " ")[:100] or "(empty)" for s in text.decode(views.inputs)]
        if views.labels is not None:
            metadata = [f"{int(y)} {s}" for y, s in zip(views.labels, metadata)]
        experiment.add_embedding(views.means, metadata=metadata, global_step=step, tag=f"{views.stage}/posterior_means")
        rows = [
            f"**z{d} = {float(v):+.2f}**: {s}"
            for (d, v), s in zip([(d, v) for d in views.dims for v in views.values], text.decode(views.traversals))
        ]
        experiment.add_text(f"{views.stage}/latent_traversals", "  \n".join(rows), step)
        sentences, homotopies = text.decode(views.lines), []
        for i, (a, b) in enumerate(views.pairs):
            ends = text.decode(views.inputs[[a, b]])
            line = sentences[i * self.steps : (i + 1) * self.steps]
            homotopies.append(
                "  \n".join(
                    [
                        f"*input {a}*: {ends[0]}",
                        *[f"t = {float(w):.2f}: {s}" for w, s in zip(views.weights, line)],
                        f"*input {b}*: {ends[1]}",
                    ]
                )
            )
        if homotopies:
            experiment.add_text(f"{views.stage}/interpolations", "\n\n".join(homotopies), step)

    def _write_images(self, experiment, step: int, views: "Views") -> None:
        """Thumbnails in the projector, the traversal grid, rows [input a, decodings, input b]."""
        experiment.add_embedding(
            views.means,
            metadata=None if views.labels is None else views.labels.tolist(),
            label_img=views.inputs.float(),
            global_step=step,
            tag=f"{views.stage}/posterior_means",
        )
        experiment.add_image(
            f"{views.stage}/latent_traversals",
            make_grid(views.traversals.float(), nrow=self.steps, pad_value=0.5),
            step,
        )
        if views.pairs:
            rows = []
            for i, (a, b) in enumerate(views.pairs):
                rows += [
                    views.inputs[a].float(),
                    *views.lines[i * self.steps : (i + 1) * self.steps].float(),
                    views.inputs[b].float(),
                ]
            experiment.add_image(
                f"{views.stage}/interpolations", make_grid(torch.stack(rows), nrow=self.steps + 2, pad_value=0.5), step
            )

    def traversal_points(self, means: torch.Tensor) -> tuple[torch.Tensor, list[int], torch.Tensor]:
        """z of the traversal grid (dimension-major), the traversed dimensions (most active first) and the values."""
        variance = means.var(0) if len(means) > 1 else torch.zeros(means.shape[1])
        dims = variance.argsort(descending=True)[: self.num_dims].tolist()
        values = torch.linspace(-self.span, self.span, self.steps)
        z = means[0].repeat(len(dims) * self.steps, 1)
        for row, d in enumerate(dims):
            z[row * self.steps : (row + 1) * self.steps, d] = values
        return z, dims, values

    @staticmethod
    def decode(trainer: L.Trainer, pl_module: L.LightningModule, z: torch.Tensor) -> torch.Tensor:
        """Greedy decodings of z, in eval mode, apart from the run's random streams."""
        with evaluation_mode(pl_module), trainer.precision_plugin.forward_context(), torch.no_grad(), isolate_rng():
            with reported(trainer, f"LatentSpaceViews: decoding {len(z)} traversal and interpolation points"):
                return latent_model(pl_module).decoder.sample(z.to(pl_module.device), greedy=True).cpu()


@dataclass
class Views:
    """What one logging of the views shows: the collected examples and the greedy decodings of the chosen z."""

    stage: str
    means: torch.Tensor
    inputs: torch.Tensor
    labels: torch.Tensor | None
    dims: list[int]
    values: torch.Tensor
    traversals: torch.Tensor  # decodings, dimension-major (one row of `steps` per dimension)
    lines: torch.Tensor  # decodings along the lines, `steps` per pair
    pairs: list[tuple[int, int]]
    weights: torch.Tensor


def _concat_inputs(inputs: list[torch.Tensor]) -> torch.Tensor:
    """Batches of inputs as one tensor; token batches of different lengths are right-padded with 0 (<pad>)."""
    if inputs[0].dtype != torch.long or len({x.shape[1:] for x in inputs}) == 1:
        return torch.cat(inputs)
    length = max(x.shape[1] for x in inputs)
    return torch.cat([torch.nn.functional.pad(x, (0, length - x.shape[1])) for x in inputs])
