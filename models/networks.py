"""The encoder q(z|x) and the skip decoder p(x|z) of a model: parts chosen by class_path, or the built-in networks
an `architecture` name stands for.

A network part is any class built as `Encoder(data_dims, latent_dim, **settings)` or
`Decoder(data_dims, latent_dim, latent_skip, **settings)` (a `SkipDecoder`); the config names its class and
settings, and the model supplies the leading arguments:

    model:
      init_args:
        decoder:
          class_path: models.decoders.GatedPixelCNNDecoder
          init_args: {channels: 64, kernel_sizes: [7, 3, 3, 3]}

Without a part, the `architecture` name and the flat settings (`encoder_hidden`, `decoder_layers`, ...) choose one of
the built-in networks, as the experiment configs do. The arguments of `build_networks` are the hyper-parameters that
shape the networks; the checkpoint identity check (`models/identity.py`) reads them from its signature.
"""

from collections.abc import Callable, Sequence
from functools import partial

from torch import nn

from models.decoders import GatedPixelCNNDecoder, LSTMDecoder, MLPDecoder, SkipDecoder
from models.encoders import LSTMEncoder, MLPEncoder, ResidualConvEncoder

EncoderPart = Callable[[Sequence[int], int], nn.Module]  # (data_dims, latent_dim) -> network giving (mean, logvar)
DecoderPart = Callable[[Sequence[int], int, bool], SkipDecoder]  # (data_dims, latent_dim, latent_skip) -> p(x|z)


def built_in_networks(
    architecture: str,
    data_dims: Sequence[int],
    encoder_hidden: int,
    decoder_layers: int,
    decoder_hidden: int,
    kernel_sizes: Sequence[int] | None,
    latent_feature_maps: int,
    embedding_dim: int,
    dropout: float,
) -> tuple[EncoderPart, DecoderPart]:
    """The (encoder, decoder) parts of "pixelcnn", "mlp" or "lstm" with the flat settings."""
    dims = list(data_dims)
    if architecture == "lstm":
        if len(dims) != 1:
            raise ValueError(f"architecture 'lstm' needs data_dims [vocab_size], got {dims}")
        return partial(LSTMEncoder, embedding_dim=embedding_dim, hidden=encoder_hidden), partial(
            LSTMDecoder, embedding_dim=embedding_dim, hidden=decoder_hidden, num_layers=decoder_layers, dropout=dropout
        )
    if len(dims) != 3:
        raise ValueError(f"architecture '{architecture}' needs data_dims [C, H, W], got {dims}")
    if architecture == "mlp":
        return partial(MLPEncoder, hidden=encoder_hidden), partial(
            MLPDecoder, hidden=decoder_hidden, num_layers=decoder_layers
        )
    if kernel_sizes is not None and len(kernel_sizes) != decoder_layers:
        raise ValueError(
            f"kernel_sizes has {len(kernel_sizes)} entries but decoder_layers is {decoder_layers}; "
            "give one kernel size per layer"
        )
    kernels = list(kernel_sizes) if kernel_sizes is not None else [3] * decoder_layers
    return partial(ResidualConvEncoder, channels=encoder_hidden), partial(
        GatedPixelCNNDecoder, channels=decoder_hidden, kernel_sizes=kernels, latent_feature_maps=latent_feature_maps
    )


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
    encoder: EncoderPart | None = None,
    decoder: DecoderPart | None = None,
) -> tuple[nn.Module, SkipDecoder]:
    """(encoder, decoder): the parts given, the architecture's built-in networks for those not given;
    `latent_skip` says where z enters the decoder."""
    if encoder is None or decoder is None:
        built_in = built_in_networks(
            architecture,
            data_dims,
            encoder_hidden,
            decoder_layers,
            decoder_hidden,
            kernel_sizes,
            latent_feature_maps,
            embedding_dim,
            dropout,
        )
        encoder, decoder = encoder or built_in[0], decoder or built_in[1]
    return encoder(list(data_dims), latent_dim), decoder(list(data_dims), latent_dim, latent_skip)
