"""KL weight schedules: beta of the training loss recon + beta x KL as a function of training progress.

A schedule is a part of the model (`VAE.kl_schedule`), chosen in the config by `class_path`; a new one is a
subclass in its own file (e.g. `models/remedies/cyclical_annealing.py`). Schedules depend only on the optimizer
step, so a resumed run continues them exactly.
"""

from abc import abstractmethod

from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat

from networks.abstract import CompletePart


class KLSchedule(CompletePart):
    """Base class: beta at an optimizer step. A subclass without `weight` is refused when it is built."""

    @abstractmethod
    def weight(self, step: int, steps_per_epoch: float, total_steps: float) -> float:
        """beta at optimizer step `step` (from 0) of a run of `total_steps` steps, `steps_per_epoch` per epoch
        (either may be infinite when the trainer does not know it)."""

    def check_fit(self, trainer) -> None:
        """Refuse, before any work, a fit whose trainer settings the schedule cannot follow (raise
        `MisconfigurationException` with what to set)."""


class LinearWarmup(KLSchedule):
    """The paper code's KL warm-up (Bowman et al., 2016): beta = min(1, start + (step + 1) / (epochs x steps per
    epoch)); the increment is added before each batch, so beta reaches 1 after (1 - start) x epochs epochs.
    `epochs: 0` (or an unknown epoch length) is no warm-up: beta = 1, the model's schedule when it is given none.
    The authors' text models start at 0.1 over 10 epochs (`configs/parts/yahoo.yaml`)."""

    def __init__(self, start: ClosedUnitInterval = 1.0, epochs: NonNegativeFloat = 0.0):
        self.start, self.epochs = start, epochs

    def weight(self, step: int, steps_per_epoch: float, total_steps: float) -> float:
        if self.epochs <= 0 or not 0 < steps_per_epoch < float("inf"):
            return 1.0
        return min(1.0, self.start + (step + 1) / (self.epochs * steps_per_epoch))


class ConstantWeight(KLSchedule):
    """beta fixed for the whole run: 1 is the ELBO; another value is the beta-VAE objective (Higgins et al., 2017;
    beta < 1 weakens the KL's pull towards the prior)."""

    def __init__(self, beta: NonNegativeFloat = 1.0):
        self.beta = beta

    def weight(self, step: int, steps_per_epoch: float, total_steps: float) -> float:
        return self.beta
