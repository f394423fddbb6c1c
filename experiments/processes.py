"""The processes of a study's runs: the slot each run executes in (one visible GPU, or an equal share of this
process's CPU cores, pinned, with as many threads), each `python main.py ...` as a subprocess of the project root,
and SLURM's warning signal passed on to the runs that are executing.

A run that stops for a preemption exits with `runtime.slurm.EXIT_CODE`, which is `RunPreempted` here, not a failure:
the requeued job resumes it."""

import os
import subprocess
import sys
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from runtime.slurm import EXIT_CODE as PREEMPTED

ROOT = Path(__file__).resolve().parents[1]


class RunFailed(RuntimeError):
    """A fit or test subprocess exited with an error, or the study cannot be run as asked."""


class RunPreempted(RunFailed):
    """A run's fit stopped for a SLURM preemption after saving its checkpoint; the requeued job resumes it."""


# The fit and test processes running now (several with --jobs), which a forwarded signal reaches.
RUNNING: set[subprocess.Popen] = set()
RUNNING_LOCK = threading.Lock()


@dataclass(frozen=True)
class Slot:
    """Where one run of a parallel study executes: environment variables and the CPU cores it is pinned to."""

    env: dict[str, str] = field(default_factory=dict)
    cpus: frozenset[int] | None = None

    def describe(self) -> str:
        if self.cpus:
            return f"CPU cores {','.join(map(str, sorted(self.cpus)))}"
        return f"GPU {self.env['CUDA_VISIBLE_DEVICES']}" if self.env.get("CUDA_VISIBLE_DEVICES") else "all devices"


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def make_slots(jobs: int) -> list[Slot]:
    """`jobs` slots: one GPU each where GPUs are visible, else equal shares of the CPU cores."""
    if jobs == 1:
        return [Slot()]
    if gpus := visible_gpus():
        if jobs > len(gpus):
            raise RunFailed(f"--jobs {jobs}: only {len(gpus)} GPU(s) are visible; use --jobs {len(gpus)} or fewer")
        return [Slot({"CUDA_VISIBLE_DEVICES": gpu}) for gpu in gpus[:jobs]]
    cores = sorted(os.sched_getaffinity(0))
    if jobs > len(cores):
        raise RunFailed(
            f"--jobs {jobs}: this process may use {len(cores)} CPU core(s); use --jobs {len(cores)} "
            "or fewer (parallel runs on shared cores slow each other down more than they gain)"
        )
    share = len(cores) // jobs
    return [
        Slot({"OMP_NUM_THREADS": str(share), "CUDA_VISIBLE_DEVICES": ""}, frozenset(cores[i * share : (i + 1) * share]))
        for i in range(jobs)
    ]


def run_process(command: list[str], log: Path, quiet: bool, slot: Slot = Slot()) -> None:
    """Run `python <command>` from the project root in `slot`; output to the terminal, or to `log` (without the
    progress bar) when quiet. Raises `RunPreempted` when it stopped for a preemption, `RunFailed` on an error."""
    full = [sys.executable, *command, *(["--trainer.enable_progress_bar", "false"] if quiet else [])]
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **slot.env}
    cpus = slot.cpus
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with open(log, "w") if quiet else nullcontext() as handle:
        output = {"stdout": handle, "stderr": subprocess.STDOUT} if quiet else {}
        process = subprocess.Popen(full, cwd=ROOT, env=env, preexec_fn=pin, **output)  # type: ignore[call-overload]
        with RUNNING_LOCK:
            RUNNING.add(process)
        try:
            returncode = process.wait()
        finally:
            with RUNNING_LOCK:
                RUNNING.discard(process)
    where = f"; its output is in {log}" if quiet else ""
    if returncode == PREEMPTED:
        raise RunPreempted(f"`python {' '.join(command)}` was preempted and saved its checkpoint{where}")
    if returncode != 0:
        raise RunFailed(f"`python {' '.join(command)}` exited with code {returncode}{where}")


def forward_to_runs(signum: int, frame: FrameType | None) -> None:
    """SLURM's warning before it ends the job reaches the batch script (the study runner): pass it on to the runs."""
    with RUNNING_LOCK:
        for process in RUNNING:
            process.send_signal(signum)
