"""beta-VAE: the constant schedule's value is the loss's KL weight at every step, and the reported ELBO stays."""

import pytest
import torch
from helpers import on_fake_trainer, tiny

from models.kl_schedule import ConstantWeight


def test_constant_weight_at_every_step_and_in_the_loss():
    model = tiny(kl_schedule=ConstantWeight(beta=0.4))
    for step in (0, 7, 10_000):
        on_fake_trainer(model, step, max_epochs=3)
        assert model.kl_weight() == 0.4
    out = model(torch.bernoulli(torch.full((4, 1, 28, 28), 0.3)))
    expected = (out["recon"] + 0.4 * out["kl"]).mean()
    assert model.training_loss(out, model.kl_weight()).item() == pytest.approx(expected.item())
    torch.testing.assert_close(out["elbo"], out["recon"] + out["kl"])
