"""MNIST, dynamically binarized (default) or Larochelle's statically binarized split.

Files (in `<data dir>/mnist/`):
- dynamic: the four LeCun IDX files `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`, checked against
  torchvision's MD5 list. Training set: 50,000 of the 60,000 training images, chosen by
  `torch.randperm(60000, generator=torch.Generator().manual_seed(split_seed))[:50000]`; the other 10,000 are the
  validation set. Test set: the 10,000 test images.
- static: `binarized_mnist_{train,valid,test}.amat` or `.amat.gz` (50k/10k/10k, 0/1 text), checked against
  the SHA-256 of the original .amat files.
"""

import hashlib
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torchvision.datasets import MNIST

from datamodules.files import DataError, RemoteFile, dataset_dir, fetch, read_gzip, read_maybe_gzip
from datamodules.images import BinarizedImageDataModule, InMemoryDataset, binarize_fixed

IDX_FILES = {name: RemoteFile(name, tuple(mirror + name for mirror in MNIST.mirrors), md5=md5)
             for name, md5 in MNIST.resources}

LAROCHELLE_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"
LAROCHELLE_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
LAROCHELLE_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}


def read_idx(path: Path) -> np.ndarray:
    """An IDX (.gz) file as a uint8 array; checks the magic number and that the size matches the header."""
    data = read_gzip(path)
    if len(data) < 8 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes. Delete it and download it again.")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}i", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {body.size} values but its header announces {dims}; the file is damaged.")
    return body.reshape(dims)


def read_amat(folder: Path, split: str, download: bool) -> np.ndarray:
    """Larochelle's binarized MNIST split as uint8 0/1, shape (n, 784)."""
    name = f"binarized_mnist_{split}.amat"
    found = read_maybe_gzip(folder, name)
    if found is None and download:
        try:
            fetch(folder, RemoteFile(name, (LAROCHELLE_URL.format(split),), sha256=LAROCHELLE_SHA256[split]))
        except DataError:
            pass
        found = read_maybe_gzip(folder, name)
    if found is None:
        raise DataError(
            f"missing data file {folder / name} (or {name}.gz). Download it from {LAROCHELLE_URL.format(split)} "
            f"and put it in {folder}/."
        )
    path, data = found
    digest = hashlib.sha256(data).hexdigest()
    if digest != LAROCHELLE_SHA256[split]:
        raise DataError(
            f"{path} does not hold Larochelle's binarized MNIST '{split}' split (sha256 of its content is {digest}, "
            f"expected {LAROCHELLE_SHA256[split]}). Delete it and download it again from {LAROCHELLE_URL.format(split)}."
        )
    # Each row is 784 digits separated by single spaces and ended by a newline: digits sit at even offsets.
    digits = np.frombuffer(data, dtype=np.uint8)[0::2] - ord("0")
    return digits.reshape(LAROCHELLE_SIZES[split], 784)


class MNISTDataModule(BinarizedImageDataModule):
    """Binarized MNIST: 50k train / 10k validation / 10k test, batches of dicts {x, index, label}."""

    def __init__(
        self,
        data_dir: str | None = None,
        binarization: Literal["dynamic", "static"] = "dynamic",
        batch_size: int = 50,
        eval_batch_size: int = 500,
        split_seed: int = 0,
        binarize_seed: int = 1234,
        download: bool = True,
        num_workers: int = 0,
    ):
        """
        Args:
            data_dir: folder holding `mnist/`; default $SKIPVAE_DATA_DIR, then ./data.
            binarization: "dynamic" (fresh Bernoulli draws of the grey images for every training batch,
                fixed-seed draws for validation/test) or "static" (Larochelle's fixed 0/1 split).
            batch_size: training batch size.
            eval_batch_size: validation/test batch size (does not change any metric).
            split_seed: seed of the permutation that picks the 10k validation images (dynamic only).
            binarize_seed: seed of the one-off binarization of validation (seed) and test (seed + 1) images.
            download: try the official URLs when a file is missing.
            num_workers: DataLoader workers (0 is fastest: batches are sliced from in-memory tensors).
        """
        super().__init__()
        self.save_hyperparameters()
        self.dynamic_training = binarization == "dynamic"
        self.folder = dataset_dir(data_dir, "mnist")

    def prepare_data(self) -> None:
        if self.hparams.binarization == "dynamic":
            for remote in IDX_FILES.values():
                fetch(self.folder, remote, download=self.hparams.download)
        else:
            for split in LAROCHELLE_SHA256:
                read_amat(self.folder, split, self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "test_set", None) is not None:
            return
        hp = self.hparams
        if hp.binarization == "static":
            to_tensor = lambda a: torch.from_numpy(a * np.uint8(255)).view(-1, *self.image_shape)  # noqa: E731
            self.train_set = InMemoryDataset(to_tensor(read_amat(self.folder, "train", hp.download)))
            self.val_set = InMemoryDataset(to_tensor(read_amat(self.folder, "valid", hp.download)))
            self.test_set = InMemoryDataset(to_tensor(read_amat(self.folder, "test", hp.download)))
            return
        paths = {name: fetch(self.folder, remote, download=hp.download) for name, remote in IDX_FILES.items()}
        images = torch.from_numpy(read_idx(paths["train-images-idx3-ubyte.gz"]).copy()).unsqueeze(1)
        labels = torch.from_numpy(read_idx(paths["train-labels-idx1-ubyte.gz"]).astype(np.int64))
        test_images = torch.from_numpy(read_idx(paths["t10k-images-idx3-ubyte.gz"]).copy()).unsqueeze(1)
        test_labels = torch.from_numpy(read_idx(paths["t10k-labels-idx1-ubyte.gz"]).astype(np.int64))
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(hp.split_seed))
        train_idx, val_idx = order[:50_000], order[50_000:]
        self.train_set = InMemoryDataset(images[train_idx].contiguous(), labels[train_idx])
        self.val_set = InMemoryDataset(binarize_fixed(images[val_idx], hp.binarize_seed), labels[val_idx])
        self.test_set = InMemoryDataset(binarize_fixed(test_images, hp.binarize_seed + 1), test_labels)
