"""Diagnostics are the same on one process or two (DDP, gloo), and under bf16-mixed precision."""

import pytest
from helpers import MLP, callbacks_config, config_args, logging_args, read_events, run_main

pytestmark = pytest.mark.integration  # every test here trains, tests or starts processes

NAMES = ("test/kl", "test/au", "test/mi", "test/mi_batch", "test/nll_iw", "test/elbo")
FULL_TEST_SET = ["--trainer.limit_test_batches", "1.0", "--data.init_args.eval_batch_size", "500"]


@pytest.fixture
def checkpoint(debug_run):
    return debug_run / "checkpoints" / "last.ckpt"


def test_metrics(tmp_path, checkpoint, *presets, extra=()):
    result = run_main(
        [
            "test",
            *config_args(MLP, "presets/debug.yaml", *presets),
            *logging_args(tmp_path),
            *FULL_TEST_SET,
            "--trainer.accelerator",
            "cpu",
            "--ckpt_path",
            str(checkpoint),
            *extra,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_events(tmp_path / "run" / "version_0")
    return {name: events.Scalars(name)[-1].value for name in NAMES}


test_metrics.__test__ = False  # a helper, not a test


def test_two_processes_give_the_same_diagnostics(tmp_path, checkpoint):
    # The first 2,000 test images either way: 4 batches of 500 on one process; on two, each process takes every
    # second image (Lightning's unrepeated distributed sampler) and stops after 2 batches of 500.
    one = test_metrics(tmp_path / "one", checkpoint, extra=("--trainer.limit_test_batches", "4"))
    two = test_metrics(tmp_path / "two", checkpoint, "presets/ddp.yaml", extra=("--trainer.limit_test_batches", "2"))
    # KL and AU are sums of the same float64 terms in another order; MI and IW-NLL draw z per example from a
    # generator seeded by the example's index, so they are equal too (to float32 logging precision).
    for name in ("test/kl", "test/au", "test/mi", "test/nll_iw", "test/elbo"):
        assert two[name] == pytest.approx(one[name], rel=1e-6), name
    # The minibatch estimator depends on which examples share a batch, and each process batches its own shard.
    assert two["test/mi_batch"] == pytest.approx(one["test/mi_batch"], abs=0.02)


def test_bf16_mixed_matches_fp32(tmp_path, checkpoint):
    first_2000 = ("--trainer.limit_test_batches", "4")  # bf16 is emulated, hence slow, on CPUs without it
    fp32 = test_metrics(tmp_path / "fp32", checkpoint, extra=first_2000)
    bf16 = test_metrics(tmp_path / "bf16", checkpoint, "presets/bf16.yaml", extra=first_2000)
    # A dimension whose posterior-mean variance sits at the 0.02 threshold may count on one side in bf16 and on the
    # other in fp32 (measured on a CPU with native bfloat16: 6 against 7 active units).
    assert abs(bf16["test/au"] - fp32["test/au"]) <= 1
    assert bf16["test/kl"] == pytest.approx(fp32["test/kl"], rel=0.02)
    assert bf16["test/mi"] == pytest.approx(fp32["test/mi"], abs=0.05)
    assert bf16["test/nll_iw"] == pytest.approx(fp32["test/nll_iw"], rel=0.01)
    assert bf16["test/elbo"] == pytest.approx(fp32["test/elbo"], rel=0.01)


@pytest.mark.parametrize("reverse_pass", ["exact", "official"])
def test_two_process_savae_fit_keeps_the_replicas_identical(tmp_path, reverse_pass):
    extra = callbacks_config(tmp_path / "cb.yaml", "class_path: helpers.AssertReplicasAgree")
    result = run_main(
        [
            "fit",
            *config_args("mnist_skipsavae_mlp.yaml", "presets/debug.yaml", "presets/ddp.yaml"),
            *extra,
            *logging_args(tmp_path),
            "--trainer.accelerator",
            "cpu",
            "--model.init_args.refinement.init_args.steps",
            "2",
            "--model.init_args.refinement.init_args.hessian_products",
            reverse_pass,
            "--data.init_args.batch_size",
            "10",
            "--trainer.max_epochs",
            "2",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr  # two processes
    events = read_events(tmp_path / "run" / "version_0")
    assert {"train/elbo_svi", "val/elbo_svi", "val/kl_svi"} <= set(events.Tags()["scalars"])
