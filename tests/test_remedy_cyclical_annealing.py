"""Cyclical KL annealing: beta at chosen steps, and as the model reads it from its trainer."""

import math

import pytest
from helpers import on_fake_trainer, tiny
from lightning.fabric.utilities.exceptions import MisconfigurationException

from models.remedies.cyclical_annealing import CyclicalAnnealing


def test_values_at_chosen_steps():
    """T = 100 steps, M = 4 cycles of 25, R = 0.5: beta rises by 1 / 12.5 per step over 12.5 steps, then 1."""
    schedule = CyclicalAnnealing(cycles=4, ratio=0.5)
    beta = [schedule.weight(step, 10, 100) for step in range(100)]
    assert beta[0] == 0.0 and beta[25] == 0.0 and beta[50] == 0.0 and beta[75] == 0.0
    assert beta[5] == pytest.approx(0.4) and beta[30] == pytest.approx(0.4)
    assert beta[12] == pytest.approx(0.96) and beta[13] == 1.0 and beta[24] == 1.0 and beta[99] == 1.0
    assert all(b2 >= b1 for b1, b2 in zip(beta[:24], beta[1:25]))  # monotone within a cycle
    assert CyclicalAnnealing(cycles=1, ratio=0.25, start=0.2).weight(10, 10, 80) == pytest.approx(0.2 + 0.8 * 0.5)


def test_fractional_periods_restart_on_time():
    """T = 10, M = 3: cycles start at steps 0, 10/3 and 20/3, so steps 4 and 7 are the first steps of a cycle."""
    schedule = CyclicalAnnealing(cycles=3, ratio=0.5)
    assert schedule.weight(3, 1, 10) == 1.0
    assert schedule.weight(4, 1, 10) == pytest.approx((4 - 10 / 3) / (0.5 * 10 / 3))
    assert schedule.weight(7, 1, 10) == pytest.approx((7 - 20 / 3) / (0.5 * 10 / 3))


def test_the_model_reads_the_run_length_from_its_trainer():
    # T = 40 steps: cycles of 20, beta rises over 10 steps
    model = on_fake_trainer(tiny(kl_schedule=CyclicalAnnealing(cycles=2, ratio=0.5)), 15, max_epochs=4)
    assert model.kl_weight() == 1.0
    model._trainer.global_step = 25
    assert model.kl_weight() == pytest.approx(0.5)
    assert not math.isnan(CyclicalAnnealing().weight(0, math.inf, 8))


def test_a_fit_without_a_run_length_is_refused_before_it_starts():
    model = on_fake_trainer(tiny(kl_schedule=CyclicalAnnealing()), 15, max_epochs=4)
    model.check_fit(model._trainer)
    model._trainer.max_epochs = -1
    with pytest.raises(MisconfigurationException, match="max_epochs or trainer.max_steps"):
        model.check_fit(model._trainer)
    model._trainer.max_steps = 100
    model.check_fit(model._trainer)


def test_a_run_too_short_for_its_cycles_gets_fewer_so_that_beta_rises(recwarn):
    """The debug preset's 4 steps with M = 4: beta would stay at 0; 2 cycles of 2 steps give 0, 1, 0, 1."""
    schedule = CyclicalAnnealing(cycles=4, ratio=0.5)
    assert [schedule.weight(step, 4, 4) for step in range(4)] == [0.0, 1.0, 0.0, 1.0]
    assert len([w for w in recwarn if "4 cycles do not fit a run of 4 steps" in str(w.message)]) == 1  # once
    assert [CyclicalAnnealing(cycles=2).weight(step, 4, 4) for step in range(4)] == [0.0, 1.0, 0.0, 1.0]
