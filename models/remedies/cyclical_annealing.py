"""Cyclical KL annealing (Fu, Li, Liu, Gao, Celikyilmaz and Carin, "Cyclical Annealing Schedule: A Simple Approach
to Mitigating KL Vanishing", NAACL 2019): training's T optimizer steps are split into M cycles of T / M steps; in
each, beta rises linearly from `start` to 1 over the first fraction R of the cycle and stays at 1 for the rest.
Each restart at low beta lets the encoder put information into z again, which the decoder then learns to use.

beta at step t (from 0), with period P = T / M and the cycle's first step c = floor(t / P) x P:
    beta = min(1, start + (1 - start) (t - c) / (R P))
The authors' schedule (their `frange_cycle_linear`, M = 4, R = 0.5, start 0, the defaults here) up to the
rounding of step indices. T is the run's total: `trainer.max_steps`, else `max_epochs` x steps per epoch. A run too
short for M cycles of at least two steps (a debug run of 4 steps with M = 4 would hold beta at `start` throughout)
gets floor(T / 2) cycles instead, so that beta rises in each; a warning says so once.
"""

import math

from jsonargparse.typing import ClosedUnitInterval, OpenUnitInterval, PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_warn

from models.kl_schedule import KLSchedule


class CyclicalAnnealing(KLSchedule):
    """M cycles over the run, beta rising over a fraction R of each, then 1."""

    def __init__(self, cycles: PositiveInt = 4, ratio: OpenUnitInterval = 0.5, start: ClosedUnitInterval = 0.0):
        """
        Args:
            cycles: M, the number of cycles over the whole run.
            ratio: R, the fraction of each cycle over which beta rises to 1.
            start: beta at the first step of each cycle.
        """
        self.cycles, self.ratio, self.start = cycles, ratio, start
        self._warned = False

    def check_fit(self, trainer) -> None:
        if trainer.max_steps in (-1, None) and trainer.max_epochs in (-1, None):
            raise MisconfigurationException(
                "cyclical KL annealing needs the run's length: set trainer.max_epochs or trainer.max_steps"
            )

    def weight(self, step: int, steps_per_epoch: float, total_steps: float) -> float:
        cycles = max(1, min(self.cycles, math.floor(total_steps / 2)))
        if cycles < self.cycles and not self._warned:
            self._warned = True
            rank_zero_warn(
                f"cyclical KL annealing: {self.cycles} cycles do not fit a run of {total_steps:g} steps with 2 steps "
                f"each; using {cycles}"
            )
        period = total_steps / cycles
        into_cycle = step - math.floor(step / period) * period
        return min(1.0, self.start + (1.0 - self.start) * into_cycle / (self.ratio * period))
