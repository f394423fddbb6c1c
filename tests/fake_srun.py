"""Stands in for SLURM's `srun` on one machine: starts SLURM_NNODES x SLURM_NTASKS_PER_NODE copies of the command
with the variables srun gives each task (rank, local rank, node, the allocation's node list and job), so that
Lightning selects its SLURMEnvironment as on a cluster. Exits with the first non-zero exit code of a task."""

import os
import subprocess
import sys

nodes, per_node = int(os.environ["SLURM_NNODES"]), int(os.environ["SLURM_NTASKS_PER_NODE"])
tasks = []
for rank in range(nodes * per_node):
    env = {
        **os.environ,
        "SLURM_NTASKS": str(nodes * per_node),
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % per_node),
        "SLURM_NODEID": str(rank // per_node),
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_STEP_ID": "0",
    }
    tasks.append(subprocess.Popen(sys.argv[1:], env=env))
codes = [task.wait() for task in tasks]
sys.exit(next((code for code in codes if code), 0))
