"""The weight initialisations of the authors' code, which each built-in network applies to itself (its `linear_init`
or `init_range` setting) at the end of its `__init__`; the model initialises nothing.

- "he_normal": every linear layer's weight N(0, 2 / fan_in), biases PyTorch's default (the authors' image models,
  `models_img_skip.py`, on every `nn.Linear` of the model);
- "default": PyTorch's own initialisation (the authors' MLP model);
- `init_range` r > 0: every parameter U(-r, r) (the authors' text models, r = 0.1); 0 keeps PyTorch's.
"""

import math
from typing import Literal

from torch import nn

LinearInit = Literal["he_normal", "default"]


def init_linear_layers(network: nn.Module, scheme: LinearInit) -> None:
    """The weights of the linear layers of `network` as `scheme` says."""
    if scheme == "he_normal":
        for module in network.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.in_features))


def init_uniform(network: nn.Module, init_range: float) -> None:
    """Every parameter of `network` U(-init_range, init_range); `init_range` 0 keeps PyTorch's initialisation."""
    if init_range > 0:
        for parameter in network.parameters():
            nn.init.uniform_(parameter, -init_range, init_range)
