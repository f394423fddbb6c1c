"""What the binary-image datasets share: in-memory uint8 storage, batched indexing and binarization.

Images are stored as uint8 intensities (0..255, MNIST) or float32 in [0, 1] (Omniglot). Training batches are
binarized dynamically, a fresh Bernoulli draw of every pixel for every batch, vectorised on the batch's device
after transfer. Validation and test images are binarized once, with a fixed seed, at set-up (stored as 0/255
or 0/1), so they are identical across epochs, runs and processes.
"""

import torch
from torch.utils.data import Dataset

from datamodules.base import SkipVAEDataModule
from datamodules.files import DataError


def pixel_scale(images: torch.Tensor) -> int:
    """Value of a white pixel: 255 for uint8 storage (MNIST), 1 for float storage in [0, 1] (Omniglot)."""
    return 255 if images.dtype == torch.uint8 else 1


def to_unit_interval(images: torch.Tensor) -> torch.Tensor:
    """Stored images as a new float32 tensor in [0, 1]."""
    return images.float() / pixel_scale(images)


def binarize_fixed(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli draw per pixel from a seeded generator, in the input's storage type and scale
    (uint8 0/255 or float 0/1), so that `to_unit_interval` gives exactly 0 or 1."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty_like(images)
    for start in range(0, len(images), 10_000):  # bounded float memory
        chunk = to_unit_interval(images[start : start + 10_000])
        out[start : start + 10_000] = torch.bernoulli(chunk, generator=generator).mul_(pixel_scale(images))
    return out


class InMemoryDataset(Dataset):
    """Tensors indexed a whole batch at a time: each batch is a dict with `x`, `index` and optional `label`."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        self.x, self.labels = x, labels

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = {"x": self.x[index], "index": index}
        if self.labels is not None:
            batch["label"] = self.labels[index]
        return batch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([i]).items()}


class BinarizedImageDataModule(SkipVAEDataModule):
    """Base for MNIST and Omniglot: `load_splits` returns `InMemoryDataset`s of stored images (grey training
    images when `dynamic_training`, binarized validation and test images)."""

    example_name = "images"
    dynamic_training: bool = True
    image_shape: tuple[int, int, int] = (1, 28, 28)

    def __init__(self, binarize_seed: int = 1234, **kwargs):
        """
        Args:
            binarize_seed: seed of the one-off binarization of validation (seed) and test (seed + 1) images.
        """
        super().__init__(**kwargs)

    @property
    def data_dims(self) -> list[int]:
        """Shape of one example, linked to the model's `data_dims`."""
        return list(self.image_shape)

    def binarized_eval_sets(self, val_images, val_labels, test_images, test_labels) -> dict[str, InMemoryDataset]:
        """Validation and test sets binarized once, with seeds `binarize_seed` and `binarize_seed + 1`."""
        seed = self.hparams.binarize_seed
        return {
            "val": InMemoryDataset(binarize_fixed(val_images, seed), val_labels),
            "test": InMemoryDataset(binarize_fixed(test_images, seed + 1), test_labels),
        }

    def probe_train_data(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `limit` training images as floats in {0, 1} and their labels, for a latent probe.

        Grey training images are binarized once with seed `binarize_seed + 2`, so the probe is deterministic.
        """
        train = self.datasets["train"]
        if train.labels is None:
            raise DataError(f"{type(self).__name__} with these settings has no class labels for a probe")
        x = train.x[:limit]
        if self.dynamic_training:
            x = binarize_fixed(x, self.hparams.binarize_seed + 2)
        return to_unit_interval(x), train.labels[:limit]

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        x = to_unit_interval(batch["x"])
        trainer = getattr(self, "trainer", None)
        if self.dynamic_training and trainer is not None and trainer.training:
            x = torch.bernoulli(x)
        return {**batch, "x": x}
