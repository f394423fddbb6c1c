"""Omniglot as 28x28 images: Burda, Grosse and Salakhutdinov's `chardata.mat` (the IWAE paper's version).

File: `<data dir>/omniglot/chardata.mat`, a MATLAB file holding `data` (784 x 24,345 training images), `testdata`
(784 x 8,070 test images), grey values in [0, 1], and the one-hot alphabet labels `target`/`testtarget`
(50 x N). Each column is one image stored column-major (MATLAB order): image = column.reshape(28, 28).T.
Checked against git's blob id of the file in the IWAE repository.

Splits: 2,000 training images, chosen by `torch.randperm(24345, generator=torch.Generator().manual_seed(
split_seed))[:2000]`, are the validation set (as the paper's preprocessing holds out 2,000); the other 22,345
are the training set; test = the 8,070 test images.
"""

import numpy as np
import torch

from datamodules.files import DataError, RemoteFile, fetch
from datamodules.images import BinarizedImageDataModule, InMemoryDataset

CHARDATA = RemoteFile(
    "chardata.mat",
    ("https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat",),
    git_sha1="016a3536ffe5e1d38e42563a18d7a78bfaf643ec",
)
VALIDATION_SIZE = 2000


def _matrix(contents: dict, key: str, path) -> np.ndarray:
    if key not in contents:
        raise DataError(
            f"{path} has no variable '{key}' (found: {sorted(k for k in contents if not k.startswith('__'))});"
            f" it is not Burda's chardata.mat. Download it from {CHARDATA.urls[0]}."
        )
    return np.asarray(contents[key])


def read_chardata(path) -> dict[str, np.ndarray]:
    """Train/test images (n, 1, 28, 28) float32 in [0, 1], upright, and alphabet labels (n,) when present."""
    from scipy.io import loadmat

    try:
        contents = loadmat(str(path))
    except Exception as error:  # scipy raises ValueError, MatReadError, OSError... for a damaged file
        raise DataError(
            f"{path} is not a readable MATLAB file ({error}). Delete it and download it again from {CHARDATA.urls[0]}."
        ) from error
    out = {}
    for split, image_key, label_key in (("train", "data", "target"), ("test", "testdata", "testtarget")):
        images = _matrix(contents, image_key, path)
        if images.ndim != 2 or images.shape[0] != 784:
            raise DataError(
                f"{path}: '{image_key}' has shape {images.shape}, expected 784 x N (one 28x28 image "
                "per column); the file is not Burda's chardata.mat or is damaged."
            )
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise DataError(f"{path}: '{image_key}' holds values outside [0, 1]; expected grey values in [0, 1].")
        # column-major per image: element (row r, column c) of image i sits at images[c * 28 + r, i]
        out[split] = np.ascontiguousarray(images.T.reshape(-1, 28, 28).transpose(0, 2, 1), dtype=np.float32)
        if label_key in contents:
            labels = np.asarray(contents[label_key])
            if labels.shape[1] == images.shape[1]:
                out[f"{split}_labels"] = labels.argmax(0).astype(np.int64)
    return out


class OmniglotDataModule(BinarizedImageDataModule):
    """Binarized 28x28 Omniglot: 22,345 train / 2,000 validation / 8,070 test, batches {x, index, label}."""

    dataset_name = "omniglot"

    def prepare_data(self) -> None:
        fetch(self.folder, CHARDATA, download=self.hparams.download, check=self.hparams.check_file)

    def load_splits(self) -> dict[str, InMemoryDataset]:
        hp = self.hparams
        arrays = read_chardata(fetch(self.folder, CHARDATA, download=hp.download, check=hp.check_file))
        images = torch.from_numpy(arrays["train"]).unsqueeze(1)
        labels = torch.from_numpy(arrays["train_labels"]) if "train_labels" in arrays else None
        test_images = torch.from_numpy(arrays["test"]).unsqueeze(1)
        test_labels = torch.from_numpy(arrays["test_labels"]) if "test_labels" in arrays else None
        if len(images) <= VALIDATION_SIZE:
            raise DataError(
                f"{self.folder / CHARDATA.name} has only {len(images)} training images; "
                f"{VALIDATION_SIZE} are held out for validation."
            )
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(hp.split_seed))
        val_idx, train_idx = order[:VALIDATION_SIZE], order[VALIDATION_SIZE:]
        pick = lambda t, i: None if t is None else t[i]  # noqa: E731
        return {
            "train": InMemoryDataset(images[train_idx].contiguous(), pick(labels, train_idx)),
            **self.binarized_eval_sets(images[val_idx], pick(labels, val_idx), test_images, test_labels),
        }
