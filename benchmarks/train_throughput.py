"""Training throughput of the official MNIST architecture (VAE and SkipVAE, batch 50), fp32 and bf16-mixed, and
the cost of an SA-VAE / Skip-SA-VAE step in VAE / Skip-VAE steps.

Prints, from one run: images/second of a full training step (forward, backward, gradient clipping, Adam),
the model's FLOPs per step (counted by torch.utils.flop_counter), and the fraction of this machine's measured
matmul FLOP/s that the step reaches. Then (fp32, unless --svi-steps 0) the median time of SAVAE and SkipSAVAE
steps with K = --svi-steps as a multiple of the VAE and SkipVAE steps timed in the same run, and the peak
resident memory of each (also at K = 5, to show that it does not grow with K), with the reverse pass's
Hessian-vector products by --svi-hessian-products; and how far the finite-difference gradients of one fp32 step
are from the exact ones (relative difference of the encoder's and of the decoder's gradient).

    python benchmarks/train_throughput.py [--steps 10] [--batch-size 50] [--precision fp32] [--default-allocator]
                                          [--svi-steps 20] [--svi-repeats 3] [--svi-architecture mlp]
                                          [--svi-hessian-products exact] [--device cuda]

On `--device cuda` the peak memory is the GPU memory allocated by torch (torch.cuda.max_memory_allocated).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    MODELS,
    SA_MODELS,
    add_allocator_option,
    apply_allocator_option,
    binary_images,
    build,
    matmul_flops_per_second,
    minor_page_faults,
    peak_memory_gib,
    synchronize,
)
from models.refinement import SVI  # noqa: E402
from models.svi import ClipCounts  # noqa: E402

DEVICE = torch.device("cpu")  # --device


def train_step(model, optimizer, x, dtype):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = model(x)
        loss = (out["recon"] + out["kl"]).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()


def svi_train_step(model, optimizer, x):
    """One SA-VAE training step as Lightning runs it: surrogate backward, gradient clipping, Adam."""
    surrogate, _ = model.refinement.training_loss(model, x, beta=1.0)
    optimizer.zero_grad(set_to_none=True)
    surrogate.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()


def median_seconds(step, repeats: int) -> float:
    """Median wall time of `repeats` calls of step() after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        synchronize(DEVICE)
        start = time.perf_counter()
        step()
        synchronize(DEVICE)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def model_of(name: str, svi_steps: int, architecture: str = "pixelcnn", hessian_products: str | None = None):
    """The MNIST model `name` (fp32) with the "pixelcnn" (official) or "mlp" networks; the SA models with the SVI part
    of `svi_steps` steps."""
    if name not in SA_MODELS:
        return build(MODELS[name], architecture).to(DEVICE)
    svi = SVI(steps=svi_steps, **({"hessian_products": hessian_products} if hessian_products else {}))
    return build(MODELS[SA_MODELS[name]], architecture, refinement=svi).to(DEVICE)


def training_step_of(name: str, svi_steps: int, x, architecture: str = "pixelcnn", hessian_products: str | None = None):
    """A function that runs one training step of `model_of(...)`."""
    model = model_of(name, svi_steps, architecture, hessian_products)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if name in SA_MODELS:
        return lambda: svi_train_step(model, optimizer, x)
    return lambda: train_step(model, optimizer, x, torch.float32)


def peak_memory_of(
    name: str, svi_steps: int, batch_size: int, architecture: str, hessian_products: str | None
) -> float:
    """Peak memory (GiB; resident, or GPU memory on CUDA) of a fresh process that runs two training steps of `name`."""
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--peak-memory-of",
            name,
            "--svi-steps",
            str(svi_steps),
            "--batch-size",
            str(batch_size),
            "--svi-architecture",
            architecture,
            *(["--svi-hessian-products", hessian_products] if hessian_products else []),
            "--device",
            str(DEVICE),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.split()[-1])


def sa_gradients(
    name: str, steps: int, x, architecture: str, hessian_products: str, clip_counts: ClipCounts | None = None
) -> dict[str, torch.Tensor]:
    """The encoder's and the decoder's gradient (flattened) of one SA-VAE step, on seeded random streams; the
    reverse pass's clips are counted into `clip_counts` when given."""
    model = model_of(name, steps, architecture, hessian_products)
    model.refinement.svi.clip_counts = clip_counts
    torch.manual_seed(1)
    surrogate, _ = model.refinement.training_loss(model, x, beta=1.0)
    surrogate.backward()
    return {
        part: torch.cat([p.grad.flatten() for p in getattr(model, part).parameters() if p.grad is not None])
        for part in ("encoder", "decoder")
    }


def compare_svi_steps(x, steps: int, repeats: int, architecture: str, hessian_products: str | None) -> None:
    """SA-VAE steps as multiples of the matching VAE step timed in this process (unless `repeats` is 0); peak
    memory per fresh process; finite-difference and official against exact gradients."""
    if repeats > 0:
        time_svi_steps(x, steps, repeats, architecture, hessian_products)
    compare_svi_gradients(x, steps, architecture)


def time_svi_steps(x, steps: int, repeats: int, architecture: str, hessian_products: str | None) -> None:
    resolved = hessian_products or model_of("SAVAE", 1, architecture).refinement.svi.name
    print(
        f"\nSA-VAE steps ({architecture}, fp32, batch {len(x)}, {resolved} Hessian-vector products): "
        f"median of {repeats} after a warm-up; peak {'GPU' if DEVICE.type == 'cuda' else 'resident'} memory of a "
        "process running two steps"
    )
    for name, base in SA_MODELS.items():
        base_seconds = median_seconds(training_step_of(base, 0, x, architecture), max(repeats, 5))
        base_peak = peak_memory_of(base, 0, len(x), architecture, hessian_products)
        for k in sorted({5, steps}):
            seconds = median_seconds(training_step_of(name, k, x, architecture, hessian_products), repeats)
            peak = peak_memory_of(name, k, len(x), architecture, hessian_products)
            print(
                f"{name:9s} K={k:<3d} {seconds:6.3f} s/step = {seconds / base_seconds:5.1f} x the {base} step "
                f"({base_seconds:.3f} s); peak memory {peak:.2f} GiB ({base}: {base_peak:.2f} GiB)"
            )


def compare_svi_gradients(x, steps: int, architecture: str) -> None:
    """The finite-difference and official gradients of one step against the exact ones, and how often each clip of
    the official reverse pass was active."""
    print(
        f"\nfinite-difference and official vs exact gradients of one step ({architecture}, K={steps}, fp32, a fresh "
        "model): |other - exact| / |exact| and cosine"
    )
    for name in SA_MODELS:
        exact = sa_gradients(name, steps, x, architecture, "exact")
        for mode in ("finite_difference", "official"):
            clip_counts = ClipCounts()
            other = sa_gradients(name, steps, x, architecture, mode, clip_counts)
            counts = clip_counts.read()
            errors = ", ".join(
                f"{part} {float((other[part] - exact[part]).norm() / exact[part].norm()):.2e} "
                f"(cos {float(torch.nn.functional.cosine_similarity(other[part], exact[part], dim=0)):.3f})"
                for part in exact
            )
            active = "".join(
                f"; {clip} clip active in {fired} of {evaluated} reverse steps"
                for clip, (fired, evaluated) in counts.items()
            )
            print(f"{name:9s} {mode:17s} {errors}{active}")


def flops_per_step(model, x) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
        (out["recon"] + out["kl"]).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16-mixed", "both"],
        default="both",
        help="bf16-mixed is emulated, and very slow, on CPUs without AVX512-BF16/AMX "
        "(its matmul peak alone can take minutes to measure there)",
    )
    parser.add_argument("--svi-steps", type=int, default=20, help="K of the SA-VAE comparison (0: skip it)")
    parser.add_argument(
        "--svi-repeats", type=int, default=3, help="timed SA-VAE steps per model (0: compare the gradients only)"
    )
    parser.add_argument(
        "--svi-architecture",
        choices=["pixelcnn", "mlp"],
        default="pixelcnn",
        help="networks of the SA-VAE comparison: the official PixelCNN or the MLP of configs/parts/mlp_*.yaml",
    )
    parser.add_argument(
        "--svi-hessian-products",
        choices=["exact", "finite_difference", "official"],
        help="how the timed SA-VAE steps compute the reverse pass (default: the model's, exact)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the benchmark, e.g. cuda (default: cpu)")
    parser.add_argument("--peak-memory-of", help=argparse.SUPPRESS)  # internal: the child process of peak_memory_of
    add_allocator_option(parser)
    args = parser.parse_args()
    allocator = apply_allocator_option(args)
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.peak_memory_of:
        step = training_step_of(
            args.peak_memory_of,
            args.svi_steps,
            binary_images(args.batch_size).to(DEVICE),
            args.svi_architecture,
            args.svi_hessian_products,
        )
        step()
        step()
        print(torch.cuda.max_memory_allocated(DEVICE) / 2**30 if DEVICE.type == "cuda" else peak_memory_gib())
        return
    torch.manual_seed(0)
    precisions = {"fp32": torch.float32, "bf16-mixed": torch.bfloat16}
    precisions = {name: dtype for name, dtype in precisions.items() if args.precision in (name, "both")}
    peaks = {name: matmul_flops_per_second(dtype, device=DEVICE) for name, dtype in precisions.items()}
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {allocator}")
    print("matmul peak: " + ", ".join(f"{name} {peak / 1e9:.1f} GFLOP/s" for name, peak in peaks.items()))
    x = binary_images(args.batch_size).to(DEVICE)
    print(
        f"{'model':8s} {'precision':10s} {'images/s':>9s} {'GFLOP/step':>11s} {'GFLOP/s':>8s} "
        f"{'of matmul peak':>15s} {'page faults/step':>17s}"
    )
    for name, model_class in MODELS.items():
        model = build(model_class).to(DEVICE)
        flops = flops_per_step(model, x)
        for precision, dtype in precisions.items():
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            for _ in range(3):
                train_step(model, optimizer, x, dtype)
            synchronize(DEVICE)
            faults, start = minor_page_faults(), time.perf_counter()
            for _ in range(args.steps):
                train_step(model, optimizer, x, dtype)
            synchronize(DEVICE)
            seconds = (time.perf_counter() - start) / args.steps
            faults = (minor_page_faults() - faults) / args.steps
            achieved = flops / seconds
            print(
                f"{name:8s} {precision:10s} {args.batch_size / seconds:9.1f} {flops / 1e9:11.2f} "
                f"{achieved / 1e9:8.1f} {achieved / peaks[precision]:14.0%} {faults:17.0f}"
            )
    if args.svi_steps:
        compare_svi_steps(x, args.svi_steps, args.svi_repeats, args.svi_architecture, args.svi_hessian_products)


if __name__ == "__main__":
    main()
