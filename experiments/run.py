"""Run a named study (see experiments/studies.py) and report it.

    python -m experiments.run mnist_cpu              # train + test every run, then write the tables and plots
    python -m experiments.run mnist_cpu --dry-run    # print the main.py commands only
    python -m experiments.run --list                 # the studies
    python -m experiments.run mnist_cpu --precision bf16-mixed --out results/bf16   # another precision

Studies run in fp32 unless `--precision` says otherwise. bf16-mixed is faster only on CPUs with native bfloat16
arithmetic (AVX512-BF16 or AMX) and on recent GPUs; elsewhere it is emulated and several times slower than fp32.

Each run is `python main.py fit <args>` then `python main.py test <args> --ckpt_path <best checkpoint>` in a
fresh process. Outputs, under `<out>/<study>/`:
    runs/<run>/fit/             TensorBoard events, config.yaml, checkpoints/ (last.ckpt, best-*.ckpt)
    runs/<run>/test/            TensorBoard events of the test, latent_diagnostics.json
    runs/<run>/args.json        the run's main.py arguments, checked when the study is run again
    runs/<run>/metrics.json     the run's test metrics: written last, it marks the run as finished
    results.csv, results.md     one row per run / mean ± std over seeds per group
    curves.png                  validation KL, MI, AU (and ELBO) over training, one line per run
    kl_per_dimension.png        the final models' per-dimension KL, sorted, mean over seeds per group
An interrupted study resumes where it stopped: finished runs are reused, and a run whose training was cut off
continues from its `last.ckpt`. A run folder made with other arguments (another precision, say) is never reused:
the runner stops and names it.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from experiments.report import write_report
from experiments.studies import STUDIES, Run, Study

ROOT = Path(__file__).resolve().parents[1]


class RunFailed(RuntimeError):
    """A fit or test subprocess exited with an error."""


def _logger_args(run_dir: Path, phase: str) -> list[str]:
    return ["--trainer.logger.init_args.save_dir", str(run_dir.parent), "--trainer.logger.init_args.name",
            run_dir.name, "--trainer.logger.init_args.version", phase]


def fit_command(run: Run, run_dir: Path, resume: bool = True) -> list[str]:
    """The fit command; with `resume`, it continues from the run's last.ckpt when one exists."""
    command = ["main.py", "fit", *run.main_args(), *_logger_args(run_dir, "fit")]
    last = run_dir / "fit" / "checkpoints" / "last.ckpt"
    if resume and last.exists():
        command += ["--ckpt_path", str(last)]
    return command


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint with the best val/elbo (ModelCheckpoint keeps one), else the last one."""
    folder = run_dir / "fit" / "checkpoints"
    best = sorted(folder.glob("best-*.ckpt"))
    return best[-1] if best else folder / "last.ckpt"


def test_command(run: Run, run_dir: Path) -> list[str]:
    return ["main.py", "test", *run.main_args(), *_logger_args(run_dir, "test"),
            "--ckpt_path", str(best_checkpoint(run_dir))]


def _execute(command: list[str], log: Path, quiet: bool) -> None:
    """Run `python <command>` from the project root; output to the terminal, or to `log` (without the
    progress bar) when quiet."""
    full = [sys.executable, *command, *(["--trainer.enable_progress_bar", "false"] if quiet else [])]
    log.parent.mkdir(parents=True, exist_ok=True)
    if quiet:
        with open(log, "w") as handle:
            result = subprocess.run(full, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    else:
        result = subprocess.run(full, cwd=ROOT)
    if result.returncode != 0:
        where = f"; its output is in {log}" if quiet else ""
        raise RunFailed(f"`python {' '.join(command)}` exited with code {result.returncode}{where}")


def read_test_metrics(run_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "test"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("test/")}


def check_run_arguments(run: Run, run_dir: Path) -> None:
    """Record the run's arguments in a new run folder; refuse to reuse a folder made with other arguments."""
    path = run_dir / "args.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != run.main_args():
            raise RunFailed(f"{run_dir} holds a run made with other arguments ({' '.join(recorded)}; now "
                            f"{' '.join(run.main_args())}). Pass another --out folder, or delete that run folder")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run.main_args()))


def run_one(run: Run, run_dir: Path, quiet: bool) -> dict:
    """Fit (or finish fitting) and test one run; returns and stores its metrics."""
    started = time.time()
    fit_done = run_dir / "fit.done"  # holds the fit's wall time in seconds
    if not fit_done.exists():
        _execute(fit_command(run, run_dir), run_dir / "fit.log", quiet)
        fit_done.write_text(f"{time.time() - started:.1f}\n")
    fit_seconds = float(fit_done.read_text())
    test_started = time.time()
    _execute(test_command(run, run_dir), run_dir / "test.log", quiet)
    diagnostics_file = run_dir / "test" / "latent_diagnostics.json"
    diagnostics = json.loads(diagnostics_file.read_text()) if diagnostics_file.exists() else {}
    record = {
        "run": run.name, "group": run.group, "seed": run.seed,
        "command": "python " + " ".join(fit_command(run, run_dir, resume=False)),
        "metrics": read_test_metrics(run_dir),
        "kl_per_dimension": diagnostics.get("kl_per_dimension"),
        "fit_seconds": fit_seconds,
        "seconds": fit_seconds + time.time() - test_started,
    }
    # Written last and atomically: its presence means the run is complete.
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(run_dir / "metrics.json")
    return record


def run_study(name: str, study: Study, out: Path, quiet: bool = False) -> list[dict]:
    study_dir = out / name
    records, total = [], len(study.runs)
    started = time.time()
    for number, run in enumerate(study.runs, 1):
        run_dir = study_dir / "runs" / run.name
        done = run_dir / "metrics.json"
        prefix = f"[{number}/{total}] {name}/{run.name}"
        check_run_arguments(run, run_dir)
        if done.exists():
            print(f"{prefix}: finished earlier, reusing {done}", flush=True)
            records.append(json.loads(done.read_text()))
            continue
        resuming = (run_dir / "fit" / "checkpoints" / "last.ckpt").exists() and not (run_dir / "fit.done").exists()
        print(f"{prefix}: {'resuming' if resuming else 'starting'} (elapsed {_clock(time.time() - started)})",
              flush=True)
        record = run_one(run, run_dir, quiet)
        summary = ", ".join(f"{k.split('/')[1]} {record['metrics'][k]:.3f}" for k in study.metrics
                            if k in record["metrics"])
        print(f"{prefix}: done in {_clock(record['seconds'])}: {summary}", flush=True)
        records.append(record)
    write_report(name, study, records, study_dir)
    print(f"{name}: {total} runs; results in {study_dir}/results.md (elapsed {_clock(time.time() - started)})",
          flush=True)
    return records


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", choices=sorted(STUDIES), help="the study to run")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="output folder (default: results/)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands of each run, run nothing")
    parser.add_argument("--quiet", action="store_true", help="send each run's output to a log file")
    parser.add_argument("--list", action="store_true", help="list the studies")
    parser.add_argument("--precision", help="trainer precision for every run, e.g. 32-true or bf16-mixed "
                                            "(default: 32-true)")
    args = parser.parse_args(argv)
    if args.list or args.study is None:
        for name, study in STUDIES.items():
            print(f"{name:18s} {len(study.runs):2d} runs  {study.description}")
        return 0
    study = STUDIES[args.study]
    if args.precision:
        study = study.with_precision(args.precision)
    if args.dry_run:
        for run in study.runs:
            run_dir = args.out / args.study / "runs" / run.name
            print(f"# {run.name}\npython {' '.join(fit_command(run, run_dir))}\n"
                  f"python {' '.join(test_command(run, run_dir))}")
        return 0
    try:
        run_study(args.study, study, args.out.resolve(), args.quiet)
    except RunFailed as error:
        print(f"error: {error}. Finished runs are kept: fix the cause and run the same command again.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
