"""The weight initialisations of the authors' code, which each built-in network applies to itself (its `linear_init`
or `init_range` setting) at the end of its `__init__`; the model initialises nothing.

- "he_normal": every linear layer's weight N(0, 2 / fan_in), biases PyTorch's default (the authors' image models,
  `models_img_skip.py`, on every `nn.Linear` of the model);
- "default": PyTorch's own initialisation (the authors' MLP model);
- `init_range` r > 0: every parameter U(-r, r) (the authors' text models, r = 0.1); 0 keeps PyTorch's;
- BatchNorm scales "uniform" in [0, 1], PyTorch's default until version 1.0 (pytorch/pytorch#12325), which the
  authors' image encoder ran with, or "one", PyTorch's default since.
"""

import math
from typing import Literal

from torch import nn

LinearInit = Literal["he_normal", "default"]
BatchNormInit = Literal["uniform", "one"]


def init_linear_layers(network: nn.Module, scheme: LinearInit) -> None:
    """The weights of the linear layers of `network` as `scheme` says."""
    if scheme == "he_normal":
        for module in network.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.in_features))


def init_batchnorm_scales(network: nn.Module, scheme: BatchNormInit) -> None:
    """The scales (gamma) of the BatchNorm layers of `network`: U(0, 1) or 1; their shifts stay 0."""
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            if scheme == "uniform":
                nn.init.uniform_(module.weight, 0.0, 1.0)
            else:
                nn.init.ones_(module.weight)


def init_uniform(network: nn.Module, init_range: float) -> None:
    """Every parameter of `network` U(-init_range, init_range); `init_range` 0 keeps PyTorch's initialisation."""
    if init_range > 0:
        for parameter in network.parameters():
            nn.init.uniform_(parameter, -init_range, init_range)
