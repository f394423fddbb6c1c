"""Training throughput of the official MNIST architecture (VAE and SkipVAE, batch 50), fp32 and bf16-mixed.

Prints, from one run: images/second of a full training step (forward, backward, gradient clipping, Adam),
the model's FLOPs per step (counted by torch.utils.flop_counter), and the fraction of this machine's measured
matmul FLOP/s that the step reaches.

    python benchmarks/train_throughput.py [--steps 10] [--batch-size 50] [--precision fp32] [--default-allocator]
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    MODELS, add_allocator_option, apply_allocator_option, binary_images, build, matmul_flops_per_second,
    minor_page_faults,
)


def train_step(model, optimizer, x, dtype):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = model(x)
        loss = (out["recon"] + out["kl"]).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()


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
    parser.add_argument("--precision", choices=["fp32", "bf16-mixed", "both"], default="both",
                        help="bf16-mixed is emulated, and very slow, on CPUs without AVX512-BF16/AMX "
                             "(its matmul peak alone can take minutes to measure there)")
    add_allocator_option(parser)
    args = parser.parse_args()
    allocator = apply_allocator_option(args)
    torch.manual_seed(0)
    precisions = {"fp32": torch.float32, "bf16-mixed": torch.bfloat16}
    precisions = {name: dtype for name, dtype in precisions.items() if args.precision in (name, "both")}
    peaks = {name: matmul_flops_per_second(dtype) for name, dtype in precisions.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {allocator}")
    print("matmul peak: " + ", ".join(f"{name} {peak / 1e9:.1f} GFLOP/s" for name, peak in peaks.items()))
    x = binary_images(args.batch_size)
    print(f"{'model':8s} {'precision':10s} {'images/s':>9s} {'GFLOP/step':>11s} {'GFLOP/s':>8s} {'of matmul peak':>15s} {'page faults/step':>17s}")
    for name, model_class in MODELS.items():
        model = build(model_class)
        flops = flops_per_step(model, x)
        for precision, dtype in precisions.items():
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            for _ in range(3):
                train_step(model, optimizer, x, dtype)
            faults, start = minor_page_faults(), time.perf_counter()
            for _ in range(args.steps):
                train_step(model, optimizer, x, dtype)
            seconds = (time.perf_counter() - start) / args.steps
            faults = (minor_page_faults() - faults) / args.steps
            achieved = flops / seconds
            print(f"{name:8s} {precision:10s} {args.batch_size / seconds:9.1f} {flops / 1e9:11.2f} "
                  f"{achieved / 1e9:8.1f} {achieved / peaks[precision]:14.0%} {faults:17.0f}")


if __name__ == "__main__":
    main()
