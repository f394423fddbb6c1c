"""Small data files in the real formats of the datasets, for tests that need no real data."""

from pathlib import Path

import numpy as np

# A glyph that is not symmetric under transposition or flips: an "L" (vertical bar on the left, foot at the bottom).
GLYPH = np.zeros((28, 28), dtype=np.float64)
GLYPH[4:24, 6:9] = 1.0
GLYPH[21:24, 6:20] = 1.0

WORDS = [
    "the",
    "a",
    "question",
    "answer",
    "why",
    "is",
    "sky",
    "blue",
    "how",
    "do",
    "i",
    "learn",
    "python",
    "?",
    ".",
    "_UNK",
    "because",
    "light",
    "scatters",
    "good",
]


def write_chardata(path: Path, n_train: int = 2100, n_test: int = 60, seed: int = 0) -> None:
    """A chardata.mat like Burda's: `data`/`testdata` 784 x N, one column-major image per column, in [0, 1];
    `target`/`testtarget` one-hot alphabets 50 x N. Image 0 of each split is GLYPH; the rest random grey."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)

    def images(n):
        grids = rng.random((n, 28, 28)) * 0.3
        grids[0] = GLYPH
        return grids.transpose(0, 2, 1).reshape(n, 784).T  # column-major per image, one image per column

    def one_hot(n):
        labels = rng.integers(0, 50, n)
        return np.eye(50)[labels].T

    savemat(
        str(path),
        {
            "data": images(n_train),
            "testdata": images(n_test),
            "target": one_hot(n_train),
            "testtarget": one_hot(n_test),
        },
    )


def write_documents(path: Path, n: int, seed: int, blank_every: int = 0, extra_words: tuple[str, ...] = ()) -> None:
    """n tokenized documents of 3-30 words, one per line; a blank line after every `blank_every` documents."""
    rng = np.random.default_rng(seed)
    vocabulary = WORDS + list(extra_words)
    lines = []
    for i in range(n):
        lines.append(" ".join(rng.choice(vocabulary, size=int(rng.integers(3, 31)))))
        if blank_every and (i + 1) % blank_every == 0:
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_yahoo(folder: Path, n_train: int = 200, n_valid: int = 40, n_test: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_documents(folder / "train.txt", n_train, seed=1, blank_every=50)
    write_documents(folder / "valid.txt", n_valid, seed=2)
    write_documents(folder / "test.txt", n_test, seed=3, extra_words=("zebra", "quokka"))


def make_data_dir(root: Path) -> Path:
    """A data folder with mnist/ (IDX), omniglot/chardata.mat and yahoo/{train,valid,test}.txt fixtures."""
    write_mnist(root / "mnist")
    (root / "omniglot").mkdir(parents=True, exist_ok=True)
    write_chardata(root / "omniglot" / "chardata.mat")
    write_yahoo(root / "yahoo")
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped IDX file (LeCun's MNIST format): magic 0x0000080N with N the number of dimensions (unsigned
    bytes), the dimensions as big-endian int32, then the data."""
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_mnist(folder: Path, n_train: int = 600, n_test: int = 100, seed: int = 0) -> None:
    """The four MNIST IDX files with n_train / n_test grey 28x28 digits-like images (a bright stroke whose position
    depends on the label, on a dark background with grey noise) and labels 0-9."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 4:24, 2 + 2 * label : 5 + 2 * label] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
