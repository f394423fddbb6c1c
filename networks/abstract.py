"""Base classes that refuse an incomplete subclass when it is built, in one line naming the class and the methods
it lacks, so that a new network or part fails before anything trains rather than when a callback first calls the
missing method."""

from abc import ABCMeta

from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn


class IncompleteClassError(MisconfigurationException):
    """A network or part was built from a class that lacks a method its base class requires."""


def refuse_if_abstract(cls: type) -> None:
    """Raise `IncompleteClassError` when `cls` leaves an `@abstractmethod` of its bases undefined, naming the
    base that declares it."""
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if not missing:
        return
    declaring = [base for base in cls.__mro__ if getattr(vars(base).get(missing[0]), "__isabstractmethod__", False)][-1]
    methods = ", ".join(f"{name}()" for name in missing)
    raise IncompleteClassError(
        f"{cls.__name__} does not define {methods}, which every {declaring.__name__} must "
        f"(see {declaring.__module__.replace('.', '/')}.py)"
    )


class CompleteModule(nn.Module, metaclass=ABCMeta):
    """An `nn.Module` base whose `@abstractmethod`s are enforced when a subclass is built."""

    def __new__(cls, *args, **kwargs):
        refuse_if_abstract(cls)
        return super().__new__(cls)


class CompletePart(metaclass=ABCMeta):  # noqa: B024 (the abstract methods are its subclasses')
    """A plain base (a model's part) whose `@abstractmethod`s are enforced when a subclass is built."""

    def __new__(cls, *args, **kwargs):
        refuse_if_abstract(cls)
        return super().__new__(cls)
