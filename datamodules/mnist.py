"""MNIST, dynamically binarized (default) or Larochelle's statically binarized split.

Files (in `<data dir>/mnist/`):
- dynamic: the four LeCun IDX files `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`, checked against
  torchvision's MD5 list. Training set: five sixths of the training images (50,000 of 60,000), chosen by
  `torch.randperm(60000, generator=torch.Generator().manual_seed(split_seed))[:50000]`; the other sixth (10,000)
  is the validation set. Test set: the 10,000 test images.
- static: `binarized_mnist_{train,valid,test}.amat` or `.amat.gz` (50k/10k/10k, 0/1 text), checked against
  the SHA-256 of the original .amat files.
"""

import hashlib
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torchvision.datasets import MNIST
from torchvision.datasets.mnist import read_image_file, read_label_file

from datamodules.files import DataError, RemoteFile, fetch, read_gzip
from datamodules.images import BinarizedImageDataModule, InMemoryDataset

IDX_FILES = {
    name: RemoteFile(name, tuple(mirror + name for mirror in MNIST.mirrors), md5=md5) for name, md5 in MNIST.resources
}

LAROCHELLE_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"
LAROCHELLE_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
LAROCHELLE_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
LAROCHELLE_FILES = {
    split: RemoteFile(f"binarized_mnist_{split}.amat", (LAROCHELLE_URL.format(split),), sha256=digest)
    for split, digest in LAROCHELLE_SHA256.items()
}


def read_idx(path: Path, reader) -> torch.Tensor:
    """An IDX `.gz` file read by torchvision's `reader` (read_image_file or read_label_file), which takes the path
    of an uncompressed file: the content is decompressed into a temporary file first."""
    with tempfile.NamedTemporaryFile(prefix=path.stem) as handle:
        handle.write(read_gzip(path))
        handle.flush()
        try:
            return reader(handle.name)
        except (AssertionError, KeyError, TypeError, ValueError, RuntimeError) as error:
            raise DataError(f"{path} is not a valid IDX file ({error}). Delete it and download it again.") from error


def amat_path(folder: Path, split: str, download: bool) -> Path:
    """The split's `.amat` or `.amat.gz` in folder; when neither is there, the `.amat` downloaded from its URL."""
    name = f"binarized_mnist_{split}.amat"
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return fetch(folder, LAROCHELLE_FILES[split], download=download, check=False)  # read_amat checks the content


def read_amat(folder: Path, split: str, download: bool) -> np.ndarray:
    """Larochelle's binarized MNIST split as uint8 0/1, shape (n, 784), checked by the SHA-256 of its content
    (the same for the .amat and the .amat.gz)."""
    path = amat_path(folder, split, download)
    data = read_gzip(path) if path.suffix == ".gz" else path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != LAROCHELLE_SHA256[split]:
        raise DataError(
            f"{path} does not hold Larochelle's binarized MNIST '{split}' split (sha256 of its content is {digest}, "
            f"expected {LAROCHELLE_SHA256[split]}). Delete it and download it again from "
            f"{LAROCHELLE_URL.format(split)}."
        )
    # Each row is 784 digits separated by single spaces and ended by a newline: digits sit at even offsets.
    digits = np.frombuffer(data, dtype=np.uint8)[0::2] - ord("0")
    return digits.reshape(LAROCHELLE_SIZES[split], 784)


class MNISTDataModule(BinarizedImageDataModule):
    """Binarized MNIST: 50k train / 10k validation / 10k test, batches of dicts {x, index, label}."""

    dataset_name = "mnist"

    def __init__(self, binarization: Literal["dynamic", "static"] = "dynamic", **kwargs):
        """
        Args:
            binarization: "dynamic" (fresh Bernoulli draws of the grey images for every training batch,
                fixed-seed draws for validation/test) or "static" (Larochelle's fixed 0/1 split).
        """
        super().__init__(**kwargs)
        self.dynamic_training = binarization == "dynamic"

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.binarization == "dynamic":
            for remote in IDX_FILES.values():
                fetch(self.folder, remote, download=hp.download, check=hp.check_file)
        else:
            for split in LAROCHELLE_SHA256:
                amat_path(self.folder, split, hp.download)

    def load_splits(self) -> dict[str, InMemoryDataset]:
        hp = self.hparams
        if hp.binarization == "static":

            def split(name: str) -> InMemoryDataset:
                images = read_amat(self.folder, name, hp.download) * np.uint8(255)
                return InMemoryDataset(torch.from_numpy(images).view(-1, *self.image_shape))

            return {"train": split("train"), "val": split("valid"), "test": split("test")}
        paths = {
            name: fetch(self.folder, remote, download=hp.download, check=hp.check_file)
            for name, remote in IDX_FILES.items()
        }
        images = read_idx(paths["train-images-idx3-ubyte.gz"], read_image_file).unsqueeze(1)
        labels = read_idx(paths["train-labels-idx1-ubyte.gz"], read_label_file)
        test_images = read_idx(paths["t10k-images-idx3-ubyte.gz"], read_image_file).unsqueeze(1)
        test_labels = read_idx(paths["t10k-labels-idx1-ubyte.gz"], read_label_file)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(hp.split_seed))
        train_idx, val_idx = order.split([len(images) - len(images) // 6, len(images) // 6])
        return {
            "train": InMemoryDataset(images[train_idx].contiguous(), labels[train_idx]),
            **self.binarized_eval_sets(images[val_idx], labels[val_idx], test_images, test_labels),
        }
