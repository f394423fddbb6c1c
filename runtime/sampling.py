"""The training order of an epoch, resumable between two batches.

torch's `RandomSampler` draws a seed from the global generator when an epoch's iteration starts and shuffles with
it; under DDP Lightning gives each process a `DistributedSampler` seeded by the run's seed and the epoch. The two
samplers here give the same orders and can start an epoch part-way (with the seed it had), so that a run
checkpointed between two batches (a SLURM preemption) goes on with the batches it had not seen, in the same order,
as if it had not stopped.
"""

import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

Resume = tuple[int, int, Callable[[], None] | None]  # the epoch's seed, the items to leave out, what runs first


class ResumableOrder:
    """What both samplers share: a pending start part-way into the next epoch, taken once."""

    _resume: Resume | None = None

    def resume(self, seed: int, skip: int, before_first: Callable[[], None] | None = None) -> None:
        """The next epoch's iteration uses `seed` and leaves out its first `skip` items. `before_first` runs when
        that iteration starts, after the loader's own start: the interrupted epoch's random draws (the loader's base
        seed, this sampler's seed) came before its first batch, so the random-generator states of the checkpoint
        are put back there, not earlier."""
        self._resume = (seed, skip, before_first)

    def take_resume(self) -> tuple[int | None, int]:
        """(the seed to use or None, the items to leave out) of this epoch's start, running `before_first`."""
        if self._resume is None:
            return None, 0
        (seed, skip, before_first), self._resume = self._resume, None
        if before_first is not None:
            before_first()
        return seed, skip


class ResumableRandomSampler(ResumableOrder, Sampler[int]):
    """A random permutation of `size` items per epoch, as torch's `RandomSampler` draws it."""

    def __init__(self, size: int):
        self.size = size
        self.seed: int | None = None  # the current epoch's, once its iteration has started

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        seed, skip = self.take_resume()
        self.seed = int(torch.empty((), dtype=torch.int64).random_().item()) if seed is None else seed
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        yield from torch.randperm(self.size, generator=generator).tolist()[skip:]


class ResumableDistributedSampler(ResumableOrder, DistributedSampler):
    """Lightning's distributed training order (shuffled by the run's seed plus the epoch; this process's share),
    which can start an epoch part-way like `ResumableRandomSampler` (the epoch's seed is its own: not needed)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        # What Lightning would inject for a shuffled training loader.
        super().__init__(dataset, num_replicas, rank, shuffle=True, seed=int(os.getenv("PL_GLOBAL_SEED", 0)))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        _, skip = self.take_resume()
        return iter(indices[skip:])
