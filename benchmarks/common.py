"""Shared pieces of the benchmark scripts: the machine's matmul peak and the official MNIST models."""

import argparse
import resource
import time

import torch

from models import VAE, SkipVAE
from networks.decoders import GatedPixelCNNDecoder, MLPDecoder
from networks.encoders import MLPEncoder, ResidualConvEncoder
from runtime.run_setup import keep_freed_memory

# The MNIST networks of the experiment configs (configs/parts/): each class's defaults are the authors' settings.
NETWORKS = {
    "pixelcnn": dict(encoder=ResidualConvEncoder, decoder=GatedPixelCNNDecoder),
    "mlp": dict(encoder=MLPEncoder, decoder=MLPDecoder),
}
MNIST_DIMS = (1, 28, 28)


def build(model_class, networks: str = "pixelcnn", **overrides):
    """The official MNIST model (latent 20) of `model_class` with the "pixelcnn" or "mlp" networks, seeded."""
    torch.manual_seed(0)
    return model_class(**{**NETWORKS[networks], "data_dims": MNIST_DIMS, "latent_dim": 20, **overrides})


MODELS = {"VAE": VAE, "SkipVAE": SkipVAE}
SA_MODELS = {"SAVAE": "VAE", "SkipSAVAE": "SkipVAE"}  # the SVI part on each model, compared with the model alone


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that wall times measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU = torch.device("cpu")


def matmul_flops_per_second(
    dtype: torch.dtype, size: int = 2048, repeats: int = 10, device: torch.device = CPU
) -> float:
    """Best-of-`repeats` FLOP/s of a square matmul: the reference ceiling the model's steps are compared with."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def binary_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.13), generator=torch.Generator().manual_seed(seed))


def add_allocator_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="measure without runtime.run_setup.keep_freed_memory(), i.e. with glibc's default of returning "
        "freed memory to the operating system",
    )


def apply_allocator_option(args: argparse.Namespace) -> str:
    """Set up memory allocation as `main.py` does (unless --default-allocator); says which setting is in use."""
    if args.default_allocator:
        return "glibc default allocator settings"
    return "freed memory kept for reuse" if keep_freed_memory() else "allocator setting not available here"


def minor_page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_memory_gib() -> float:
    """Peak resident memory of this process so far, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
