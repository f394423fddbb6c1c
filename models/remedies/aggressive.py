"""Aggressive inference-network training (He, Spokoyny, Neubig and Berg-Kirkpatrick, "Lagging Inference Networks
and Posterior Collapse in Variational Autoencoders", ICLR 2019; jxhe/vae-lagging-encoder).

Posterior collapse starts when the encoder lags behind the model's true posterior. While the aggressive phase
lasts, each training step first updates the encoder alone, on the same loss, on the step's batch and then on
batches drawn at random from the training set, until its loss stops improving: every `check_every` inner steps the
mean loss of those steps is compared with that of the previous `check_every`, and the loop stops when it is higher
(at most `max_inner_steps` inner steps). Then the model's optimizer step updates the decoder only. The phase ends
for good after the first validation epoch at which the mutual information I(x; z) on the validation set is lower
than at the previous one (the first is compared with 0); from then on training is standard.

As in the authors' code: the inner steps use an optimizer of the model's kind and current learning rate over the
encoder's parameters, with the run's gradient clipping; the loss is the model's training loss at the current beta.
Differences: the authors compare per-word losses of text windows (here per-example) and some versions of their
code check every 10 steps; here the encoder's gradients are clipped alone (theirs jointly with the decoder's,
which the step then discards), and under DDP they are averaged over the processes, which draw different batches.
The inner batches are drawn with a generator seeded by (`seed`, step, process), so a resumed run repeats them.
SA models are refused: their encoder is trained through the SVI steps, not on the amortized loss.
"""

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException

from models.contract import ModelWithParts
from models.procedure import TrainingProcedure


class AggressiveInference(TrainingProcedure):
    """Encoder-only inner updates before each decoder step, until held-out MI stops rising."""

    needed_metrics: ClassVar[tuple[str, ...]] = ("val/mi",)

    def __init__(self, max_inner_steps: PositiveInt = 100, check_every: PositiveInt = 15, seed: NonNegativeInt = 0):
        """
        Args:
            max_inner_steps: the most encoder updates before one decoder update.
            check_every: the window of inner steps whose mean loss is compared with the previous window's.
            seed: of the random choice of the inner steps' batches.
        """
        self.max_inner_steps, self.check_every, self.seed = max_inner_steps, check_every, seed
        self.active, self.previous_mi = True, 0.0
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_optimizer_state: dict | None = None

    def setup(self, model: ModelWithParts) -> None:
        if model.refines_posterior:
            raise MisconfigurationException(
                "aggressive inference-network training does not apply to SA-VAE models: their encoder learns "
                "through the SVI steps; leave out model.init_args.refinement"
            )

    # ------------------------------------------------------------------ the phase
    def updates_encoder(self) -> bool:
        return not self.active

    def after_validation(self, model: ModelWithParts, metrics: Mapping[str, torch.Tensor]) -> None:
        """Ends the phase when the validation MI is lower than at the previous validation."""
        if not self.active:
            return
        if "val/mi" not in metrics:
            raise MisconfigurationException("aggressive inference-network training needs val/mi after validation")
        mi = float(metrics["val/mi"])
        if mi - self.previous_mi < 0:
            self.active = False
        self.previous_mi = mi

    # ------------------------------------------------------------------ the inner loop
    def encoder_optimizer(self, model: ModelWithParts) -> torch.optim.Optimizer:
        """The inner steps' optimizer: the model's optimizer part over the inference network, at the current learning
        rate."""
        if self.optimizer is None:
            self.optimizer = model.make_optimizer(model.inference_parameters())
            if self._pending_optimizer_state is not None:
                self.optimizer.load_state_dict(self._pending_optimizer_state)
                self._pending_optimizer_state = None
        if model._trainer is not None and model.trainer.optimizers:
            for group in self.optimizer.param_groups:
                group["lr"] = model.trainer.optimizers[0].param_groups[0]["lr"]
        return self.optimizer

    def run_inner_loop(
        self, model: ModelWithParts, batches: Iterator[dict], loss_of: Callable[[dict], torch.Tensor]
    ) -> int:
        """Encoder updates on `batches` (the first is the step's own) until the windowed loss rises; returns how
        many were taken. The decoder's parameters and gradients are not touched."""
        optimizer = self.encoder_optimizer(model)
        params = [p for p in model.inference_parameters() if p.requires_grad]
        trainer = model._trainer
        previous, window, steps = math.inf, 0.0, 0
        for steps in range(1, self.max_inner_steps + 1):
            loss = loss_of(next(batches))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            flat = torch.cat(
                [loss.detach().float().reshape(1)]
                + [(torch.zeros_like(p) if g is None else g).float().flatten() for p, g in zip(params, grads)]
            )
            if trainer is not None and trainer.world_size > 1:
                flat = trainer.strategy.reduce(flat, reduce_op="mean")
            if not torch.isfinite(flat).all():
                return steps - 1  # left to the model's own step, where the non-finite guard acts
            offset = 1
            for p in params:
                p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
            if trainer is not None:
                model.clip_gradients(optimizer)  # the run's gradient clipping (trainer settings), on the encoder's
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window += float(flat[0])
            if steps % self.check_every == 0:
                current = window / self.check_every
                if current > previous:
                    break
                previous, window = current, 0.0
        return steps

    def training_batches(self, model: ModelWithParts, first: dict) -> Iterator[dict]:
        """The step's batch, then random training batches (with the datamodule's transfer, e.g. binarization)."""
        yield first
        trainer = model.trainer
        loader = trainer.train_dataloader
        if loader is None:
            raise RuntimeError("aggressive inference-network training draws batches from the training loader")
        dataset = loader.dataset
        generator = torch.Generator().manual_seed(
            self.seed * 1_000_003 + model.global_step * 1_009 + trainer.global_rank
        )
        while True:
            if loader.batch_size is None:  # items are whole batches
                batch = dataset[int(torch.randint(len(dataset), (), generator=generator))]
            else:
                indices = torch.randint(len(dataset), (loader.batch_size,), generator=generator).tolist()
                getitems = getattr(dataset, "__getitems__", None)
                batch = loader.collate_fn(getitems(indices) if getitems else [dataset[i] for i in indices])
            yield trainer.strategy.batch_to_device(batch)

    def before_step(self, model: ModelWithParts, batch: dict) -> None:
        model.log("train/aggressive_phase", float(self.active), batch_size=len(batch["x"]))
        if not self.active:
            return
        beta = model.kl_weight()
        steps = self.run_inner_loop(
            model, self.training_batches(model, batch), lambda b: model.training_loss(model(b["x"]), beta)
        )
        model.log("train/inner_steps", float(steps), batch_size=len(batch["x"]))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"active": self.active, "previous_mi": self.previous_mi}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        elif self._pending_optimizer_state is not None:
            state["optimizer"] = self._pending_optimizer_state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = bool(state.get("active", True))
        self.previous_mi = float(state.get("previous_mi", 0.0))
        self.optimizer, self._pending_optimizer_state = None, state.get("optimizer")
