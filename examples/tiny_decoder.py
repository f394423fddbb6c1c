"""A decoder added as docs/configs.md ("Adding a network") describes: one class and one experiment file, no edit of
the project. tests/test_examples.py trains and tests it through main.py."""

import math

import torch
from jsonargparse.typing import PositiveInt
from torch import nn

from networks.contract import DataSpec
from networks.decoders import FactorisedImageDecoder
from networks.initialisation import init_linear_layers


class TinyDecoder(FactorisedImageDecoder):
    """One hidden layer fed by z (layer 0), then the output layer (layer 1), which the skip model also feeds z.
    Its pixels are independent given z, so it samples in one pass with its base class's `sample`."""

    def __init__(self, data: DataSpec, latent_dim: int, latent_skip: bool, hidden: PositiveInt = 16):
        super().__init__(data, latent_skip, output_layer=1)
        self.hidden = nn.Linear(latent_dim, hidden)
        self.output = nn.Linear(hidden + self.latent_width(1, latent_dim), math.prod(self.image_shape))
        init_linear_layers(self, "he_normal")

    def forward(self, x: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(z))
        h = torch.cat([h, z], -1) if self.takes_latent(1) else h
        return self.output(h).view(len(z), *self.image_shape)
