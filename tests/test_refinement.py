"""The posterior refinement as a part: VAE and SkipVAE with the SVI part are SAVAE and SkipSAVAE, it is chosen by
class_path, rebuilt from checkpoints and checked by them, and an SA class refuses a second refinement."""

import pytest
import torch
from helpers import MLP, config_args, error_line, logging_args, main_exit, read_events

from main import cli_main
from models import SAVAE, VAE, SkipSAVAE, SkipVAE
from models.identity import checkpoint_mismatches
from models.refinement import SVI

SETTINGS = dict(architecture="mlp", data_dims=[1, 4, 4], latent_dim=3, encoder_hidden=8, decoder_layers=1)
SVI_SETTINGS = dict(steps=3, lr=0.5, momentum=0.4, max_grad_norm=0.05, hessian_products="exact")


def batch() -> dict:
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    return {"x": x, "index": torch.arange(6)}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("model_class, sa_class", [(VAE, SAVAE), (SkipVAE, SkipSAVAE)])
def test_the_svi_part_makes_the_sa_models(model_class, sa_class):
    """Same weights, the same training gradients (fresh noise seeded alike) and the same evaluation outputs."""
    torch.manual_seed(0)
    with_part = model_class(**SETTINGS, refinement=SVI(**SVI_SETTINGS)).double()
    torch.manual_seed(0)
    sa_model = sa_class(**SETTINGS, **{f"svi_{key}": value for key, value in SVI_SETTINGS.items()}).double()
    torch.testing.assert_close(with_part.state_dict(), sa_model.state_dict(), rtol=0, atol=0)
    assert with_part.refines_posterior and with_part.eval_metric_names == sa_model.eval_metric_names
    gradients = []
    for model in (with_part, sa_model):
        torch.manual_seed(5)
        loss = model.training_step(batch(), 0)
        gradients.append(torch.autograd.grad(loss, list(model.parameters())))
    for ours, theirs in zip(*gradients):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    outputs = [model.eval().evaluate(batch()) for model in (with_part, sa_model)]
    assert set(outputs[0]) == set(outputs[1]) >= {"elbo_svi", "kl_svi", "proposal_mean"}
    for key in outputs[0]:
        torch.testing.assert_close(outputs[0][key], outputs[1][key], rtol=0, atol=0)


def test_no_refinement_is_the_vae():
    model = VAE(**SETTINGS)
    assert model.refinement is None and not model.refines_posterior
    assert model.eval_metric_names == ("elbo", "recon", "kl")
    assert "proposal_mean" not in model.evaluate({k: v.float() if k == "x" else v for k, v in batch().items()})


def test_a_checkpoint_of_another_refinement_is_refused():
    torch.manual_seed(0)
    refined = VAE(**SETTINGS, refinement=SVI(steps=2))
    checkpoint: dict = {"state_dict": refined.state_dict(), "hyper_parameters": {}}
    refined.on_save_checkpoint(checkpoint)
    assert checkpoint_mismatches(VAE(**SETTINGS), checkpoint) == ["posterior refinement SVI (configured: none)"]
    assert checkpoint_mismatches(VAE(**SETTINGS, refinement=SVI(steps=5)), checkpoint) == []


REFINEMENT = ["--model.init_args.refinement", "models.refinement.SVI", "--model.init_args.refinement.init_args.steps"]


@pytest.mark.integration
def test_the_svi_part_by_class_path(tmp_path):
    """SkipVAE with the SVI part in the config: a fit that logs the refined bound, and a checkpoint that
    `load_from_checkpoint` rebuilds the part from."""
    cli_main(["fit", *config_args(MLP, "debug.yaml"), *logging_args(tmp_path), *REFINEMENT, "2"])
    checkpoint = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["hyper_parameters"]["refinement"]["class_path"] == "models.refinement.SVI"
    assert {"val/elbo_svi", "val/kl_svi"} <= set(read_events(tmp_path / "run" / "version_0").Tags()["scalars"])
    model = SkipVAE.load_from_checkpoint(checkpoint)
    assert isinstance(model.refinement, SVI) and model.refinement.svi.steps == 2


def test_an_sa_model_refuses_a_second_refinement(tmp_path, capsys):
    exit = main_exit(
        ["fit", *config_args("mnist_savae_mlp.yaml", "debug.yaml"), *logging_args(tmp_path), *REFINEMENT, "2"], capsys
    )
    assert exit.returncode == 1
    assert error_line(exit) == (
        "error: SAVAE refines its posterior with its svi_* settings; to choose a refinement part, use VAE or "
        "SkipVAE with model.init_args.refinement"
    )
    assert not (tmp_path / "run").exists()


def test_aggressive_training_is_refused_with_the_svi_part():
    """The refusal follows the part, not the class name: VAE with SVI is an SA model."""
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from models.remedies.aggressive import AggressiveInference

    with pytest.raises(MisconfigurationException, match="encoder is trained through the SVI steps"):
        VAE(**SETTINGS, refinement=SVI(steps=2), procedure=AggressiveInference())
