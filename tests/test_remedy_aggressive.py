"""Aggressive inference-network training: the inner loop updates the encoder only and stops by its rule; the phase
ends when the validation MI falls; its state survives a checkpoint."""

import itertools
from functools import partial

import pytest
import torch
from helpers import tiny
from lightning.fabric.utilities.exceptions import MisconfigurationException

from models import VAE
from models.refinement import SVI
from models.remedies.aggressive import AggressiveInference
from networks.decoders import MLPDecoder
from networks.encoders import MLPEncoder


def small_model(procedure: AggressiveInference) -> VAE:
    he_normal = dict(hidden=16, linear_init="he_normal")
    return tiny(encoder=partial(MLPEncoder, **he_normal), decoder=partial(MLPDecoder, **he_normal), procedure=procedure)


def batches(scales):
    torch.manual_seed(1)
    for scale in scales:
        yield {"x": torch.bernoulli(torch.full((8, 1, 28, 28), 0.3)), "scale": scale}


def scaled_loss(model):
    return lambda batch: model.training_loss(model(batch["x"]), 1.0) * batch["scale"]


def test_inner_loop_updates_the_encoder_only():
    procedure = AggressiveInference(max_inner_steps=20, check_every=5)
    model = small_model(procedure)
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    procedure.run_inner_loop(model, batches(itertools.repeat(1.0)), scaled_loss(model))
    assert all(torch.equal(decoder[k], v) for k, v in model.decoder.state_dict().items())
    assert all(p.grad is None for p in model.decoder.parameters())
    assert any(not torch.equal(encoder[k], v) for k, v in model.encoder.state_dict().items())


def test_inner_loop_stops_when_the_window_loss_rises():
    """Windows of 5: the losses of steps 11-15 are ten times those of 6-10, so the loop stops after step 15."""
    procedure = AggressiveInference(max_inner_steps=100, check_every=5)
    model = small_model(procedure)
    steps = procedure.run_inner_loop(model, batches([1.0] * 10 + [10.0] * 100), scaled_loss(model))
    assert steps == 15


def test_inner_loop_stops_at_its_maximum_while_the_loss_falls():
    procedure = AggressiveInference(max_inner_steps=12, check_every=3)
    model = small_model(procedure)
    steps = procedure.run_inner_loop(model, batches([2.0**-k for k in range(100)]), scaled_loss(model))
    assert steps == 12


def test_phase_ends_when_validation_mi_falls():
    procedure = AggressiveInference()
    model = small_model(procedure)
    for mi, active in ((0.5, True), (0.9, True), (0.95, True), (0.94, False), (2.0, False)):
        procedure.after_validation(model, {"val/mi": torch.tensor(mi)})
        assert procedure.active is active and procedure.updates_encoder() is not active
    with pytest.raises(MisconfigurationException, match="val/mi"):
        AggressiveInference().after_validation(model, {})


def test_state_round_trips_with_the_inner_optimizer():
    procedure = AggressiveInference(max_inner_steps=4, check_every=2)
    model = small_model(procedure)
    procedure.run_inner_loop(model, batches(itertools.repeat(1.0)), scaled_loss(model))
    procedure.after_validation(model, {"val/mi": torch.tensor(-1.0)})
    state = procedure.state_dict()
    restored = AggressiveInference()
    restored.load_state_dict(state)
    assert restored.active is False and restored.previous_mi == -1.0
    restored_optimizer = restored.encoder_optimizer(model)
    assert restored_optimizer.state_dict()["state"].keys() == procedure.optimizer.state_dict()["state"].keys()
    first = next(iter(restored_optimizer.state_dict()["state"].values()))["exp_avg"]
    torch.testing.assert_close(first, next(iter(procedure.optimizer.state_dict()["state"].values()))["exp_avg"])


def test_sa_models_are_refused():
    with pytest.raises(MisconfigurationException, match="not apply to SA-VAE models"):
        tiny(refinement=SVI(), procedure=AggressiveInference())


def test_the_diagnostics_refuse_a_run_that_would_not_log_the_mi_every_epoch():
    """The procedure reads val/mi after every validation epoch (`needed_metrics`): logged every second epoch, a stale
    value would end the phase, so the run is refused at its start."""
    from diagnostics.evaluation import LatentDiagnostics

    model = small_model(AggressiveInference())
    assert model.needed_validation_metrics == ("val/mi",)
    LatentDiagnostics(every_n_epochs=1).check_fit(None, model)
    with pytest.raises(MisconfigurationException, match="reads val/mi after every validation epoch"):
        LatentDiagnostics(every_n_epochs=2).check_fit(None, model)
    LatentDiagnostics(every_n_epochs=2).check_fit(None, tiny())  # standard training reads none
