"""Shows what the model does with its latent code: reconstructions and prior samples in TensorBoard."""

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.seed import isolate_rng
from torchvision.utils import make_grid

from diagnostics.contract import TextData, datamodule_of, latent_model
from diagnostics.evaluation import due_this_epoch
from runtime.modes import evaluation_mode
from runtime.progress import reported


class SampleLogger(Callback):
    """Each `every_n_epochs` validation epochs, logs `num_examples` validation inputs next to their
    reconstructions (decoded from the posterior mean) and `num_examples` samples from the prior.

    Images go to `val/reconstructions` (top row inputs, bottom row reconstructions) and `val/samples`; text
    to the same tags as text. Rank zero only. Autoregressive decoding is sequential, so keep n small.
    The draws come from a generator seeded with `seed` and kept apart from training's: every epoch shows the same
    prior z (progress is easy to compare), and logging samples does not change the training run.
    """

    def __init__(self, num_examples: int = 8, every_n_epochs: int = 1, seed: int = 0):
        super().__init__()
        self.num_examples, self.every_n_epochs, self.seed = num_examples, every_n_epochs, seed
        self._inputs: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and due_this_epoch(trainer, self.every_n_epochs):
            self._inputs = batch["x"][: self.num_examples]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        inputs, self._inputs = self._inputs, None
        experiment = getattr(trainer.logger, "experiment", None)
        if inputs is None or not trainer.is_global_zero or experiment is None:
            return
        with evaluation_mode(pl_module), trainer.precision_plugin.forward_context(), torch.no_grad(), isolate_rng():
            torch.manual_seed(self.seed)
            # One autoregressive decoding for both: z = posterior means of the inputs, then draws from p(z).
            model = latent_model(pl_module)
            prior_z = torch.randn(self.num_examples, model.latent_dim, device=pl_module.device)
            z = torch.cat([model.encode(inputs)[0], prior_z])
            with reported(trainer, f"SampleLogger: decoding {len(z)} reconstructions and samples"):
                decoded = model.decoder.sample(z)
        reconstructions, samples = decoded[: len(inputs)], decoded[len(inputs) :]
        step = trainer.global_step  # TensorBoard's step slider follows training
        datamodule = datamodule_of(trainer)
        if inputs.dtype == torch.long and isinstance(datamodule, TextData):
            to_text = datamodule.decode
            pairs = [f"{a}  \n→ {b}" for a, b in zip(to_text(inputs), to_text(reconstructions))]
            experiment.add_text("val/reconstructions", "\n\n".join(pairs), step)
            experiment.add_text("val/samples", "\n\n".join(to_text(samples)), step)
            return
        grid = make_grid(torch.cat([inputs.float(), reconstructions.float()]).cpu(), nrow=len(inputs), pad_value=0.5)
        experiment.add_image("val/reconstructions", grid, step)
        experiment.add_image("val/samples", make_grid(samples.float().cpu(), nrow=len(samples), pad_value=0.5), step)
