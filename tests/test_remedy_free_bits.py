"""Free bits: the loss's KL per dimension is held at lambda; dimensions below it get no KL gradient."""

import pytest
import torch
from helpers import tiny
from lightning.fabric.utilities.exceptions import MisconfigurationException

from models.remedies.free_bits import FreeBits


def test_no_kl_gradient_below_lambda():
    torch.manual_seed(0)
    mean = torch.tensor([[0.05, 2.0, 0.1], [-0.05, 1.5, 0.2]], requires_grad=True)
    logvar = torch.zeros_like(mean, requires_grad=True)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar)  # dims 0 and 2 below 0.5 nats, dim 1 above
    loss = FreeBits(lambda_=0.5)(kl)
    loss.backward()
    assert mean.grad[:, [0, 2]].abs().sum() == 0 and mean.grad[:, 1].abs().min() > 0
    assert loss.item() == pytest.approx(0.5 + kl[:, 1].mean().item() + 0.5)


def test_groups_are_held_as_a_whole():
    kl = torch.tensor([[0.1, 0.3, 2.0, 0.0]])  # groups of two: 0.4 (held at 1) and 2.0
    assert FreeBits(lambda_=1.0, group_size=2)(kl).item() == pytest.approx(3.0)
    with pytest.raises(MisconfigurationException, match="group_size 3 does not divide the latent dimension 4"):
        tiny(latent_dim=4, kl_term=FreeBits(group_size=3))  # refused when the model is built


def test_zero_lambda_is_the_elbo_and_reported_kl_is_exact():
    torch.manual_seed(1)
    kl = torch.rand(4, 5)
    assert FreeBits(lambda_=0.0)(kl).item() == pytest.approx(kl.sum(-1).mean().item())
    model = tiny(kl_term=FreeBits(lambda_=5.0))
    x = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
    out = model(x)
    assert model.training_loss(out, 1.0).item() == pytest.approx(out["recon"].mean().item() + 15.0)
    torch.testing.assert_close(out["kl"], out["kl_per_dimension"].sum(-1))  # what is logged: the exact KL
