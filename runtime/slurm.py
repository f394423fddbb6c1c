"""What a preempted run and the programs around it share, without importing Lightning: the SLURM job to requeue
and the exit code of a run that stopped for a preemption (`runtime/preemption.py`, `main.py`, the study runner)."""

import os
import re

# `main.py`'s exit code after a preemption: not a success (the study runner must not test the run yet), not an error.
EXIT_CODE = 3


def slurm_job() -> str | None:
    """The id `scontrol requeue` takes for this job: `<array job>_<task>` for an array task; None outside SLURM."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None
