"""The study runner: tables, plots, resume after an interrupted study; and the latent probe."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, ROOT

from diagnostics.probe import probe_accuracy
from experiments.paired import paired_differences, paired_table
from experiments.report import markdown_table, mean_std
from experiments.run import fit_command
from experiments.run import main as run_study
from experiments.studies import STUDIES, Run, Study


def runner(out, *extra) -> list[str]:
    return [sys.executable, "-m", "experiments.run", "debug", "--out", str(out), "--quiet", *extra]


class TestStudyRunner:
    @pytest.mark.integration
    def test_interrupted_study_resumes_and_reports_one_by_one_or_in_parallel(self, tmp_path, capsys):
        # One thread per run throughout, as a run gets in a slot of `--jobs 2` on 2 cores: float sums over another
        # number of threads may differ in the last bits, and the debug models' probe accuracy amplifies that.
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        first = tmp_path / "debug" / "runs" / "vae_seed1" / "metrics.json"
        process = subprocess.Popen(
            runner(tmp_path),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while not first.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # the runner and its main.py child, mid-study
        process.wait()
        assert first.exists(), process.stdout.read().decode()[-2000:]
        assert not (tmp_path / "debug" / "runs" / "skipvae_seed1" / "metrics.json").exists()
        finished_at = first.stat().st_mtime

        result = subprocess.run(runner(tmp_path), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "[1/2] debug/vae_seed1: finished earlier, reusing" in result.stdout
        assert "[2/2] debug/skipvae_seed1:" in result.stdout
        assert first.stat().st_mtime == finished_at

        study_dir = tmp_path / "debug"
        rows = (study_dir / "results.csv").read_text().splitlines()
        assert rows[0].startswith("run,group,seed,test/elbo,test/nll_iw,test/kl,test/mi,test/mi_batch,test/au")
        assert [r.split(",")[0] for r in rows[1:]] == ["vae_seed1", "skipvae_seed1"]
        table = (study_dir / "results.md").read_text()
        assert "| VAE | 1 |" in table and "| SkipVAE | 1 |" in table
        assert "| SkipVAE − VAE | kl | 1 |" in table and "one seed: untested" in table
        for image in ("curves.png", "kl_per_dimension.png", "matched_likelihood.png"):
            assert (study_dir / image).read_bytes()[:4] == b"\x89PNG"
        record = json.loads(first.read_text())
        assert record["commit"] and record["cpu"] in table and [step for step, _ in record["curves"]["val/kl"]]
        # both are Monte-Carlo estimates (one z per example for the ELBO, K = 10 for IW): close, IW not above by much
        assert record["metrics"]["test/nll_iw"] <= record["metrics"]["test/elbo"] + 0.5
        assert "test/probe_acc" in record["metrics"] and len(record["kl_per_dimension"]) == 20

        # run again (in this process: nothing is trained) with the same and with other arguments
        capsys.readouterr()
        assert run_study(runner(tmp_path)[3:]) == 0
        assert capsys.readouterr().out.count("finished earlier, reusing") == 2
        assert run_study([*runner(tmp_path)[3:], "--precision", "bf16-mixed"]) == 1
        other = capsys.readouterr().err
        assert "runs/vae_seed1 holds a run made with other arguments" in other
        assert "Pass another --out folder" in other and first.stat().st_mtime == finished_at

        # The same study with two runs at once (one CPU core each), interrupted when the first fit is done, then
        # resumed: the same table as one by one (each run seeded, alone in its slot, with the same thread count).
        parallel = tmp_path / "parallel"
        process = subprocess.Popen(
            runner(parallel, "--jobs", "2"),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        runs = parallel / "debug" / "runs"
        deadline = time.time() + 300
        while not list(runs.glob("*/fit.done")) and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0].decode()
        assert output.count(" on CPU cores ") == 2, output[-2000:]  # both started, each in its slot
        assert list(runs.glob("*/fit.done")) and not list(runs.glob("*/metrics.json"))
        resumed = subprocess.run(
            runner(parallel, "--jobs", "2"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
        assert "finished earlier" not in resumed.stdout
        one_by_one = [row.rsplit(",", 1)[0] for row in rows]  # without the wall time
        in_parallel = [row.rsplit(",", 1)[0] for row in (parallel / "debug" / "results.csv").read_text().splitlines()]
        assert in_parallel == one_by_one
        assert (
            markdown_table(
                STUDIES["debug"],
                [json.loads((runs / r / "metrics.json").read_text()) for r in ("vae_seed1", "skipvae_seed1")],
            )
            in table
        )

    @pytest.mark.integration
    def test_failed_run_stops_with_message(self, tmp_path):
        env = {**os.environ, "SKIPVAE_DATA_DIR": str(tmp_path / "nowhere"), "PYTHONWARNINGS": "ignore"}
        result = subprocess.run(runner(tmp_path), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert "exited with code 1; its output is in" in result.stderr and "Finished runs are kept" in result.stderr
        log = tmp_path / "debug" / "runs" / "vae_seed1" / "fit.log"
        assert "missing data file" in log.read_text()

    def test_fit_resumes_from_last_checkpoint(self, tmp_path):
        run = Run("r", "VAE", ("configs/mnist_vae.yaml",), 3, ("--trainer.max_epochs", "2"))
        command = fit_command(run, tmp_path / "r")
        assert "--ckpt_path" not in command and command[command.index("--seed_everything") + 1] == "3"
        (tmp_path / "r" / "fit" / "checkpoints").mkdir(parents=True)
        (tmp_path / "r" / "fit" / "checkpoints" / "last.ckpt").write_bytes(b"")
        assert fit_command(run, tmp_path / "r")[-2:] == [
            "--ckpt_path",
            str(tmp_path / "r" / "fit" / "checkpoints" / "last.ckpt"),
        ]

    def test_precision_option_overrides_every_run(self, tmp_path, capsys):
        assert run_study(["debug", "--out", str(tmp_path), "--quiet", "--dry-run", "--precision", "bf16-mixed"]) == 0
        commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python main.py")]
        assert len(commands) == 4  # fit and test of both runs
        # after the presets, so it wins over any precision they set
        assert all(line.split("--config")[-1].split("--trainer.precision bf16-mixed")[1] for line in commands)

    def test_every_study_names_existing_configs(self):
        for name, study in STUDIES.items():
            for run in study.runs:
                for config in run.configs:
                    assert (ROOT / config).exists(), (name, config)
            assert len({run.name for run in study.runs}) == len(study.runs), name

    @pytest.mark.integration
    def test_every_study_run_is_a_valid_command(self, capsys):
        """Each run's configs and overrides resolve (`--print_config`), e.g. no override of a part a preset replaced."""
        from main import cli_main

        refused = []
        for configs, overrides in {(run.configs, run.overrides) for study in STUDIES.values() for run in study.runs}:
            args = [arg for config in configs for arg in ("--config", str(ROOT / config))]
            capsys.readouterr()
            with pytest.raises(SystemExit):
                cli_main(["fit", *args, *overrides, "--print_config"])
            out, err = capsys.readouterr()
            if not out.strip():
                refused.append(f"{' '.join(configs)} {' '.join(overrides)}: {err.strip().splitlines()[-1:]}")
        assert not refused, refused

    def test_markdown_table_mean_and_std_over_seeds(self):
        study = Study("t", (), metrics=("test/kl", "test/au"))
        records = [
            {"group": "VAE", "metrics": {"test/kl": 1.0, "test/au": 2}},
            {"group": "VAE", "metrics": {"test/kl": 3.0, "test/au": 2}},
            {"group": "SkipVAE", "metrics": {"test/kl": 5.0}},
        ]
        lines = markdown_table(study, records).splitlines()
        assert lines[0] == "| model | seeds | kl | au |"
        assert lines[2] == "| VAE | 2 | 2.00 ± 1.41 | 2 ± 0 |"
        assert lines[3] == "| SkipVAE | 1 | 5.00 | – |"
        unused = Study("t", (), metrics=("test/kl", "test/ppl_iw"))  # a metric no run logged is left out
        assert markdown_table(unused, records).splitlines()[0] == "| model | seeds | kl |"
        assert mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))


def made_up_run(out, run, kl: float) -> None:
    """A finished run's folder as the runner leaves it, without checkpoints or events (what is published)."""
    folder = out / "debug" / "runs" / run.name
    folder.mkdir(parents=True)
    (folder / "args.json").write_text(json.dumps(run.main_args()))
    curves = {"val/elbo": [[3, 200.0], [7, 180.0]], "val/kl": [[3, kl / 2], [7, kl]], "val/mi": [[3, 1.0], [7, 2.0]]}
    record = {"run": run.name, "group": run.group, "seed": run.seed, "metrics": {"test/elbo": 170.0, "test/kl": kl}}
    record |= {"kl_per_dimension": [kl / 2, kl / 2], "curves": curves, "seconds": 60.0, "fit_seconds": 50.0}
    record |= {"commit": "abc1234", "cpu": "Test CPU (no native bf16)"}
    (folder / "metrics.json").write_text(json.dumps(record))


def test_partial_report_and_publishing_carry_a_study_to_another_machine(tmp_path, capsys):
    vae, skip = STUDIES["debug"].runs
    made_up_run(tmp_path / "here", vae, 3.0)
    assert run_study(["debug", "--out", str(tmp_path / "here"), "--report-only"]) == 1  # not all finished
    assert "1 of the 2 runs of debug are not finished (skipvae_seed1)" in capsys.readouterr().err
    published = tmp_path / "docs" / "debug"
    args = ["debug", "--out", str(tmp_path / "here"), "--report-only", "--partial", "--publish", str(published)]
    assert run_study(args) == 0
    assert "**Partial report**: 1 of 2 runs finished; not yet: skipvae_seed1." in (published / "results.md").read_text()
    assert (published / "runs" / "vae_seed1" / "metrics.json").exists() and (published / "curves.png").exists()
    assert not list(published.glob("runs/*/fit"))  # no checkpoints or events

    # another machine: the published run and the one run there
    there = tmp_path / "there" / "debug"
    shutil.copytree(published / "runs", there / "runs")
    made_up_run(tmp_path / "there", skip, 5.0)
    assert run_study(["debug", "--out", str(tmp_path / "there"), "--report-only"]) == 0
    table = (there / "results.md").read_text()
    assert "Partial" not in table and "| SkipVAE − VAE | kl | 1 | +2.00 |" in table
    assert "Commit: abc1234. CPU: Test CPU (no native bf16)." in table
    assert (there / "matched_likelihood.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        run_study(["debug", "--partial"])


class TestPairedStatistics:
    # Made-up rows of a results.csv: three seeds of each model, a fourth seed that only SkipVAE ran, and a
    # one-seed pair of another setting.
    ROWS = """run,group,seed,test/elbo,test/kl,test/mi,test/au
vae_seed1,VAE,1,90.0,6.0,5.0,20
vae_seed2,VAE,2,91.0,6.5,5.5,20
vae_seed3,VAE,3,92.0,7.0,6.0,20
skipvae_seed1,SkipVAE,1,88.0,7.0,6.0,20
skipvae_seed2,SkipVAE,2,88.8,7.7,4.5,20
skipvae_seed3,SkipVAE,3,90.2,8.4,6.3,20
skipvae_seed4,SkipVAE,4,70.0,1.0,1.0,3
vae_depth2_seed1,VAE depth 2,1,95.0,7.0,5.0,20
skipvae_depth2_seed1,SkipVAE depth 2,1,94.0,7.5,5.5,20
"""

    @staticmethod
    def records() -> list[dict]:
        header, *rows = [line.split(",") for line in TestPairedStatistics.ROWS.strip().splitlines()]
        return [
            {"run": row[0], "group": row[1], "seed": int(row[2]), "metrics": dict(zip(header[3:], map(float, row[3:])))}
            for row in rows
        ]

    def test_differences_intervals_and_verdicts(self):
        metrics = ["test/elbo", "test/kl", "test/mi", "test/au"]
        found = {(d.skip, d.metric): d for d in paired_differences(self.records(), metrics)}
        assert set(found) == {(skip, m) for skip in ("SkipVAE", "SkipVAE depth 2") for m in metrics}
        t = 4.302652729911275  # t(0.975) with 2 degrees of freedom
        half = t * 0.2 / 3**0.5  # the sd of the differences is 0.2 for elbo and kl
        elbo, kl, mi, au = (found["SkipVAE", m] for m in metrics)
        assert elbo.base == "VAE" and elbo.seeds == (1, 2, 3)  # seed 4 has no VAE run: left out
        assert elbo.differences == pytest.approx((-2.0, -2.2, -1.8))
        assert elbo.mean == pytest.approx(-2.0)
        assert elbo.interval == pytest.approx((-2.0 - half, -2.0 + half))
        assert elbo.verdict == "Skip lower"
        assert kl.differences == pytest.approx((1.0, 1.2, 1.4)) and kl.interval == pytest.approx(
            (1.2 - half, 1.2 + half)
        )
        assert kl.verdict == "Skip higher"
        assert mi.differences == pytest.approx((1.0, -1.0, 0.3)) and mi.verdict == "not separated"
        assert au.differences == (0.0, 0.0, 0.0) and au.interval == (0.0, 0.0) and au.verdict == "not separated"
        one = found["SkipVAE depth 2", "test/kl"]
        assert one.base == "VAE depth 2" and one.interval is None and one.verdict == "one seed: untested"

    def test_table_rows(self):
        differences = paired_differences(self.records(), ["test/kl"])
        lines = paired_table(differences).splitlines()
        assert lines[2] == (
            "| SkipVAE − VAE | kl | 1, 2, 3 | +1.00, +1.20, +1.40 | +1.20 | [+0.70, +1.70] | Skip higher |"
        )
        assert lines[3] == "| SkipVAE depth 2 − VAE depth 2 | kl | 1 | +0.50 | +0.50 | – | one seed: untested |"


class TestProbe:
    def test_separable_classes_are_found_and_noise_is_chance(self):
        generator = torch.Generator().manual_seed(0)
        labels = torch.randint(0, 4, (2000,), generator=generator)
        centres = torch.randn(4, 6, generator=generator) * 4
        features = centres[labels] + torch.randn(2000, 6, generator=generator)
        assert probe_accuracy(features[:1000], labels[:1000], features[1000:], labels[1000:]) > 0.95
        noise = torch.randn(2000, 6, generator=generator)
        assert abs(probe_accuracy(noise[:1000], labels[:1000], noise[1000:], labels[1000:]) - 0.25) < 0.06

    @pytest.mark.real_data
    def test_reference_posteriors_skip_model_is_more_informative(self):
        accuracy = {}
        for name in ("noskip", "skip"):
            data = np.load(DATA_DIR / "reference" / f"mnist-{name}-latents.npz")
            mean, labels = torch.from_numpy(data["mean"]), torch.from_numpy(data["labels"])
            accuracy[name] = probe_accuracy(mean[:5000], labels[:5000], mean[5000:], labels[5000:])
        assert 0.5 < accuracy["noskip"] < accuracy["skip"]
