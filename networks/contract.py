"""The contract of a model's networks: what the model hands them, and the form a network part takes.

A model is built from an encoder q(z|x) and a decoder p(x|z), each chosen in the config by `class_path` with its own
settings (the built-in networks are config parts in `configs/parts/`):

    model:
      init_args:
        encoder: parts/residual_conv_encoder.yaml        # a part file, or inline:
        decoder:
          class_path: networks.decoders.GatedPixelCNNDecoder
          init_args: {channels: 64, kernel_sizes: [7, 3, 3, 3]}

A network is a class built as `Encoder(data, latent_dim, **settings)` (a `networks.encoders.Encoder`; the model's
argument is an `EncoderPart`) or `Decoder(data, latent_dim, latent_skip, **settings)` (a `networks.decoders.Decoder`;
a `DecoderPart`): the model supplies the leading arguments, the config the settings. The rules a network keeps:
- its settings are typed so that the config parser refuses a bad value with one line (`PositiveInt`, a `Literal`, ...),
  and default to the authors' values where it has them;
- it initialises its own weights, as one of its settings says, at the end of `__init__`; the model initialises
  nothing it did not build (`networks/initialisation.py` holds the schemes the built-in networks use);
- it reads the data's shape and, for text, the special tokens' ids and the longest document from `data`, never
  from defaults of its own.
"""

from dataclasses import dataclass
from typing import TypedDict

from lightning.fabric.utilities.exceptions import MisconfigurationException


class TextFormat(TypedDict):
    """How a text datamodule writes documents, `<bos> w_1 .. w_n <eos>` padded with `<pad>`: the ids of those special
    tokens, and `longest`, the most tokens a decoder predicts in any of its documents (the words and `<eos>`)."""

    pad: int
    bos: int
    eos: int
    longest: int


@dataclass(frozen=True)
class DataSpec:
    """What a network is told of the data, all of it given by the datamodule (linked by the CLI): the shape of one
    example, [channels, height, width] for images or [vocabulary size] for text, and for text its format."""

    dims: tuple[int, ...]
    text_format: TextFormat | None = None

    def image_shape(self, network: str) -> tuple[int, int, int]:
        """(channels, height, width); a network for images refuses other data with this error."""
        if len(self.dims) != 3 or self.text_format is not None:
            raise MisconfigurationException(f"{network} is a network for images: the data has shape {list(self.dims)}")
        channels, height, width = self.dims
        return channels, height, width

    def text(self, network: str) -> tuple[int, TextFormat]:
        """(vocabulary size, text format); a network for text refuses other data with this error."""
        if len(self.dims) != 1 or self.text_format is None:
            raise MisconfigurationException(
                f"{network} is a network for text: the data has shape {list(self.dims)} and is not text"
            )
        return self.dims[0], self.text_format
