"""The text models' learning-rate schedule: halve every epoch once validation stops improving after epoch N."""

from types import SimpleNamespace

import torch

from models.lr_schedule import HalveLearningRateAfterPlateau


def run_schedule(values: list[float], start_epoch: int, min_lr: float = 0.0):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    trainer = SimpleNamespace(
        sanity_checking=False,
        optimizers=[optimizer],
        logger=None,
        should_stop=False,
        callback_metrics={},
        current_epoch=0,
    )
    schedule = HalveLearningRateAfterPlateau(start_epoch=start_epoch, min_lr=min_lr)
    rates = []
    for epoch, value in enumerate(values):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val/elbo": torch.tensor(value)}
        schedule.on_validation_end(trainer, None)
        rates.append(optimizer.param_groups[0]["lr"])
        if trainer.should_stop:
            break
    return rates, schedule, trainer


def test_no_decay_before_start_epoch_then_every_epoch():
    # worse at epoch 2 (ignored: before start), worse again at epoch 5 (after start): halve from then on,
    # even when validation improves again
    rates, _, _ = run_schedule([10, 9, 9.5, 8, 7, 7.5, 6, 5], start_epoch=4)
    assert rates == [1, 1, 1, 1, 1, 0.5, 0.25, 0.125]


def test_decay_may_start_at_the_start_epoch_itself():
    # as in the paper's code (`epoch >= min_epochs`): a worse value at epoch 3 of a schedule starting at 3 halves
    rates, _, _ = run_schedule([10, 9, 9.5, 8], start_epoch=3)
    assert rates == [1, 1, 0.5, 0.25]


def test_stops_below_min_lr_and_state_round_trips():
    rates, schedule, trainer = run_schedule([10, 11, 12, 13, 14, 15, 16], start_epoch=1, min_lr=0.2)
    assert rates == [1, 0.5, 0.25, 0.125] and trainer.should_stop
    restored = HalveLearningRateAfterPlateau()
    restored.load_state_dict(schedule.state_dict())
    assert restored.decaying and restored.best == 10
