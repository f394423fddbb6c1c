"""Cost of the latent diagnostics on the official MNIST architecture (SkipVAE).

Prints, from one run:
- importance-weighted NLL throughput (decoder evaluations per second, K samples per image, chunked) on real
  MNIST test images, its FLOP/s as a fraction of this machine's matmul FLOP/s, and the projected time of a
  K-sample pass over the whole 10k test set;
- peak resident memory of the process;
- the time of the other diagnostics (KL, AU, MI full-set and minibatch) over a 10k-example validation set,
  as a share of one training epoch (50k images at the measured training speed).

    python benchmarks/eval_throughput.py [--limit 4] [--num-samples 500] [--chunk-size 100] [--bf16]
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    add_allocator_option,
    apply_allocator_option,
    build,
    matmul_flops_per_second,
    minor_page_faults,
)
from benchmarks.train_throughput import train_step  # noqa: E402
from datamodules import MNISTDataModule  # noqa: E402
from diagnostics.evaluation import LatentDiagnostics  # noqa: E402
from models import SkipVAE  # noqa: E402
from networks.distributions import log_importance_weights, per_example_normal  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4, help="test images to evaluate")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--bf16", action="store_true", help="run the decoder under bf16 autocast")
    add_allocator_option(parser)
    args = parser.parse_args()
    allocator = apply_allocator_option(args)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    data = MNISTDataModule(download=False)
    data.setup("test")
    x = data.on_after_batch_transfer(data.datasets["test"].__getitems__(list(range(args.limit))), 0)["x"]
    model = build(SkipVAE).eval()

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        mean, logvar = model.encode(x)
        counter = FlopCounterMode(display=False)
        with counter:
            model.decoder.log_prob(x[:1].expand(10, -1, -1, -1), torch.zeros(10, 20))
        flops_per_eval = counter.get_total_flops() / 10
        noise = per_example_normal(torch.arange(args.limit), (args.num_samples, 20), seed=0)
        log_prob = model.decoder.log_prob
        log_importance_weights(log_prob, x[:1], mean[:1], logvar[:1], noise[:1, :50], args.chunk_size)  # warm-up
        faults, start = minor_page_faults(), time.perf_counter()
        log_importance_weights(log_prob, x, mean, logvar, noise, args.chunk_size)
        seconds = time.perf_counter() - start
        faults = minor_page_faults() - faults
    evals = args.limit * args.num_samples
    peak = matmul_flops_per_second(dtype)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, decoder in {'bf16' if args.bf16 else 'fp32'}, "
        f"{allocator}"
    )
    print(
        f"IW-NLL, K={args.num_samples}, chunk {args.chunk_size}: {evals / seconds:.0f} decoder evaluations/s, "
        f"{seconds / args.limit:.2f} s per image, {faults / args.limit:.0f} page faults per image"
    )
    print(
        f"  {flops_per_eval / 1e6:.0f} MFLOP per decoder evaluation -> "
        f"{evals * flops_per_eval / seconds / 1e9:.1f} GFLOP/s"
        f" = {evals * flops_per_eval / seconds / peak:.0%} of the matmul peak ({peak / 1e9:.0f} GFLOP/s)"
    )
    print(f"  projected for the 10k test set: {10_000 * seconds / args.limit / 3600:.1f} h")

    diagnostics = LatentDiagnostics()
    g = torch.Generator().manual_seed(0)
    val_mean, val_logvar = torch.randn(10_000, 20, generator=g), torch.randn(10_000, 20, generator=g) * 0.3 - 1
    start = time.perf_counter()
    for b in range(0, 10_000, 500):
        batch = {"index": torch.arange(b, b + 500)}
        diagnostics.update(None, None, {"mean": val_mean[b : b + 500], "logvar": val_logvar[b : b + 500]}, batch)
    for metric in diagnostics.metrics.values():
        metric.compute()
    diag_seconds = time.perf_counter() - start

    train_model = build(SkipVAE)
    optimizer = torch.optim.Adam(train_model.parameters())
    images = torch.bernoulli(torch.full((50, 1, 28, 28), 0.13))
    train_step(train_model, optimizer, images, torch.float32)
    start = time.perf_counter()
    for _ in range(5):
        train_step(train_model, optimizer, images, torch.float32)
    epoch_seconds = (time.perf_counter() - start) / 5 * 1000
    print(
        f"diagnostics (KL, AU, MI full + batch) on 10k validation posteriors: {diag_seconds:.1f} s = "
        f"{diag_seconds / epoch_seconds:.1%} of one fp32 training epoch ({epoch_seconds / 60:.1f} min)"
    )
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
