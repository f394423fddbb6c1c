"""Inference networks q(z|x): each maps a batch to the mean and log-variance of a diagonal Gaussian.

Each is built as `Encoder(data, latent_dim, **settings)`, the form a model's `encoder` part takes (the contract:
`networks/contract.py`), and initialises itself.
"""

from abc import abstractmethod
from collections.abc import Callable

import torch
from jsonargparse.typing import NonNegativeFloat, PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from networks.abstract import CompleteModule
from networks.contract import DataSpec
from networks.initialisation import BatchNormInit, LinearInit, init_batchnorm_scales, init_linear_layers, init_uniform


class Encoder(CompleteModule):
    """Base class of the inference networks: a batch of examples to the (mean, logvar) of q(z|x), each of shape
    (batch, latent_dim). A subclass without `forward` is refused when it is built."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


EncoderPart = Callable[[DataSpec, int], Encoder]  # a model's `encoder`: (data, latent_dim) -> the network


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with an identity (or 1x1-projected) shortcut, as in the paper's encoder."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResidualConvEncoder(Encoder):
    """Stages of [residual block -> 2x2 stride-2 conv] (28 -> 14 -> 7 -> 3), then linear mean and log-variance."""

    def __init__(
        self,
        data: DataSpec,
        latent_dim: int,
        channels: PositiveInt = 64,
        stages: PositiveInt = 3,
        linear_init: LinearInit = "he_normal",
        batchnorm_init: BatchNormInit = "uniform",
    ):
        """The defaults are the paper code's image encoder: three stages of 64 channels, He-normal linear weights and
        BatchNorm scales U(0, 1), as the PyTorch of that code started them (`networks/initialisation.py`)."""
        super().__init__()
        in_channels, height, width = data.image_shape(type(self).__name__)
        if min(height, width) < 2**stages:
            raise MisconfigurationException(
                f"ResidualConvEncoder: {stages} stages halve {height}x{width} images to nothing; use at most "
                f"{min(height, width).bit_length() - 1}"
            )
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [ResidualBlock(in_channels, channels), nn.Conv2d(channels, channels, 2, stride=2)]
            in_channels, height, width = channels, height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.mean = nn.Linear(channels * height * width, latent_dim)
        self.logvar = nn.Linear(channels * height * width, latent_dim)
        init_linear_layers(self, linear_init)
        init_batchnorm_scales(self, batchnorm_init)
        # oneDNN's convolutions (CPU) and cuDNN's (tensor cores) are fastest on channels-last tensors.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x.contiguous(memory_format=torch.channels_last)).flatten(1)
        return self.mean(h), self.logvar(h)


class MLPEncoder(Encoder):
    """Two ReLU hidden layers on the flattened image: the encoder of the simple (MLP) model."""

    def __init__(
        self, data: DataSpec, latent_dim: int, hidden: PositiveInt = 1024, linear_init: LinearInit = "default"
    ):
        """The defaults are the paper code's MLP encoder: 1024 units, PyTorch's initialisation."""
        super().__init__()
        channels, height, width = data.image_shape(type(self).__name__)
        size = channels * height * width
        self.features = nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        init_linear_layers(self, linear_init)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x.flatten(1))
        return self.mean(h), self.logvar(h)


class LSTMEncoder(Encoder):
    """Reads a padded token batch (`<bos> w_1 .. w_n <eos> <pad>..`); the last non-pad LSTM state gives q(z|x)."""

    def __init__(
        self,
        data: DataSpec,
        latent_dim: int,
        embedding_dim: PositiveInt = 512,
        hidden: PositiveInt = 1024,
        init_range: NonNegativeFloat = 0.1,
    ):
        """The defaults are the paper code's text encoder: embedding 512, LSTM 1024, every parameter U(-0.1, 0.1)."""
        super().__init__()
        vocab_size, tokens = data.text(type(self).__name__)
        self.pad_id = tokens["pad"]
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=self.pad_id)
        self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True)
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        init_uniform(self, init_range)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = (tokens != self.pad_id).sum(1).cpu()
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, (h_last, _) = self.lstm(packed)
        h = h_last[-1]
        return self.mean(h), self.logvar(h)
