"""The remedies together keep what every run has: exact resume (with the aggressive phase's state), DDP with
identical replicas, bf16-mixed and the non-finite guard."""

import math

import pytest
import torch
from helpers import (
    MLP,
    assert_same_run,
    callbacks_config,
    config_args,
    fit_in_parts,
    logging_args,
    read_events,
    run_main,
    scalars,
)

from main import cli_main
from runtime.guards import NonFiniteLossError

pytestmark = pytest.mark.integration

# Every part a remedy sets, at once: free bits, cyclical annealing, BN-VAE and aggressive training (3 inner steps).
ALL_PARTS = [
    *config_args(
        MLP,
        "presets/debug.yaml",
        "remedies/free_bits.yaml",
        "remedies/cyclical_annealing.yaml",
        "remedies/bn_vae.yaml",
        "remedies/aggressive.yaml",
    ),
    "--model.init_args.procedure.init_args.max_inner_steps",
    "3",
    "--model.init_args.procedure.init_args.check_every",
    "2",
]

ALL_PARTS_DETERMINISTIC = [*ALL_PARTS, "--trainer.deterministic", "true"]


def test_without_the_procedure_state_the_resumed_run_would_differ(tmp_path, monkeypatch):
    """Guards the test below: a resumed run that restarts the inner optimizer is another run."""
    from models.remedies.aggressive import AggressiveInference

    monkeypatch.setattr(AggressiveInference, "state_dict", lambda self: {})
    with pytest.raises(AssertionError):
        assert_same_run(*fit_in_parts(tmp_path, ALL_PARTS_DETERMINISTIC))


def test_exact_resume_with_every_part(tmp_path):
    full, resumed = fit_in_parts(tmp_path, ALL_PARTS_DETERMINISTIC)
    assert_same_run(full, resumed)
    states = [
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["training_procedure"]
        for run in (full, resumed)
    ]
    assert states[0]["active"] == states[1]["active"] and states[0]["previous_mi"] == states[1]["previous_mi"]
    for a, b in zip(states[0]["optimizer"]["state"].values(), states[1]["optimizer"]["state"].values()):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    logged = scalars(resumed)
    phase = dict(logged["train/aggressive_phase"])
    assert phase[4] == 1.0  # the aggressive phase ran across the resume point (after epoch 0's 4 steps)
    assert {step for step, _ in logged["train/inner_steps"]} >= {0, 4}
    beta = dict(logged["train/beta"])
    assert beta[0] == 0.0 and max(beta.values()) == 1.0  # cycles of 3 steps over the 12


def test_two_processes_keep_the_replicas_identical(tmp_path):
    extra = callbacks_config(tmp_path / "cb.yaml", "class_path: helpers.AssertReplicasAgree")
    result = run_main(
        [
            "fit",
            *ALL_PARTS,
            *config_args("presets/ddp.yaml"),
            *extra,
            *logging_args(tmp_path),
            "--trainer.accelerator",
            "cpu",
            "--trainer.max_epochs",
            "2",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr
    events = read_events(tmp_path / "run" / "version_0")
    assert {"train/inner_steps", "train/aggressive_phase", "val/mi"} <= set(events.Tags()["scalars"])


def test_bf16_mixed(tmp_path):
    cli = cli_main(["fit", *ALL_PARTS, *config_args("presets/bf16.yaml"), *logging_args(tmp_path)])
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.precision == "bf16-mixed"
    assert all(math.isfinite(float(metrics[name])) for name in ("val/elbo", "val/mi", "train/loss"))


def test_the_guard_stops_a_nan_batch_during_the_aggressive_phase(tmp_path):
    extra = callbacks_config(tmp_path / "cb.yaml", "class_path: helpers.InjectNonFinite\n      init_args: {steps: [5]}")
    with pytest.raises(NonFiniteLossError, match="^the training loss is not finite at global step 5 "):
        cli_main(["fit", *ALL_PARTS, *extra, *logging_args(tmp_path), "--trainer.max_epochs", "2"])
    saved = torch.load(tmp_path / "run/version_0/checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and all(torch.isfinite(w).all() for w in saved["state_dict"].values())
