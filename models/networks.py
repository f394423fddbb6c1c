"""Builds the encoder q(z|x) and the skip decoder p(x|z) of an architecture from plain hyper-parameters.

The arguments of `build_networks` are the hyper-parameters that shape the networks; the checkpoint identity check
(`models/identity.py`) reads them from this signature.
"""

from collections.abc import Sequence

import torch
from torch import nn

from models.decoders import GatedPixelCNNDecoder, LSTMDecoder, MLPDecoder, SkipDecoder
from models.encoders import LSTMEncoder, MLPEncoder, ResidualConvEncoder


def build_networks(
    architecture: str,
    data_dims: Sequence[int],
    latent_dim: int,
    encoder_hidden: int,
    decoder_layers: int,
    decoder_hidden: int,
    kernel_sizes: Sequence[int] | None,
    latent_feature_maps: int,
    embedding_dim: int,
    dropout: float,
    latent_skip: bool,
) -> tuple[nn.Module, SkipDecoder]:
    """(encoder, decoder) of "pixelcnn", "mlp" or "lstm"; `latent_skip` says where z enters the decoder."""
    dims = list(data_dims)
    if architecture == "lstm":
        if len(dims) != 1:
            raise ValueError(f"architecture 'lstm' needs data_dims [vocab_size], got {dims}")
        encoder = LSTMEncoder(dims[0], latent_dim, embedding_dim, encoder_hidden)
        decoder = LSTMDecoder(dims[0], latent_dim, embedding_dim, decoder_hidden, decoder_layers, dropout, latent_skip)
        return encoder, decoder
    if len(dims) != 3:
        raise ValueError(f"architecture '{architecture}' needs data_dims [C, H, W], got {dims}")
    if architecture == "mlp":
        return MLPEncoder(dims, latent_dim, encoder_hidden), MLPDecoder(
            dims, latent_dim, decoder_hidden, decoder_layers, latent_skip
        )
    if kernel_sizes is not None and len(kernel_sizes) != decoder_layers:
        raise ValueError(
            f"kernel_sizes has {len(kernel_sizes)} entries but decoder_layers is {decoder_layers}; "
            "give one kernel size per layer"
        )
    kernels = list(kernel_sizes) if kernel_sizes is not None else [3] * decoder_layers
    conv_encoder = ResidualConvEncoder(dims, latent_dim, encoder_hidden)
    pixelcnn = GatedPixelCNNDecoder(dims, latent_dim, decoder_hidden, kernels, latent_feature_maps, latent_skip)
    # oneDNN's convolutions (CPU) and cuDNN's (tensor cores) are fastest on channels-last tensors.
    return conv_encoder.to(memory_format=torch.channels_last), pixelcnn.to(memory_format=torch.channels_last)
