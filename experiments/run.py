"""Run a named study (see experiments/studies.py) and report it.

    python -m experiments.run mnist_cpu              # train + test every run, then write the tables and plots
    python -m experiments.run mnist_cpu --dry-run    # print the main.py commands only
    python -m experiments.run --list                 # the studies
    python -m experiments.run mnist_cpu --precision bf16-mixed --out results/bf16   # another precision
    python -m experiments.run mnist_paper --jobs 4      # up to 4 runs at once, each on its own GPU (or CPU cores)
    python -m experiments.run mnist_paper --slurm-array # write a SLURM array job (one run per task) and its report job

Studies run in fp32 unless `--precision` says otherwise (where bf16-mixed is faster, and where it is emulated and
slower: docs/performance.md).

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

With `--jobs N` up to N runs go at once, each in its own slot: one visible GPU per slot where CUDA GPUs are
visible, else an equal share of this process's CPU cores (pinned, with as many threads). The table is the same
as one by one: each run is seeded and runs alone in its slot; only the wall times differ. `--run-index I` runs
the I-th run only (what each task of a SLURM array does) and `--report-only` writes the table once all are done.
The slots and the runs' processes are `experiments/processes.py`; `--slurm-array` fills in the templates in
`experiments/slurm/`.
"""

import argparse
import json
import queue
import shlex
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments.events import read_scalars
from experiments.processes import ROOT, RunFailed, RunPreempted, Slot, forward_to_runs, make_slots, run_process
from experiments.provenance import code_commit, cpu_name
from experiments.report import write_report
from experiments.studies import STUDIES, Run, Study
from runtime.slurm import EXIT_CODE as PREEMPTED
from runtime.slurm import slurm_job

# The SLURM submission of a study (`--slurm-array`): the array job of its runs, its report job and the script that
# submits both, each filled in with `str.format`.
SLURM_TEMPLATES = {
    "runs.sbatch": ROOT / "experiments" / "slurm" / "runs.sbatch.template",
    "report.sbatch": ROOT / "experiments" / "slurm" / "report.sbatch.template",
    "submit.sh": ROOT / "experiments" / "slurm" / "submit.sh.template",
}


def _logger_args(run_dir: Path, phase: str) -> list[str]:
    return [
        "--trainer.logger.init_args.save_dir",
        str(run_dir.parent),
        "--trainer.logger.init_args.name",
        run_dir.name,
        "--trainer.logger.init_args.version",
        phase,
    ]


def fit_command(run: Run, run_dir: Path, resume: bool = True) -> list[str]:
    """The fit command; with `resume`, it continues from the run's last.ckpt when one exists."""
    command = ["main.py", "fit", *run.main_args(), *_logger_args(run_dir, "fit")]
    last = run_dir / "fit" / "checkpoints" / "last.ckpt"
    if resume and last.exists():
        command += ["--ckpt_path", str(last)]
    return command


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint with the best val/elbo (the checkpoint callback keeps one), else the last one."""
    folder = run_dir / "fit" / "checkpoints"
    best = sorted(folder.glob("best-*.ckpt"))
    return best[-1] if best else folder / "last.ckpt"


def test_command(run: Run, run_dir: Path) -> list[str]:
    return [
        "main.py",
        "test",
        *run.main_args(),
        *_logger_args(run_dir, "test"),
        "--ckpt_path",
        str(best_checkpoint(run_dir)),
    ]


def read_test_metrics(run_dir: Path) -> dict[str, float]:
    return {tag: points[-1][1] for tag, points in read_scalars(run_dir / "test", "test/").items()}


def check_run_arguments(run: Run, run_dir: Path) -> None:
    """Record the run's arguments in a new run folder; refuse to reuse a folder made with other arguments."""
    path = run_dir / "args.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != run.main_args():
            raise RunFailed(
                f"{run_dir} holds a run made with other arguments ({' '.join(recorded)}; now "
                f"{' '.join(run.main_args())}). Pass another --out folder, or delete that run folder"
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run.main_args()))


def run_one(run: Run, run_dir: Path, quiet: bool, slot: Slot = Slot()) -> dict:
    """Fit (or finish fitting) and test one run; returns and stores its metrics."""
    started = time.time()
    fit_done = run_dir / "fit.done"  # holds the fit's wall time in seconds
    if not fit_done.exists():
        run_process(fit_command(run, run_dir), run_dir / "fit.log", quiet, slot)
        fit_done.write_text(f"{time.time() - started:.1f}\n")
    fit_seconds = float(fit_done.read_text())
    test_started = time.time()
    run_process(test_command(run, run_dir), run_dir / "test.log", quiet, slot)
    diagnostics_file = run_dir / "test" / "latent_diagnostics.json"
    diagnostics = json.loads(diagnostics_file.read_text()) if diagnostics_file.exists() else {}
    record = {
        "run": run.name,
        "group": run.group,
        "seed": run.seed,
        "command": "python " + " ".join(fit_command(run, run_dir, resume=False)),
        "metrics": read_test_metrics(run_dir),
        "kl_per_dimension": diagnostics.get("kl_per_dimension"),
        "curves": read_scalars(run_dir / "fit", "val/"),
        "fit_seconds": fit_seconds,
        "seconds": fit_seconds + time.time() - test_started,
        "commit": code_commit(ROOT),
        "cpu": cpu_name(),
    }
    # Written last and atomically: its presence means the run is complete.
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(run_dir / "metrics.json")
    return record


def run_study(name: str, study: Study, out: Path, quiet: bool = False, jobs: int = 1, only: int | None = None) -> None:
    """Run the study's unfinished runs (all, or only the run numbered `only`), up to `jobs` at once, then write
    the report (unless `only`). Runs already finished are reused."""
    study_dir, total, started = out / name, len(study.runs), time.time()
    slots: queue.Queue[Slot] = queue.Queue()
    for slot in make_slots(jobs):
        slots.put(slot)
    failed = threading.Event()  # after a failure, runs not yet started are not started

    def execute(number: int, run: Run) -> None:
        if failed.is_set():
            return
        run_dir, prefix, slot = study_dir / "runs" / run.name, f"[{number}/{total}] {name}/{run.name}", slots.get()
        try:
            resuming = (run_dir / "fit" / "checkpoints" / "last.ckpt").exists() and not (run_dir / "fit.done").exists()
            where = "" if jobs == 1 else f" on {slot.describe()}"
            print(
                f"{prefix}: {'resuming' if resuming else 'starting'}{where} (elapsed {_clock(time.time() - started)})",
                flush=True,
            )
            record = run_one(run, run_dir, quiet, slot)
        except RunFailed:
            failed.set()
            raise
        finally:
            slots.put(slot)
        summary = ", ".join(
            f"{k.split('/')[1]} {record['metrics'][k]:.3f}" for k in study.metrics if k in record["metrics"]
        )
        print(f"{prefix}: done in {_clock(record['seconds'])}: {summary}", flush=True)

    pending = []
    for number, run in enumerate(study.runs, 1) if only is None else [(only + 1, study.runs[only])]:
        run_dir = study_dir / "runs" / run.name
        check_run_arguments(run, run_dir)
        if (run_dir / "metrics.json").exists():
            print(
                f"[{number}/{total}] {name}/{run.name}: finished earlier, reusing {run_dir / 'metrics.json'}",
                flush=True,
            )
        else:
            pending.append((number, run))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(execute, number, run) for number, run in pending]
    errors = [error for future in futures if (error := future.exception()) is not None]
    if errors:
        raise errors[0]
    if only is None:
        report_study(name, study, out, started)


def report_study(name: str, study: Study, out: Path, started: float | None = None, partial: bool = False) -> list[dict]:
    """Write the study's tables and plots from its finished runs (in study order); every run must be finished,
    unless `partial`, where the report names the runs still missing."""
    study_dir = out / name
    missing = [run.name for run in study.runs if not (study_dir / "runs" / run.name / "metrics.json").exists()]
    if missing and (not partial or len(missing) == len(study.runs)):
        raise RunFailed(
            f"{len(missing)} of the {len(study.runs)} runs of {name} are not finished "
            f"({', '.join(missing)}); run them first"
        )
    finished = [run for run in study.runs if run.name not in missing]
    records = [json.loads((study_dir / "runs" / run.name / "metrics.json").read_text()) for run in finished]
    write_report(name, study, records, study_dir, missing)
    elapsed = f" (elapsed {_clock(time.time() - started)})" if started is not None else ""
    print(f"{name}: {len(records)} runs; results in {study_dir}/results.md{elapsed}", flush=True)
    return records


def publish(study_dir: Path, to: Path) -> None:
    """Copy a study's report (results.csv, results.md, the plots) and each finished run's `args.json` and
    `metrics.json` to `to` (e.g. docs/results/<study>/): what another machine needs to continue the study, without
    checkpoints or event files."""
    to.mkdir(parents=True, exist_ok=True)
    for path in [*study_dir.glob("results.*"), *study_dir.glob("*.png")]:
        shutil.copy2(path, to / path.name)
    for record in study_dir.glob("runs/*/metrics.json"):
        run = to / "runs" / record.parent.name
        run.mkdir(parents=True, exist_ok=True)
        for name in ("args.json", "metrics.json"):
            shutil.copy2(record.parent / name, run / name)


def slurm_array_scripts(name: str, study: Study, out: Path, precision: str | None) -> dict[str, str]:
    """The files of a SLURM submission of the study, from the templates in `experiments/slurm/`: `runs.sbatch`, an
    array job with one task per run (task I runs `--run-index I`), `report.sbatch`, which writes the table, and
    `submit.sh`, which submits the report to start once every array task has succeeded. sbatch options on the
    command line override the #SBATCH lines."""
    folder = out / name / "slurm"
    runner = shlex.join(
        [
            sys.executable,
            "-m",
            "experiments.run",
            name,
            *(["--precision", precision] if precision else []),
            "--out",
            str(out),
        ]
    )
    fields = {
        "name": name,
        "runs": len(study.runs),
        "last_task": len(study.runs) - 1,
        "folder": folder,
        "root": shlex.quote(str(ROOT)),
        "runner": runner,
        "runs_script": shlex.quote(str(folder / "runs.sbatch")),
        "report_script": shlex.quote(str(folder / "report.sbatch")),
    }
    return {file: template.read_text().format(**fields) for file, template in SLURM_TEMPLATES.items()}


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", nargs="?", choices=sorted(STUDIES), help="the study to run")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="output folder (default: results/)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands of each run, run nothing")
    parser.add_argument("--quiet", action="store_true", help="send each run's output to a log file")
    parser.add_argument("--list", action="store_true", help="list the studies")
    parser.add_argument(
        "--precision", help="trainer precision for every run, e.g. 32-true or bf16-mixed (default: 32-true)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at once, each on its own GPU or share of the CPU cores (default: 1)"
    )
    parser.add_argument(
        "--run-index",
        type=int,
        help="run only the run with this index (0-based, study order) "
        "and write no table: what one SLURM array task does",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the table and plots of a study whose runs are all finished; run nothing",
    )
    parser.add_argument(
        "--partial",
        action="store_true",
        help="with --report-only: report the runs finished so far, naming the others",
    )
    parser.add_argument(
        "--publish",
        type=Path,
        metavar="DIR",
        help="with --report-only: copy the report and each finished run's args.json and metrics.json to DIR "
        "(e.g. docs/results/<study>), from where another machine can continue the study",
    )
    parser.add_argument(
        "--slurm-array",
        action="store_true",
        help="write <out>/<study>/slurm/{runs.sbatch,"
        "report.sbatch,submit.sh} (one array task per run, then the report) and print how to submit",
    )
    args = parser.parse_args(argv)
    if (args.partial or args.publish) and not args.report_only:
        parser.error("--partial and --publish go with --report-only")
    if args.list or args.study is None:
        width = max(map(len, STUDIES))
        for name, study in STUDIES.items():
            print(f"{name:{width}s} {len(study.runs):2d} runs  {study.description}")
        return 0
    study = STUDIES[args.study]
    if args.precision:
        study = study.with_precision(args.precision)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.run_index is not None and not 0 <= args.run_index < len(study.runs):
        parser.error(f"--run-index {args.run_index}: {args.study} has runs 0 to {len(study.runs) - 1}")
    out = args.out.resolve()
    if args.dry_run:
        for run in study.runs if args.run_index is None else [study.runs[args.run_index]]:
            run_dir = out / args.study / "runs" / run.name
            print(
                f"# {run.name}\npython {' '.join(fit_command(run, run_dir))}\n"
                f"python {' '.join(test_command(run, run_dir))}"
            )
        return 0
    if args.slurm_array:
        folder = out / args.study / "slurm"
        folder.mkdir(parents=True, exist_ok=True)
        for file, text in slurm_array_scripts(args.study, study, out, args.precision).items():
            (folder / file).write_text(text)
        print(
            f"wrote {folder}/runs.sbatch ({len(study.runs)} array tasks), report.sbatch and submit.sh; submit "
            f"with: bash {folder}/submit.sh [sbatch options for the runs]"
        )
        return 0
    if slurm_job() is not None:  # `#SBATCH --signal=B:USR1@<seconds>` signals this process, not its runs
        signal.signal(signal.SIGUSR1, forward_to_runs)
    try:
        if args.report_only:
            report_study(args.study, study, out, partial=args.partial)
            if args.publish:
                publish(study_dir := out / args.study, args.publish.resolve())
                print(f"published {study_dir}'s report and finished runs to {args.publish}")
        else:
            run_study(args.study, study, out, args.quiet, args.jobs, args.run_index)
    except RunPreempted as stop:
        print(f"preempted: {stop}; the requeued job resumes it", file=sys.stderr)
        return PREEMPTED
    except RunFailed as error:
        print(f"error: {error}. Finished runs are kept: fix the cause and run the same command again.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
