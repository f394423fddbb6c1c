"""What every datamodule shares: the common arguments, set-up done once, and the loaders.

Subclasses name their data folder (`dataset_name`), build their three splits in `load_splits` and say what the model's
networks are told of the data (`data_dims`, `text_format`; the CLI links them to the model). Evaluation
loaders never repeat an example: under DDP each process gets a disjoint shard (Lightning's default distributed
sampler pads shards with repeated examples so all processes see the same number of batches, which would count
some examples twice in KL, MI, AU and NLL).
"""

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import lightning as L
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.files import check_batch_size, dataset_dir
from runtime.sampling import ResumableDistributedSampler, ResumableRandomSampler, Resume


def keep_batch(batch):
    """collate_fn for datasets that already return whole batches."""
    return batch


class SkipVAEDataModule(L.LightningDataModule):
    """Base of the project's datamodules: batches are dicts with `x` and `index` (and `label` where the data has
    classes)."""

    dataset_name: ClassVar[str]  # the subfolder of the data folder
    example_name: ClassVar[str] = "examples"  # what one training example is called in messages
    prebatched: ClassVar[bool] = False  # whether an item of the datasets is already a whole batch
    hparams: AttributeDict  # the saved init arguments, read as attributes

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: PositiveInt = 50,
        eval_batch_size: PositiveInt = 500,
        split_seed: int = 0,
        download: bool = True,
        check_file: bool = True,
        num_workers: NonNegativeInt = 0,
        predict_split: Literal["train", "val", "test"] = "test",
    ):
        """
        Args:
            data_dir: folder holding the dataset's subfolder; default $SKIPVAE_DATA_DIR, then ./data.
            batch_size: training batch size.
            eval_batch_size: validation/test batch size: changes only the minibatch MI (`mi_batch`, bounded by
                log of it) and an SA model's SVI (each step moves an example by lr / batch size).
            split_seed: seed of the random choice of the validation examples.
            download: try the official URLs when a file is missing.
            check_file: compare the files with their published checksums (turn off for a re-saved copy).
            num_workers: DataLoader workers (0 is fastest for the in-memory datasets).
            predict_split: the split whose posteriors `main.py predict` writes (in evaluation batches, in order).
        """
        super().__init__()
        self.save_hyperparameters()
        self.folder = dataset_dir(data_dir, self.dataset_name)
        self.datasets: dict[str, Any] = {}  # the splits, of the subclass's dataset type
        self.train_sampler: ResumableRandomSampler | ResumableDistributedSampler | None = None  # the training order
        self._resume: Resume | None = None

    def load_splits(self) -> Mapping[str, Dataset]:
        """The "train", "val" and "test" datasets, read from the data folder."""
        raise NotImplementedError

    @property
    def data_dims(self) -> list[int]:
        """The shape of one example, [channels, height, width] for images or [vocabulary size] for text."""
        raise NotImplementedError

    @property
    def text_format(self) -> dict[str, int] | None:
        """For text, the ids of the `pad`, `bos` and `eos` tokens and `longest`, the most tokens a decoder predicts in
        any document (its words and `<eos>`); None for other data."""
        return None

    def num_training_examples(self) -> int:
        return len(self.datasets["train"])

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.datasets = dict(self.load_splits())

    def check_ready(self, stage: str) -> None:
        """Fetch and read the data before a run of `stage` writes anything, and refuse what it cannot use (a missing
        or corrupt file, a batch larger than the training set). Lightning's own `prepare_data` and `setup` then find
        the work done."""
        self.prepare_data()
        self.setup(stage)
        if stage == "fit":
            check_batch_size(self.hparams.batch_size, self.num_training_examples(), self.example_name)

    def _loader(self, split: str, training: bool = False) -> DataLoader:
        """Training: shuffled batches of `batch_size`, in an order a fit resumed between two batches continues
        (`runtime/sampling.py`). Evaluation: batches of `eval_batch_size` in order, under DDP disjoint shards that
        never repeat an example."""
        dataset, trainer = self.datasets[split], getattr(self, "trainer", None)
        sampler: Sampler | None = None
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if training:
            self.train_sampler = (
                ResumableDistributedSampler(dataset, world_size, rank)
                if world_size > 1
                else ResumableRandomSampler(len(dataset))
            )
            if self._resume is not None:
                self.train_sampler.resume(*self._resume)
                self._resume = None
            sampler = self.train_sampler
        elif world_size > 1:
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        size = self.hparams.batch_size if training else self.hparams.eval_batch_size
        return DataLoader(
            dataset,
            batch_size=None if self.prebatched else size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            collate_fn=keep_batch,
        )

    def train_dataloader(self) -> DataLoader:
        check_batch_size(self.hparams.batch_size, self.num_training_examples(), self.example_name)
        return self._loader("train", training=True)

    def resume_epoch(self, seed: int, batches: int, before_first: Callable[[], None] | None = None) -> None:
        """The next training loader starts its epoch after `batches` batches of the order drawn with `seed` (see
        `ResumableRandomSampler.resume`): a fit resumed from a checkpoint written between two batches."""
        self._resume = (seed, batches * (1 if self.prebatched else self.hparams.batch_size), before_first)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split)
