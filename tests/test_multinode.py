"""Scale-out: the documented multi-node commands (docs/scale-out.md) run on one machine (two torchrun agents with
node ranks 0 and 1; the sbatch script under a simulated SLURM allocation), and the study runner's parallel slots and
SLURM array."""

import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
import yaml
from helpers import ROOT, config_args, read_events

from experiments import processes
from experiments import run as runner
from experiments.studies import STUDIES
from main import cli_main

SMALL = "mnist_skipvae_mlp.yaml"
TEST_NAMES = ("test/kl", "test/au", "test/mi", "test/mi_batch", "test/nll_iw", "test/elbo")


def readme_commands(block: str) -> list[str]:
    """The command lines (continuations joined, comments dropped) of the documented code block that follows the
    marker `<!-- tested: {block} -->` (in docs/scale-out.md)."""
    text = (ROOT / "docs" / "scale-out.md").read_text()
    start = text.index(f"<!-- tested: {block} -->")
    body = text[text.index("```", start) + 3 :]
    body = body[body.index("\n") + 1 : body.index("```")]
    joined = re.sub(r"\\\n\s*", "", body)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logging(version: str) -> list[str]:
    """Logs relative to the working directory, so that a process writing from another node's folder shows."""
    return [
        "--trainer.logger.init_args.save_dir",
        "logs",
        "--trainer.logger.init_args.name",
        "run",
        "--trainer.logger.init_args.version",
        version,
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accelerator",
        "cpu",
    ]


def scalars(log_dir) -> dict[str, float]:
    events = read_events(log_dir)
    return {name: events.Scalars(name)[-1].value for name in TEST_NAMES}


@pytest.mark.integration
def test_two_torchrun_nodes_fit_and_test_like_one_process(tmp_path):
    fit, test = readme_commands("torchrun")
    assert fit.startswith("torchrun ") and " main.py fit " in fit and " main.py test " in test
    folders = [tmp_path / "node0", tmp_path / "node1"]  # separate working directories: no shared file system
    for folder in folders:
        folder.mkdir()
        (folder / "main.py").symlink_to(ROOT / "main.py")
    checkpoint = folders[0] / "logs" / "run" / "fit" / "checkpoints" / "last.ckpt"
    path = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"  # torchrun of this environment
    base = {
        **os.environ,
        "PATH": path,
        "PYTHONWARNINGS": "ignore",
        "NODES": "2",
        "GPUS": "1",
        "MAIN_ADDR": "127.0.0.1",
        "CONFIG": str(ROOT / "configs" / SMALL),
        "CKPT": str(checkpoint),
    }
    # the first 2,000 test images on both nodes together: 2 batches of 500 per process
    extras = {
        "fit": [*config_args("presets/debug.yaml"), *logging("fit")],
        "test": [
            *config_args("presets/debug.yaml"),
            *logging("test"),
            "--data.init_args.eval_batch_size",
            "500",
            "--trainer.limit_test_batches",
            "2",
        ],
    }
    for command, phase in ((fit, "fit"), (test, "test")):
        env = {**base, "MAIN_PORT": str(free_port())}
        agents = [
            subprocess.Popen(
                ["bash", "-c", f"{command} {shlex.join(extras[phase])}"],
                cwd=folder,
                env={**env, "NODE_RANK": str(rank)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rank, folder in enumerate(folders)
        ]
        outputs = [agent.communicate(timeout=400)[0] for agent in agents]
        assert [agent.returncode for agent in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert sorted(p.name for p in folders[1].iterdir()) == ["main.py"]  # rank 1 wrote nothing
    assert checkpoint.exists() and len(list((checkpoint.parent.parent).glob("events.out.tfevents.*"))) == 1
    two_nodes = scalars(folders[0] / "logs" / "run" / "test")

    cli_main(
        [
            "test",
            *config_args(SMALL, "presets/debug.yaml"),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "one"),
            "--trainer.logger.init_args.version",
            "0",
            "--trainer.accelerator",
            "cpu",
            "--data.init_args.eval_batch_size",
            "500",
            "--trainer.limit_test_batches",
            "4",
            "--ckpt_path",
            str(checkpoint),
        ]
    )
    one_process = scalars(next((tmp_path / "one").glob("*/version_0")))
    for name in ("test/kl", "test/au", "test/mi", "test/nll_iw", "test/elbo"):
        assert two_nodes[name] == pytest.approx(one_process[name], rel=1e-6), name
    # the minibatch MI depends on which examples share a batch: each process batches its own shard
    assert two_nodes["test/mi_batch"] == pytest.approx(one_process["test/mi_batch"], abs=0.05)


@pytest.mark.integration
def test_sbatch_script_under_a_simulated_slurm_allocation(tmp_path):
    (command,) = readme_commands("sbatch")
    assert command.startswith("sbatch experiments/slurm/main.sbatch fit ")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    srun = fake_bin / "srun"
    fake_srun = shlex.quote(str(ROOT / "tests" / "fake_srun.py"))
    srun.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {fake_srun} "$@"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    # what sbatch sets for `--nodes 2 --ntasks-per-node 1`; srun (here tests/fake_srun.py) adds each task's rank
    env = {
        **os.environ,
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "PYTHONWARNINGS": "ignore",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "skip-vae",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "MASTER_PORT": str(free_port()),
    }
    extra = [
        *config_args("presets/debug.yaml"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "logs"),
        "--trainer.logger.init_args.version",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accelerator",
        "cpu",
    ]
    args = shlex.split(command.replace("sbatch ", "bash ", 1).replace("configs/", f"{ROOT}/configs/"))
    result = subprocess.run([*args, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert output.count("Initializing distributed: GLOBAL_RANK: ") == 2 and "MEMBER: 2/2" in output
    (run_dir,) = (tmp_path / "logs").glob("*/version_0")
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


class TestParallelStudies:
    def test_cpu_slots_split_the_cores(self, monkeypatch):
        monkeypatch.setattr(processes, "visible_gpus", lambda: [])
        monkeypatch.setattr(processes.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
        slots = processes.make_slots(2)
        assert [sorted(s.cpus) for s in slots] == [[0, 1], [2, 3]]
        assert all(s.env["OMP_NUM_THREADS"] == "2" for s in slots)
        assert processes.make_slots(1) == [processes.Slot()]  # one by one: all cores, the environment unchanged
        with pytest.raises(processes.RunFailed, match="--jobs 6: this process may use 5 CPU core"):
            processes.make_slots(6)

    def test_gpu_slots_take_one_visible_gpu_each(self, monkeypatch):
        monkeypatch.setattr(processes, "visible_gpus", lambda: ["2", "5", "7"])
        assert [s.env["CUDA_VISIBLE_DEVICES"] for s in processes.make_slots(3)] == ["2", "5", "7"]
        with pytest.raises(processes.RunFailed, match="only 3 GPU"):
            processes.make_slots(4)

    def test_slurm_array_runs_each_run_of_the_study_once(self, tmp_path, capsys):
        study = STUDIES["four_models_cpu"]
        assert (
            runner.main(["four_models_cpu", "--out", str(tmp_path), "--precision", "bf16-mixed", "--slurm-array"]) == 0
        )
        folder = tmp_path / "four_models_cpu" / "slurm"
        assert f"bash {folder}/submit.sh" in capsys.readouterr().out
        runs = (folder / "runs.sbatch").read_text()
        assert f"#SBATCH --array=0-{len(study.runs) - 1}\n" in runs
        command = shlex.split(runs.splitlines()[-1].replace("$SLURM_ARRAY_TASK_ID", "{task}"))
        assert command[:4] == ["exec", sys.executable, "-m", "experiments.run"]
        names = []
        for task in range(len(study.runs)):
            argv = [arg.format(task=task) for arg in command[4:]]
            assert runner.main([*argv, "--dry-run"]) == 0
            printed = capsys.readouterr().out
            assert printed.count("python main.py fit ") == 1 and "--trainer.precision bf16-mixed" in printed
            names += re.findall(r"^# (\S+)$", printed, re.MULTILINE)
        assert names == [run.name for run in study.runs]  # every run, once, in study order
        report = shlex.split((folder / "report.sbatch").read_text().splitlines()[-1])
        assert report[4:] == ["four_models_cpu", "--precision", "bf16-mixed", "--out", str(tmp_path), "--report-only"]
        submit = (folder / "submit.sh").read_text()
        assert 'sbatch --parsable "$@"' in submit and "--dependency=afterok:" in submit

    def test_report_only_needs_every_run_finished(self, tmp_path, capsys):
        assert runner.main(["debug", "--out", str(tmp_path), "--report-only"]) == 1
        assert "2 of the 2 runs of debug are not finished (vae_seed1, skipvae_seed1)" in capsys.readouterr().err

    def test_bad_run_index_and_jobs(self, tmp_path, capsys):
        for args, message in ((["--run-index", "2"], "debug has runs 0 to 1"), (["--jobs", "0"], "at least 1")):
            with pytest.raises(SystemExit):
                runner.main(["debug", "--out", str(tmp_path), *args])
            assert message in capsys.readouterr().err


def test_single_node_commands_resolve(monkeypatch, capsys):
    from main import cli_main

    monkeypatch.chdir(ROOT)
    expected = [("auto", "auto", None), (4, "ddp", None), (-1, "auto", "bf16-mixed")]
    commands = readme_commands("single-node")
    assert len(commands) == len(expected)
    for command, (devices, strategy, precision) in zip(commands, expected):
        args = shlex.split(command)
        assert args[:3] == [".venv/bin/python", "main.py", "fit"]
        with pytest.raises(SystemExit) as stop:
            cli_main([*args[2:], "--print_config"])
        assert stop.value.code in (0, None)
        trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
        assert (str(trainer["devices"]), trainer["strategy"], trainer["precision"]) == (
            str(devices),
            strategy,
            precision,
        )


@pytest.mark.integration  # starts a process
def test_gpu_check_says_why_it_skips_without_a_gpu():
    result = subprocess.run(
        ["bash", "-c", readme_commands("gpu-check")[0]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable},
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.startswith("gpu_check: skipped, no CUDA GPU is visible")


class TestStudyCommands:
    """The documented study commands, with each run replaced by a stand-in that records where it ran."""

    @pytest.fixture
    def executed(self, monkeypatch):
        log, lock = [], threading.Lock()
        running = {"now": 0, "most": 0}

        def run_one(run, run_dir, quiet, slot):
            with lock:
                running["now"] += 1
                running["most"] = max(running["most"], running["now"])
            time.sleep(0.05)
            with lock:
                running["now"] -= 1
                log.append((run.name, slot))
            run_dir.joinpath("metrics.json").write_text("{}")
            return {"run": run.name, "metrics": {}, "seconds": 0.0}

        monkeypatch.setattr(runner, "run_one", run_one)
        monkeypatch.setattr(runner, "report_study", lambda name, study, out, started=None: [])
        return log, running

    def commands(self, tmp_path) -> list[list[str]]:
        lines = readme_commands("studies")
        return [shlex.split(line.replace("results/", f"{tmp_path}/")) for line in lines]

    def test_parallel_runs_get_one_gpu_or_one_core_share_each(self, tmp_path, monkeypatch, executed):
        log, running = executed
        gpu_line, cpu_line = [c for c in self.commands(tmp_path) if "--jobs" in c]
        monkeypatch.setattr(processes, "visible_gpus", lambda: ["0", "1", "2", "3"])
        assert runner.main([*gpu_line[3:], "--out", str(tmp_path)]) == 0
        study = STUDIES[gpu_line[3]]
        assert sorted(name for name, _ in log) == sorted(run.name for run in study.runs)  # each run once
        assert {slot.env["CUDA_VISIBLE_DEVICES"] for _, slot in log} == {"0", "1", "2", "3"}
        assert running["most"] == 4
        log.clear()
        monkeypatch.setattr(processes, "visible_gpus", lambda: [])
        monkeypatch.setattr(processes.os, "sched_getaffinity", lambda pid: {0, 1})
        assert runner.main([*cpu_line[3:], "--out", str(tmp_path)]) == 0
        assert len(log) == len(STUDIES[cpu_line[3]].runs)
        assert {frozenset(slot.cpus) for _, slot in log} == {frozenset({0}), frozenset({1})}

    @pytest.mark.integration  # starts a process
    def test_slurm_array_submission(self, tmp_path):
        array_line, submit_line = [c for c in self.commands(tmp_path) if "--slurm-array" in c or c[0] == "bash"]
        assert runner.main([*array_line[3:], "--out", str(tmp_path)]) == 0
        fake_bin, calls = tmp_path / "bin", tmp_path / "sbatch_calls"
        fake_bin.mkdir()
        sbatch = fake_bin / "sbatch"  # records its arguments; answers --parsable with a job id
        sbatch.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncase "$1" in --parsable) echo 4242;; esac\n')
        sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
        result = subprocess.run(
            submit_line,
            env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        folder = tmp_path / array_line[3] / "slurm"
        assert calls.read_text().splitlines() == [
            f"--parsable {' '.join(submit_line[2:])} {folder}/runs.sbatch",
            f"--dependency=afterok:4242 {folder}/report.sbatch",
        ]
