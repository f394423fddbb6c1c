"""A SLURM job that is preempted mid-epoch saves its checkpoint between two batches, requeues itself and, run
again with `--ckpt_path last` (as the requeued job is), ends with the weights and logged values of a run that was
never stopped: for a VAE, the aggressive procedure (a state of its own) and an SA model."""

import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import ROOT, fixture_args
from helpers import (
    MLP,
    assert_same_run,
    callbacks_config,
    config_args,
    error_line,
    logging_args,
    main_exit,
)
from test_resume import TEXT_ARGS

from runtime.slurm import EXIT_CODE, slurm_job

pytestmark = pytest.mark.integration  # every test here trains

# Two epochs of 4 batches; the signal arrives as the second batch of the second epoch starts.
RUN = ["--trainer.max_epochs", "2", "--trainer.deterministic", "true", "--trainer.enable_progress_bar", "false"]


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """A SLURM job's environment on one task, with an `scontrol` that records its arguments."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for name, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "skip-vae",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    return calls


@pytest.mark.parametrize(
    "configs",
    [
        [MLP, "presets/debug.yaml"],
        [MLP, "presets/debug.yaml", "remedies/aggressive.yaml"],
        ["mnist_savae_mlp.yaml", "presets/debug.yaml"],
    ],
    ids=["vae", "aggressive", "savae"],
)
def test_a_preempted_job_is_requeued_and_continues_exactly(tmp_path, slurm, capsys, configs):
    args = ["fit", *config_args(*configs), *RUN]
    assert main_exit([*args, *logging_args(tmp_path, "full")], capsys).returncode == 0
    parts = logging_args(tmp_path, "parts")
    warning = callbacks_config(tmp_path / "signal.yaml", "class_path: helpers.SignalMidEpoch")
    stopped = main_exit([*args, *parts, *warning], capsys)
    checkpoint = tmp_path / "parts/version_0/checkpoints/last.ckpt"
    assert stopped.returncode == EXIT_CODE
    assert stopped.stderr.strip().splitlines()[-1] == f"preempted: saved {checkpoint} at step 6; job 4242 requeued"
    assert slurm.read_text() == "requeue 4242\n"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert (saved["epoch"], saved["global_step"], saved["training_order"]["batches"]) == (1, 6, 2)  # mid-epoch
    resumed = main_exit([*args, *parts, "--ckpt_path", "last"], capsys)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "full/version_0", tmp_path / "parts/version_0")


def test_a_preempted_text_job_continues_exactly(tmp_path, slurm, capsys, fixture_data_dir):
    # Text batches are items of their dataset (documents of one length): the resumed epoch skips whole items.
    args = [
        "fit",
        *config_args("yahoo_skipvae.yaml", "presets/debug.yaml"),
        *RUN,
        *TEXT_ARGS,
        *fixture_args(fixture_data_dir),
    ]
    assert main_exit([*args, *logging_args(tmp_path, "full")], capsys).returncode == 0
    parts = logging_args(tmp_path, "parts")
    warning = callbacks_config(tmp_path / "signal.yaml", "class_path: helpers.SignalMidEpoch")
    assert main_exit([*args, *parts, *warning], capsys).returncode == EXIT_CODE
    assert main_exit([*args, *parts, "--ckpt_path", "last"], capsys).returncode == 0
    assert_same_run(tmp_path / "full/version_0", tmp_path / "parts/version_0")


def test_without_the_epochs_order_the_resumed_run_would_differ(tmp_path, slurm, capsys, monkeypatch):
    # Guards the test above: a mid-epoch resume that draws a new order for the rest of the epoch is another run.
    import datamodules.base

    monkeypatch.setattr(datamodules.base.SkipVAEDataModule, "resume_epoch", lambda self, *args: None)
    args = ["fit", *config_args(MLP, "presets/debug.yaml"), *RUN]
    main_exit([*args, *logging_args(tmp_path, "full")], capsys)
    parts = logging_args(tmp_path, "parts")
    assert (
        main_exit(
            [*args, *parts, *callbacks_config(tmp_path / "s.yaml", "class_path: helpers.SignalMidEpoch")], capsys
        ).returncode
        == EXIT_CODE
    )
    assert main_exit([*args, *parts, "--ckpt_path", "last"], capsys).returncode == 0
    with pytest.raises(AssertionError):
        assert_same_run(tmp_path / "full/version_0", tmp_path / "parts/version_0")


def test_an_unknown_signal_is_refused_in_one_line(tmp_path, capsys):
    result = main_exit(
        ["fit", *config_args(MLP, "presets/debug.yaml"), *logging_args(tmp_path), "--preemption.signal", "SIGFOO"],
        capsys,
    )
    assert result.returncode == 1
    assert error_line(result) == "error: preemption.signal: 'SIGFOO' is not a signal name such as SIGUSR1"


def test_the_job_to_requeue(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job() == "4200_3"  # an array task is requeued by itself
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert slurm_job() == "4243"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert slurm_job() is None


@pytest.mark.parametrize("restarts, resumes", [(None, False), ("0", False), ("2", True)])
def test_the_requeued_sbatch_job_resumes_its_fit(tmp_path, restarts, resumes):
    """experiments/slurm/main.sbatch adds `--ckpt_path last` to a fit when SLURM runs it again after a requeue."""
    srun = tmp_path / "srun"
    srun.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "srun_args"}\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2"}
    env.pop("SLURM_RESTART_COUNT", None)
    if restarts is not None:
        env["SLURM_RESTART_COUNT"] = restarts
    script = ROOT / "experiments/slurm/main.sbatch"
    for command, expected in (("fit", resumes), ("test", False)):
        subprocess.run(["bash", str(script), command, "--config", "c.yaml"], env=env, check=True, cwd=tmp_path)
        args = (tmp_path / "srun_args").read_text().split()
        assert ("--ckpt_path" in args) == expected and args[:4] == ["python", "main.py", command, "--config"]
    assert "#SBATCH --signal=USR1@" in script.read_text() and "#SBATCH --requeue" in script.read_text()


def test_the_study_runner_passes_the_signal_on_and_stops(tmp_path):
    """In an array task, SLURM signals the batch script (the runner): the run gets the signal, and the runner stops
    with the run's preemption exit code instead of testing it."""
    from experiments import processes
    from experiments import run as runner

    child, ready = tmp_path / "child.py", tmp_path / "ready"
    child.write_text(
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGUSR1, lambda *args: sys.exit({EXIT_CODE}))\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    errors: list[BaseException] = []

    def execute():
        try:
            processes.run_process([str(child)], tmp_path / "child.log", quiet=True)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=execute)
    thread.start()
    deadline = time.time() + 30
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    processes.forward_to_runs(signal.SIGUSR1, None)
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], processes.RunPreempted), errors
    scripts = runner.slurm_array_scripts("debug", runner.STUDIES["debug"], tmp_path, None)
    assert "#SBATCH --signal=B:USR1@" in scripts["runs.sbatch"] and "#SBATCH --requeue" in scripts["runs.sbatch"]


def test_a_preempted_two_process_job_resumes_exactly_through_the_sbatch_script(tmp_path):
    """experiments/slurm/main.sbatch on a simulated allocation of 2 tasks (tests/fake_srun.py): the signal reaches
    both, they agree to save at the same batch, the job is requeued, and the requeued job resumes its fit."""
    from test_multinode import free_port

    fake_bin, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    fake_bin.mkdir()
    for name, body in (
        ("srun", f'exec {sys.executable} {ROOT / "tests" / "fake_srun.py"} "$@"'),
        ("scontrol", f'echo "$@" >> {calls}'),
    ):
        (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake_bin / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT / "tests"),
        "PYTHONWARNINGS": "ignore",
        "SLURM_NNODES": "1",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "skip-vae",
        "SLURM_SUBMIT_DIR": str(ROOT),
    }
    env.pop("SLURM_RESTART_COUNT", None)
    args = [*config_args(MLP, "presets/debug.yaml"), *RUN, "--trainer.accelerator", "cpu"]

    def sbatch(name: str, *extra: str, restarts: int = 0) -> subprocess.CompletedProcess:
        run_env = {
            **env,
            "MASTER_PORT": str(free_port()),
            **({"SLURM_RESTART_COUNT": str(restarts)} if restarts else {}),
        }
        command = [
            "bash",
            str(ROOT / "experiments/slurm/main.sbatch"),
            "fit",
            *args,
            *logging_args(tmp_path, name),
            *extra,
        ]
        return subprocess.run(command, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=600)

    assert (full := sbatch("full")).returncode == 0, full.stderr[-3000:]
    warning = callbacks_config(tmp_path / "signal.yaml", "class_path: helpers.SignalMidEpoch")
    stopped = sbatch("parts", *warning)
    assert stopped.returncode == EXIT_CODE, stopped.stderr[-3000:]
    assert "preempted: saved " in stopped.stderr and calls.read_text() == "requeue 4242\n"
    resumed = sbatch("parts", restarts=1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "full/version_0", tmp_path / "parts/version_0")
