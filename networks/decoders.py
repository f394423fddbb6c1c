"""Generative networks p(x|z) built on one skip-decoder backbone.

Every decoder is a stack of layers numbered 0..L-1 followed by an output layer (number L). Where the latent
code enters is decided in exactly one place, `Decoder.takes_latent`: a plain VAE feeds z to layer 0 only,
a Skip-VAE (Dieng et al., 2019) feeds it to every layer and to the output layer, so that the decoder cannot
"forget" z on its way up and the posterior is harder to collapse.

Each is built as `Decoder(data, latent_dim, latent_skip, **settings)`, the form a model's `decoder` part takes (the
contract: `networks/contract.py`), and initialises itself: a new decoder subclasses `Decoder` (for images
`BernoulliImageDecoder`, for text `networks.text_decoders.TextDecoder`) and sizes its layers with `latent_width`.
"""

from abc import abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from networks.abstract import CompleteModule
from networks.contract import DataSpec
from networks.distributions import bernoulli_log_prob
from networks.initialisation import LinearInit, init_linear_layers


class Decoder(CompleteModule):
    """Base class: an autoregressive (or factorised) likelihood p(x|z) with a choice of where z enters. A subclass
    that lacks one of the `@abstractmethod`s is refused when it is built.

    `output_layer` is the number of the output layer; a decoder whose skip model leaves the output layer without z
    (the MLP, as in the paper's code) sets `latent_into_output` to False.
    """

    latent_into_output: ClassVar[bool] = True

    def __init__(self, latent_skip: bool, output_layer: int):
        super().__init__()
        self.latent_skip, self.output_layer = latent_skip, output_layer

    def takes_latent(self, layer: int) -> bool:
        """Layer 0 always conditions on z; later layers (and, where `latent_into_output`, the output layer) only
        in the skip model.

        The only place that decides where z enters: every decoder sizes and feeds its layers by asking this.
        """
        if layer == 0:
            return True
        return self.latent_skip and (layer != self.output_layer or self.latent_into_output)

    def latent_width(self, layer: int, width: int) -> int:
        """Extra input width of `layer` for z (`width`, or 0 where z does not enter)."""
        return width if self.takes_latent(layer) else 0

    @abstractmethod
    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|z) for every position of x (teacher forcing)."""

    @abstractmethod
    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats per example, shape (batch,), float32."""

    @abstractmethod
    def sample(self, z: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """Draw x ~ p(x|z) (or its most likely value per step when greedy)."""

    def outside_authors_decoder(self) -> list[nn.Parameter]:
        """The parameters that the authors' code keeps outside its decoder module (`model.dec`), which their SVI
        therefore leaves out (`hessian_products: official`): none, unless a decoder says otherwise."""
        return []

    def double_backward_context(self) -> AbstractContextManager:
        """The context a second derivative of this decoder must be taken in (SA-VAE's exact reverse pass): none for
        convolutions, linear layers and elementwise functions, whose double backward runs on the fast kernels of
        their first; a decoder built on a kernel without one (cuDNN's LSTM, fused attention) names the fallback."""
        return nullcontext()


DecoderPart = Callable[[DataSpec, int, bool], Decoder]  # a model's `decoder`: (data, latent_dim, latent_skip) -> it


class BernoulliImageDecoder(Decoder):
    """Binary images: logits of shape (batch, C, H, W), log-likelihood summed over pixels."""

    def __init__(self, data: DataSpec, latent_skip: bool, output_layer: int):
        super().__init__(latent_skip, output_layer)
        self.image_shape = list(data.image_shape(type(self).__name__))

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob(self(x, z), x)


class FactorisedImageDecoder(BernoulliImageDecoder):
    """Binary images whose pixels are independent given z: `forward(None, z)` gives every pixel's logit, so a
    sample takes one pass. An autoregressive image decoder subclasses `BernoulliImageDecoder` and samples itself."""

    @torch.no_grad()
    def sample(self, z: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        probs = torch.sigmoid(self(None, z).float())
        return (probs > 0.5).float() if greedy else torch.bernoulli(probs)


def gate(x: torch.Tensor) -> torch.Tensor:
    """Gated activation tanh(a) * sigmoid(b) over the two channel halves of x.

    The halves of a channels-last tensor are strided views; tanh and sigmoid run about twice as fast on a
    contiguous copy, which makes PixelCNN evaluation (IW-NLL) about 9 % faster and training no slower.
    """
    a, b = (half.contiguous(memory_format=torch.channels_last) for half in x.chunk(2, dim=1))
    return torch.tanh(a) * torch.sigmoid(b)


class GatedMaskedConv2d(nn.Module):
    """One gated PixelCNN layer (van den Oord et al., 2016) with a vertical and a horizontal stack.

    Causality comes from padding and cropping instead of masked weights: the vertical stack at row i sees
    rows < i only; the horizontal stack at column j sees columns < j (mask A, first layer) or <= j (mask B)
    of its own row, plus the vertical stack's view of the rows above. As in the authors' code
    (`models_img_skip.py`), the shift by one row (and, with mask A, one column) pads the convolution's output, not
    its input: the vertical stack's first row and the first layer's horizontal first column are exactly zero
    before the gate, not the convolution's bias.
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, mask_a: bool):
        super().__init__()
        if kernel_size % 2 == 0:
            raise MisconfigurationException(f"GatedPixelCNNDecoder kernel sizes must be odd, got {kernel_size}")
        self.mask_a = mask_a
        self.reach = kernel_size // 2  # rows above / columns left the kernel sees
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (self.reach + 1, kernel_size))
        self.h_conv = nn.Conv2d(in_channels, 2 * channels, (1, self.reach + 1))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.h_residual = None if mask_a else nn.Conv2d(in_channels, channels, 1)

    def vertical(self, v: torch.Tensor) -> torch.Tensor:
        """Pre-activation of the vertical stack; row i depends on rows < i of `v` only."""
        k = self.reach
        # Row i of the convolution sees rows <= i; shifting its output down by one row (a zero row on top, the
        # last row cropped by the negative padding) leaves row i with rows < i.
        return F.pad(self.v_conv(F.pad(v, (k, k, k, 0))), (0, 0, 1, -1))

    def horizontal(self, h: torch.Tensor, v_pre: torch.Tensor) -> torch.Tensor:
        """The horizontal stack's output from its input rows and the vertical pre-activation of the same rows;
        each row is computed from that row alone, so it can run on one row at a time (see `sample`)."""
        k = self.reach
        h_pre = self.h_conv(F.pad(h, (k, 0, 0, 0)))  # column j sees columns <= j
        if self.mask_a:  # shifted right by one column: columns < j
            h_pre = F.pad(h_pre, (1, -1, 0, 0))
        h_pre = h_pre + self.v_to_h(v_pre)
        h_new = self.h_out(gate(h_pre))
        if self.h_residual is not None:
            h_new = h_new + self.h_residual(h)
        return h_new


class GatedPixelCNNDecoder(BernoulliImageDecoder):
    """Gated PixelCNN over binary images; z is projected to `latent_feature_maps` full-size maps at each gated layer
    it enters and to one map at the output layer (as in the paper's code, whatever `latent_feature_maps`)."""

    def __init__(
        self,
        data: DataSpec,
        latent_dim: int,
        latent_skip: bool,
        channels: PositiveInt = 32,
        kernel_sizes: Sequence[PositiveInt] = (3,) * 8,
        latent_feature_maps: PositiveInt = 1,
        linear_init: LinearInit = "he_normal",
    ):
        """The defaults are the paper code's decoder: 8 gated layers (one per kernel size) of 32 channels, 3x3 kernels,
        one z map, He-normal linear weights (`networks/initialisation.py`)."""
        if not kernel_sizes:
            raise MisconfigurationException("GatedPixelCNNDecoder needs at least one layer: kernel_sizes is empty")
        super().__init__(data, latent_skip, output_layer=len(kernel_sizes))
        self.num_layers = len(kernel_sizes)
        self.maps = latent_feature_maps
        image_channels, height, width = self.image_shape
        latent_layers = [i for i in range(self.num_layers + 1) if self.takes_latent(i)]
        self.latent_maps = nn.ModuleDict(
            {str(i): nn.Linear(latent_dim, self.maps_of(i) * height * width) for i in latent_layers}
        )
        self.layers = nn.ModuleList()
        in_channels = image_channels
        for i, k in enumerate(kernel_sizes):
            self.layers.append(
                GatedMaskedConv2d(in_channels + self.latent_width(i, self.maps_of(i)), channels, k, mask_a=i == 0)
            )
            in_channels = channels
        self.output = nn.Conv2d(channels + self.latent_width(self.num_layers, 1), image_channels, 1)
        init_linear_layers(self, linear_init)
        # oneDNN's convolutions (CPU) and cuDNN's (tensor cores) are fastest on channels-last tensors.
        self.to(memory_format=torch.channels_last)

    def outside_authors_decoder(self) -> list[nn.Parameter]:
        """The skip model's projection of z to the output layer's map: in the authors' model it belongs to the model,
        not to `model.dec` (`models_img_skip.py` 172 and 186), so their SVI does not update it."""
        output = str(self.num_layers)
        return list(self.latent_maps[output].parameters()) if output in self.latent_maps else []

    @property
    def gated_layers(self) -> list[GatedMaskedConv2d]:
        return cast(list[GatedMaskedConv2d], list(self.layers))

    def maps_of(self, layer: int) -> int:
        """Latent maps of `layer` where z enters it: one at the output layer, `latent_feature_maps` elsewhere."""
        return 1 if layer == self.num_layers else self.maps

    def _with_latent(self, layer: int, features: torch.Tensor, z: torch.Tensor, first_row: int = 0) -> torch.Tensor:
        """`features` (rows `first_row`.. of the image) with the layer's latent maps of the same rows appended."""
        if not self.takes_latent(layer):
            return features
        _, height, width = self.image_shape
        maps = self.latent_maps[str(layer)](z).view(z.shape[0], self.maps_of(layer), height, width)
        maps = maps[:, :, first_row : first_row + features.shape[2]].to(features.dtype)
        # Convolutions are fastest on channels-last tensors; layer outputs already are, the concatenation is not.
        return torch.cat([features, maps], dim=1).contiguous(memory_format=torch.channels_last)

    def _vertical_stack(self, x: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's vertical pre-activation over the rows of `x`."""
        v, v_pres = self._with_latent(0, x, z), list[torch.Tensor]()
        for i, layer in enumerate(self.gated_layers):
            if i > 0:
                v = self._with_latent(i, gate(v_pres[-1]), z)
            v_pres.append(layer.vertical(v))
        return v_pres

    def _horizontal_stack(
        self, x: torch.Tensor, z: torch.Tensor, v_pres: list[torch.Tensor], first_row: int = 0
    ) -> torch.Tensor:
        """Logits for the rows of `x` (image rows `first_row`..) given the vertical stack of the same rows."""
        h = self._with_latent(0, x, z, first_row)
        for i, (layer, v_pre) in enumerate(zip(self.gated_layers, v_pres)):
            if i > 0:
                h = self._with_latent(i, h, z, first_row)
            h = layer.horizontal(h, v_pre)
        return self.output(self._with_latent(self.num_layers, h, z, first_row))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self._horizontal_stack(x, z, self._vertical_stack(x, z))

    @torch.no_grad()
    def sample(self, z: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """Pixel by pixel in raster order. Row r's vertical stack depends on rows < r only, so it runs once per
        row (over the rows decoded so far); each pixel then reruns the one-row horizontal stack only."""
        channels, height, width = self.image_shape
        x = torch.zeros(z.shape[0], channels, height, width, device=z.device, dtype=self.output.weight.dtype)
        for row in range(height):
            v_pres = [v_pre[:, :, row : row + 1] for v_pre in self._vertical_stack(x[:, :, : row + 1], z)]
            for col in range(width):
                logits = self._horizontal_stack(x[:, :, row : row + 1], z, v_pres, row)[:, :, 0, col].float()
                probs = torch.sigmoid(logits)
                x[:, :, row, col] = (probs > 0.5).float() if greedy else torch.bernoulli(probs)
        return x


class MLPDecoder(FactorisedImageDecoder):
    """Factorised Bernoulli decoder: z -> linear -> `num_layers` ReLU layers -> pixel logits.

    In the skip model each hidden layer also receives a linear projection of z (added, which equals a linear layer
    on the concatenation [h, z]); the output layer does not, as in the paper code's MLP model.
    """

    latent_into_output: ClassVar[bool] = False

    def __init__(
        self,
        data: DataSpec,
        latent_dim: int,
        latent_skip: bool,
        hidden: PositiveInt = 1024,
        num_layers: PositiveInt = 2,
        linear_init: LinearInit = "default",
    ):
        """The defaults are the paper code's MLP decoder: two hidden layers of 1024 units, PyTorch's initialisation."""
        super().__init__(data, latent_skip, output_layer=num_layers + 1)
        size = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.num_layers = num_layers
        self.input = nn.Linear(latent_dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_layers))
        self.output = nn.Linear(hidden, size)
        self.latent = nn.ModuleDict(
            {str(i): nn.Linear(latent_dim, hidden) for i in range(1, num_layers + 1) if self.takes_latent(i)}
        )
        init_linear_layers(self, linear_init)

    def _add_latent(self, layer: int, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return h + self.latent[str(layer)](z) if self.takes_latent(layer) else h

    def forward(self, x: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        h = self.input(z)
        for i, layer in enumerate(self.hidden, start=1):
            h = torch.relu(self._add_latent(i, layer(h), z))
        return self.output(h).view(z.shape[0], *self.image_shape)
