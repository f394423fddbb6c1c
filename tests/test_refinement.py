"""The posterior refinement as a part: without one the model is the VAE; the SVI part adds the refined posterior.
(The SA experiments, VAE and SkipVAE with the SVI part by class_path, fit, resume and reload in
tests/test_every_experiment.py.)"""

import pytest
import torch
from helpers import tiny

from models.refinement import SVI


def batch() -> dict:
    x = torch.bernoulli(torch.full((6, 1, 28, 28), 0.4), generator=torch.Generator().manual_seed(1))
    return {"x": x, "index": torch.arange(6)}


def test_no_refinement_is_the_vae():
    model = tiny()
    assert model.refinement is None and not model.refines_posterior
    assert model.eval_metric_names == ("elbo", "recon", "kl")
    assert "proposal_mean" not in model.evaluate(batch())


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_the_svi_part_adds_the_refined_posterior():
    model = tiny(refinement=SVI(steps=2)).eval()
    assert model.refines_posterior and model.eval_metric_names == ("elbo", "recon", "kl", "elbo_svi", "kl_svi")
    outputs = model.evaluate(batch())
    assert {"elbo_svi", "kl_svi", "proposal_mean", "proposal_logvar"} <= set(outputs)
    assert not torch.allclose(outputs["proposal_mean"], outputs["mean"])
