"""A module in evaluation mode for the duration of a callback's own forward passes."""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode inside (dropout off, BatchNorm on its running statistics), in the mode it had before
    afterwards, also when the body raises: a callback that decodes or encodes mid-training must not leave the model
    in eval mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
