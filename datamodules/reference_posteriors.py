"""The Skip-VAE authors' released MNIST test-set posteriors, converted to the `.npz` files `experiments.diagnose`
reads.

yoonkim/skip-vae published `data/mnist-noskip.pkl` and `data/mnist-skip.pkl` (at commit 80f0366, later removed):
each a pickle of `[labels, z, mean, logvar]` for the 10,000 MNIST test images, from a model without and with skip
connections. A pickle can run code when it is loaded, so a downloaded one is (1) checked against its pinned
SHA-256 before it is opened and (2) read by an unpickler that builds numpy arrays and nothing else.
"""

import io
import pickle
from pathlib import Path

import numpy as np

from datamodules.files import DataError, RemoteFile, verify_checksum

_COMMIT = "80f03665df95af3a0f6361d37efb2523a63dd8a8"
_URL = f"https://raw.githubusercontent.com/yoonkim/skip-vae/{_COMMIT}/data/mnist-{{}}.pkl"
REFERENCE_PICKLES = {
    "noskip": RemoteFile(
        "mnist-noskip.pkl",
        (_URL.format("noskip"),),
        sha256="ed30abe560645e3b91d4fc832538292c9d4c3bf7e1d4568fefd1d268f89898df",
    ),
    "skip": RemoteFile(
        "mnist-skip.pkl",
        (_URL.format("skip"),),
        sha256="ae4aefceb3203f7f9338f3b24e971666c1199de8b33958230f059661daca1ecf",
    ),
}
KEYS = ("labels", "z", "mean", "logvar")

# What a pickled numpy array needs (numpy 1 wrote `numpy.core`, numpy 2 writes `numpy._core`; pickle protocols
# below 3 store the array's bytes as a string that `_codecs.encode` turns back into bytes, protocol 5 as a buffer
# that `_frombuffer` reads).
_ALLOWED = {
    (f"numpy.{core}.{module}", name)
    for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
}
_ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles lists, tuples, numbers and numpy arrays; refuses every other class or function."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays are accepted")
        return super().find_class(module, name)


def read_arrays_pickle(data: bytes) -> list[np.ndarray]:
    """The list of numpy arrays a pickle holds (`ArraysOnlyUnpickler`); DataError for anything else."""
    try:
        value = ArraysOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DataError(f"not a pickle of numpy arrays: {error}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, np.ndarray) for item in value):
        raise DataError(f"expected a list of numpy arrays, found {type(value).__name__}")
    return list(value)


def convert(pickle_path: Path, npz_path: Path, remote: RemoteFile | None = None) -> Path:
    """Check `pickle_path` against `remote`'s checksum (when given), read its [labels, z, mean, logvar] and write
    them to `npz_path` under those keys (labels int64, the others float32)."""
    if remote is not None:
        verify_checksum(pickle_path, remote)
    try:
        arrays = read_arrays_pickle(pickle_path.read_bytes())
    except DataError as error:
        raise DataError(f"{pickle_path}: {error}") from None
    if len(arrays) != len(KEYS):
        raise DataError(f"{pickle_path}: expected {len(KEYS)} arrays ({', '.join(KEYS)}), found {len(arrays)}")
    labels, *posteriors = arrays
    if labels.ndim != 1 or any(
        a.shape != posteriors[0].shape or a.ndim != 2 or len(a) != len(labels) for a in posteriors
    ):
        raise DataError(f"{pickle_path}: shapes {[a.shape for a in arrays]} are not [N], [N, D], [N, D], [N, D]")
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    by_key: dict[str, np.ndarray] = {"labels": labels.astype(np.int64)}
    by_key.update((key, a.astype(np.float32)) for key, a in zip(KEYS[1:], posteriors))
    np.savez_compressed(npz_path, allow_pickle=False, **by_key)
    return npz_path


def npz_name(model: str) -> str:
    """The converted file's name in `<data dir>/reference/`."""
    return f"mnist-{model}-latents.npz"
