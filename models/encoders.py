"""Inference networks q(z|x): each maps a batch to the mean and log-variance of a diagonal Gaussian.

Each is built as `Encoder(data_dims, latent_dim, **settings)`, the form a model's `encoder` part takes
(`models/networks.py`).
"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


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


class ResidualConvEncoder(nn.Module):
    """Stages of [residual block -> 2x2 stride-2 conv] (28 -> 14 -> 7 -> 3), then linear mean and log-variance."""

    def __init__(self, image_shape: Sequence[int], latent_dim: int, channels: int = 64, stages: int = 3):
        """The defaults are the paper code's image encoder: three stages of 64 channels."""
        super().__init__()
        in_channels, height, width = image_shape
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [ResidualBlock(in_channels, channels), nn.Conv2d(channels, channels, 2, stride=2)]
            in_channels, height, width = channels, height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.mean = nn.Linear(channels * height * width, latent_dim)
        self.logvar = nn.Linear(channels * height * width, latent_dim)
        # oneDNN's convolutions (CPU) and cuDNN's (tensor cores) are fastest on channels-last tensors.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x.contiguous(memory_format=torch.channels_last)).flatten(1)
        return self.mean(h), self.logvar(h)


class MLPEncoder(nn.Module):
    """Two ReLU hidden layers on the flattened image: the encoder of the simple (MLP) model."""

    def __init__(self, image_shape: Sequence[int], latent_dim: int, hidden: int = 1024):
        super().__init__()
        size = image_shape[0] * image_shape[1] * image_shape[2]
        self.features = nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x.flatten(1))
        return self.mean(h), self.logvar(h)


class LSTMEncoder(nn.Module):
    """Reads a padded token batch (`<bos> w_1 .. w_n <eos> <pad>..`); the last non-pad LSTM state gives q(z|x)."""

    def __init__(
        self, data_dims: Sequence[int], latent_dim: int, embedding_dim: int = 512, hidden: int = 1024, pad_id: int = 0
    ):
        """`data_dims` is [vocab_size]; the defaults are the paper code's text encoder (embedding 512, LSTM 1024)."""
        super().__init__()
        (vocab_size,) = data_dims
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True)
        self.mean = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = (tokens != self.pad_id).sum(1).cpu()
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, (h_last, _) = self.lstm(packed)
        h = h_last[-1]
        return self.mean(h), self.logvar(h)
