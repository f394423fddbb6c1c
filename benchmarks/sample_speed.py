"""Prior sampling speed of the PixelCNN decoders: the row-wise sampler against full forward passes.

`GatedPixelCNNDecoder.sample` runs the vertical stack once per row and only the one-row horizontal stack per
pixel. The reference is plain ancestral sampling: one forward pass over the whole image per pixel. Prints,
from one run, the seconds each takes for the same draws (same seed; the images are checked to be equal) and
the ratio, for the paper's decoder (8 layers, 3x3) and the large one (12 layers, kernels 9..3).

    python benchmarks/sample_speed.py [--num-images 8]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MNIST_DIMS  # noqa: E402
from networks.contract import DataSpec  # noqa: E402
from networks.decoders import GatedPixelCNNDecoder  # noqa: E402

DECODERS = {
    "paper (8 x 3x3, latent 20)": dict(latent_dim=20, kernel_sizes=[3] * 8, latent_feature_maps=1),
    "large (12, kernels 9..3, latent 32)": dict(
        latent_dim=32, kernel_sizes=[9, 9, 9, 7, 7, 7, 5, 5, 5, 3, 3, 3], latent_feature_maps=4
    ),
}


@torch.no_grad()
def full_pass_sample(decoder: GatedPixelCNNDecoder, z: torch.Tensor) -> torch.Tensor:
    """Ancestral sampling by definition: every pixel from a forward pass over the whole image."""
    channels, height, width = decoder.image_shape
    x = torch.zeros(z.shape[0], channels, height, width)
    for row in range(height):
        for col in range(width):
            x[:, :, row, col] = torch.bernoulli(torch.sigmoid(decoder(x, z)[:, :, row, col].float()))
    return x


def timed(function, *args) -> tuple[float, torch.Tensor]:
    torch.manual_seed(1)
    start = time.perf_counter()
    out = function(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=8)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.num_images} images, skip model")
    for name, settings in DECODERS.items():
        torch.manual_seed(0)
        decoder = (
            GatedPixelCNNDecoder(DataSpec(MNIST_DIMS), latent_skip=True, **settings)
            .to(memory_format=torch.channels_last)
            .eval()
        )
        z = torch.randn(args.num_images, settings["latent_dim"])
        row_wise, fast = timed(decoder.sample, z)
        full, slow = timed(full_pass_sample, decoder, z)
        same = "same images" if torch.equal(fast, slow) else f"{int((fast != slow).sum())} pixels differ"
        print(
            f"{name:38s} row-wise {row_wise:6.2f} s   full passes {full:6.2f} s   "
            f"speed-up {full / row_wise:4.1f}x   ({same})",
            flush=True,
        )


if __name__ == "__main__":
    main()
