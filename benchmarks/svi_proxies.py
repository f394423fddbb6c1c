"""What an SA-VAE training step costs a GPU, measured on a CPU: the aten operations it dispatches (each a kernel
launch on a GPU), the host syncs among them (`aten._local_scalar_dense`: a value read back to Python, which stalls a
GPU's queue), and its time; against the VAE step of the same run. With `--against REV` the same measurements of
the code at git revision REV (a temporary worktree), interleaved with this tree's, so that both see the same machine.

    python benchmarks/svi_proxies.py [--against REV] [--batch-size 8] [--svi-steps 5] [--repeats 5]
                                     [--timing-batch-size 50] [--timing-svi-steps 20] [--timing-rounds 2]
                                     [--timings-only]

Part 1, proxies (PixelCNN of the MNIST configs, fp32, batch 8, K = 5): for VAE and for SAVAE and SkipSAVAE in each
reverse-pass mode, one training step (loss, backward, gradient clipping, Adam) after a warm-up step, under a
dispatch counter: operations, host syncs, vector norms and dtype copies; then the median time of `--repeats` steps.
Part 2 (unless --timing-rounds 0): the exact and the official SAVAE step at batch 50, K = 20, and the VAE step, each
in a fresh process (one warm-up step, one timed step, peak resident memory of the process), rounds interleaved.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYNC_OPS = ("aten._local_scalar_dense", "aten.is_nonzero")
PROXY_CASES = (
    ("VAE", None),
    ("SkipVAE", None),
    ("SAVAE", "exact"),
    ("SAVAE", "official"),
    ("SAVAE", "finite_difference"),
    ("SkipSAVAE", "exact"),
    ("SkipSAVAE", "official"),
)
TIMING_CASES = (("VAE", None), ("SAVAE", "exact"), ("SAVAE", "official"))
SA_BASE = {"SAVAE": "VAE", "SkipSAVAE": "SkipVAE"}


def measure(name: str, mode: str | None, batch_size: int, svi_steps: int, repeats: int, count: bool) -> dict:
    """One model's training steps in this process (the code of the working directory): the dispatch counts of one
    step after a warm-up step (when `count`), the times of `repeats` further steps, and the process's peak memory."""
    sys.path.insert(0, os.getcwd())
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from benchmarks.common import SA_MODELS, binary_images, build
    from benchmarks.train_throughput import svi_train_step, train_step
    from models import VAE, SkipVAE
    from models.refinement import SVI

    torch.set_num_threads(int(os.environ.get("SVI_PROXIES_THREADS", torch.get_num_threads())))
    base = SA_MODELS.get(name, name)
    refinement = SVI(steps=svi_steps, hessian_products=mode) if mode else None
    model = build({"VAE": VAE, "SkipVAE": SkipVAE}[base], "pixelcnn", refinement=refinement)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = binary_images(batch_size)
    torch.manual_seed(1)

    def step() -> None:
        if refinement is not None:
            svi_train_step(model, optimizer, x)
        else:
            train_step(model, optimizer, x, torch.float32)

    class Dispatches(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    step()
    result: dict = {}
    if count:
        with Dispatches() as dispatches:
            step()
        ops = dispatches.ops
        result["ops"] = sum(ops.values())
        result["syncs"] = sum(ops[op] for op in SYNC_OPS)
        result["norms"] = sum(n for op, n in ops.items() if "norm" in op)
        result["copies"] = ops["aten._to_copy"]
        result["top"] = ops.most_common(8)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result["seconds"] = times
    result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def in_fresh_process(tree: Path, *args: str) -> dict:
    """`measure` run by this file in a new Python process with `tree` as its working directory and code."""
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", *args]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    output = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if output.returncode:
        raise SystemExit(f"measuring {args} in {tree} failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.splitlines()[-1])


def label(name: str, mode: str | None) -> str:
    return f"{name} {mode}" if mode else name


def proxies(trees: dict[str, Path], args: argparse.Namespace) -> None:
    print(
        f"\nPart 1: one training step (PixelCNN, fp32, batch {args.batch_size}, K = {args.svi_steps}) after a warm-up; "
        f"time: median of {args.repeats} steps, the trees' processes interleaved per case"
    )
    print(f"{'tree':8s} {'model':28s} {'ops':>7s} {'syncs':>6s} {'norms':>6s} {'copies':>7s} {'s/step':>8s}")
    results: dict[tuple[str, str], dict] = {}
    for name, mode in PROXY_CASES:
        for tree_name, tree in trees.items():
            settings = (name, mode or "-", str(args.batch_size), str(args.svi_steps), str(args.repeats), "count")
            result = results[tree_name, label(name, mode)] = in_fresh_process(tree, *settings)
            print(
                f"{tree_name:8s} {label(name, mode):28s} {result['ops']:7d} {result['syncs']:6d} {result['norms']:6d} "
                f"{result['copies']:7d} {statistics.median(result['seconds']):8.3f}",
                flush=True,
            )
    if len(trees) == 2:
        before, after = trees
        print(f"\n{after} against {before}: ops, and host syncs beyond the step of the model without SVI, same tree")
        for name, mode in PROXY_CASES[2:]:
            case, base = label(name, mode), SA_BASE[name]
            old, new = results[before, case], results[after, case]
            extra = [results[tree, case]["syncs"] - results[tree, base]["syncs"] for tree in trees]
            time_ratio = statistics.median(new["seconds"]) / statistics.median(old["seconds"])
            print(
                f"{case:28s} ops {new['ops'] / old['ops']:6.1%} of {before}'s; syncs beyond the {base}'s: "
                f"{extra[0]} -> {extra[1]}; time {time_ratio:.2f} x {before}'s"
            )


def timings(trees: dict[str, Path], args: argparse.Namespace) -> None:
    batch, k = args.timing_batch_size, args.timing_svi_steps
    print(
        f"\nPart 2: one training step (PixelCNN, fp32, batch {batch}, K = {k}) after a warm-up step, each in a fresh "
        f"process, {args.timing_rounds} rounds interleaved; peak resident memory of the process"
    )
    seconds: dict[tuple[str, str], list[float]] = {}
    peaks: dict[tuple[str, str], float] = {}
    for _ in range(args.timing_rounds):
        for name, mode in TIMING_CASES:
            for tree_name, tree in trees.items():
                result = in_fresh_process(tree, name, mode or "-", str(batch), str(k), "1", "time")
                key = (tree_name, label(name, mode))
                seconds.setdefault(key, []).extend(result["seconds"])
                peaks[key] = max(peaks.get(key, 0.0), result["peak_gib"])
                print(f"  {tree_name:8s} {label(name, mode):16s} {result['seconds'][0]:8.2f} s", flush=True)
    for tree_name in trees:
        vae = statistics.median(seconds[tree_name, "VAE"])
        for name, mode in TIMING_CASES:
            case = (tree_name, label(name, mode))
            step = statistics.median(seconds[case])
            print(
                f"{tree_name:8s} {case[1]:16s} {step:8.2f} s/step = {step / vae:5.1f} x the VAE step; "
                f"peak memory {peaks[case]:.2f} GiB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="also measure the code at this git revision, interleaved")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--svi-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timing-batch-size", type=int, default=50)
    parser.add_argument("--timing-svi-steps", type=int, default=20)
    parser.add_argument("--timing-rounds", type=int, default=2, help="0: leave part 2 out")
    parser.add_argument("--timings-only", action="store_true", help="leave part 1 out")
    parser.add_argument("--measure", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        name, mode, batch, k, repeats, what = args.measure
        result = measure(name, None if mode == "-" else mode, int(batch), int(k), int(repeats), what == "count")
        print(json.dumps(result))
        return
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu}")
    trees = {"this": ROOT}
    scratch = None
    if args.against:
        scratch = Path(tempfile.mkdtemp(prefix="svi-proxies-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(scratch), args.against], check=True)
        trees = {args.against: scratch, "this": ROOT}
    try:
        if not args.timings_only:
            proxies(trees, args)
        if args.timing_rounds:
            timings(trees, args)
    finally:
        if scratch is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(scratch)], check=False)
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
