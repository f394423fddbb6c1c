"""A resumed run is the same run: stopped after an epoch (or killed mid-epoch) and resumed from its last checkpoint,
it ends with the same weights and logs the same metrics as an uninterrupted run, on 1 or 2 processes; checkpoints
move between 1 and 2 processes."""

import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from helpers import (
    MLP,
    assert_same_run,
    config_args,
    error_line,
    fit_in_parts,
    logging_args,
    main_exit,
    run_main,
    scalars,
    weights,
)

from main import cli_main

pytestmark = pytest.mark.integration  # every test here trains, tests or starts processes

# Exercised across the resume point: KL warm-up (beta from the global step), Adam state, dynamic binarization and
# the shuffled data order (global generators), the sample logger, best/last checkpoint bookkeeping.
IMAGE_ARGS = [
    "--trainer.deterministic",
    "true",
    "--model.init_args.kl_schedule",
    "models.kl_schedule.LinearWarmup",
    "--model.init_args.kl_schedule.start",
    "0.1",
    "--model.init_args.kl_schedule.epochs",
    "4",
]
TEXT_CALLBACKS = """
lr_schedule: {monitor: val/au, start_epoch: 0}
"""
# SGD with dropout, and the plateau schedule watching a value that hardly moves (the active-unit count, which must
# fall to count as improving), so the learning rate is halved after epochs 2 and 3 and its state crosses the resume
# point too.
TEXT_ARGS = [
    "--trainer.deterministic",
    "true",
    "--model.init_args.encoder.init_args.embedding_dim",
    "32",
    "--model.init_args.encoder.init_args.hidden",
    "32",
    "--model.init_args.decoder.init_args.embedding_dim",
    "32",
    "--model.init_args.decoder.init_args.hidden",
    "32",
]


class TestExactResume:
    def test_image_run(self, tmp_path):
        full, resumed = fit_in_parts(tmp_path, [*config_args(MLP, "presets/debug.yaml"), *IMAGE_ARGS])
        assert_same_run(full, resumed)
        beta = dict(scalars(resumed)["train/beta"])
        assert 0.1 < beta[max(beta)] < 1.0  # the warm-up was still running across the resume point

    def test_text_run(self, tmp_path, fixture_data_dir):
        callbacks = tmp_path / "callbacks.yaml"
        callbacks.write_text(TEXT_CALLBACKS)
        args = [
            *config_args("yahoo_skipvae.yaml", "presets/debug.yaml"),
            "--config",
            str(callbacks),
            *TEXT_ARGS,
            "--data.init_args.data_dir",
            str(fixture_data_dir),
            "--data.init_args.check_file",
            "false",
        ]
        full, resumed = fit_in_parts(tmp_path, args)
        assert_same_run(full, resumed)
        assert dict(scalars(resumed)["train/lr"]).values() and scalars(resumed)["train/lr"][-1][1] < 1.0

    def test_without_saved_generators_the_run_would_differ(self, tmp_path, monkeypatch):
        # Guards the test above: resuming with the random streams not restored changes the run.
        import runtime.random_state

        monkeypatch.setattr(runtime.random_state, "set_rng_states", lambda states: None)
        full, resumed = fit_in_parts(tmp_path, [*config_args(MLP, "presets/debug.yaml"), *IMAGE_ARGS])
        with pytest.raises(AssertionError):
            assert_same_run(full, resumed)

    def test_resume_last_with_nothing_to_resume(self, tmp_path, capsys):
        result = main_exit(
            ["fit", *config_args(MLP, "presets/debug.yaml"), *logging_args(tmp_path)[:4], "--ckpt_path", "last"], capsys
        )
        assert result.returncode == 1
        assert error_line(result).startswith("error: --ckpt_path last: there is no last checkpoint")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """2-process DDP: uninterrupted 3 epochs, and 1 epoch (its checkpoint is reused below) then resumed to 3."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    base = [
        "fit",
        *config_args(MLP, "presets/debug.yaml", "presets/ddp.yaml"),
        "--trainer.accelerator",
        "cpu",
        *IMAGE_ARGS,
    ]
    logging = logging_args(tmp_path, "parts")[:4] + ["--trainer.enable_progress_bar", "false"]
    runs = [
        [*base, *logging_args(tmp_path, "full"), "--trainer.max_epochs", "3"],
        [*base, *logging, "--trainer.max_epochs", "1"],
    ]
    for args in runs:
        result = run_main(args)
        assert result.returncode == 0, result.stderr[-3000:]
    (tmp_path / "after_one_epoch.ckpt").write_bytes((tmp_path / "parts/version_0/checkpoints/last.ckpt").read_bytes())
    result = run_main([*base, *logging, "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path


class TestDistributedResume:
    def test_two_process_run_resumes_exactly(self, ddp_runs):
        assert_same_run(ddp_runs / "full" / "version_0", ddp_runs / "parts" / "version_0")

    def test_two_process_checkpoint_resumes_and_tests_on_one_process(self, ddp_runs, tmp_path):
        with pytest.warns(UserWarning, match="written by 2 process\\(es\\) and the run resumes on 1"):
            fit = cli_main(
                [
                    "fit",
                    *config_args(MLP, "presets/debug.yaml"),
                    *IMAGE_ARGS,
                    *logging_args(tmp_path, "fit"),
                    "--trainer.max_epochs",
                    "2",
                    "--ckpt_path",
                    str(ddp_runs / "after_one_epoch.ckpt"),
                ]
            )
        assert fit.trainer.current_epoch == 2 and fit.trainer.world_size == 1
        test = cli_main(
            [
                "test",
                *config_args(MLP, "presets/debug.yaml"),
                *logging_args(tmp_path, "test"),
                "--ckpt_path",
                str(tmp_path / "fit" / "version_0" / "checkpoints" / "last.ckpt"),
            ]
        )
        assert torch.isfinite(test.trainer.callback_metrics["test/nll_iw"])

    def test_one_process_checkpoint_resumes_and_tests_on_two(self, tmp_path):
        cli_main(["fit", *config_args(MLP, "presets/debug.yaml"), *IMAGE_ARGS, *logging_args(tmp_path, "one")])
        checkpoint = tmp_path / "one" / "version_0" / "checkpoints" / "last.ckpt"
        ddp = [*config_args(MLP, "presets/debug.yaml", "presets/ddp.yaml"), "--trainer.accelerator", "cpu"]
        result = run_main(
            [
                "fit",
                *ddp,
                *IMAGE_ARGS,
                *logging_args(tmp_path, "two"),
                "--trainer.max_epochs",
                "2",
                "--ckpt_path",
                str(checkpoint),
            ]
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "MEMBER: 2/2" in result.stderr  # the ddp preset started two processes
        resumed = torch.load(tmp_path / "two/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
        assert resumed["epoch"] == 1 and len(resumed["rng_states"]) == 2
        result = run_main(
            [
                "test",
                *ddp,
                *logging_args(tmp_path, "test"),
                "--ckpt_path",
                str(tmp_path / "two/version_0/checkpoints/last.ckpt"),
            ]
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "test/nll_iw" in scalars(tmp_path / "test" / "version_0")


def test_hard_kill_mid_epoch_then_resume(tmp_path):
    """SIGKILL the training process after its first checkpoint, in a later epoch; `--ckpt_path last` resumes from
    the last checkpoint written, and the finished run equals an uninterrupted one."""
    args = [
        *config_args(MLP, "presets/debug.yaml"),
        *IMAGE_ARGS,
        "--trainer.limit_train_batches",
        "30",
        "--trainer.max_epochs",
        "3",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]
    reference = run_main(["fit", *args, "--trainer.logger.init_args.name", "reference"])
    assert reference.returncode == 0, reference.stderr[-3000:]

    run = ["fit", *args, "--trainer.logger.init_args.name", "killed"]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *run], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = tmp_path / "killed" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] < 2  # not finished

    resumed = run_main([*run, "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = {tag: series[-1] for tag, series in scalars(tmp_path / "killed" / "version_0").items()}
    expected = {tag: series[-1] for tag, series in scalars(tmp_path / "reference" / "version_0").items()}
    assert final == expected
    reference_weights = weights(tmp_path / "reference" / "version_0" / "checkpoints" / "last.ckpt")
    killed_weights = weights(checkpoint)
    assert all(torch.equal(reference_weights[name], killed_weights[name]) for name in reference_weights)
