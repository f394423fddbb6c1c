"""Where data files live, how they are fetched and how they are checked.

The data folder is `--data.init_args.data_dir`, else the environment variable SKIPVAE_DATA_DIR, else ./data;
each dataset has its own subfolder (mnist/, omniglot/, yahoo/). A missing file is downloaded from its
official URL when a network is reachable; otherwise, and for a file that fails its checksum, a `DataError`
says which file, where it belongs and where to get it.
"""

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "SKIPVAE_DATA_DIR"


class DataError(RuntimeError):
    """A data file is missing, corrupt or malformed; the message says how to fix it."""


def check_batch_size(batch_size: int, examples: int, what: str = "examples") -> None:
    """A training batch larger than the training set is a configuration mistake (one partial batch per epoch)."""
    if batch_size > examples:
        raise DataError(f"batch_size {batch_size} is larger than the training set ({examples} {what}); "
                        f"use --data.init_args.batch_size {examples} or less.")


def dataset_dir(data_dir: str | None, dataset: str) -> Path:
    """`<data_dir>/<dataset>`, with data_dir from the argument, then $SKIPVAE_DATA_DIR, then ./data."""
    root = data_dir or os.environ.get(DATA_DIR_ENV) or "data"
    return Path(root).expanduser() / dataset


@dataclass(frozen=True)
class RemoteFile:
    """A file of a public dataset: its name in the dataset folder, where to download it, and its checksum."""

    name: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None
    git_sha1: str | None = None  # git's blob id: sha1 of b"blob <size>\0" + content


def git_blob_sha1(path: Path) -> str:
    """The id git gives the file's content (its blob hash), a checksum for files published only in git."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(folder: Path, remote: RemoteFile, download: bool = True, check: bool = True) -> Path:
    """Return the path of `remote` in `folder`, downloading it first when it is missing, and (with `check`)
    verified against its published checksum."""
    path = folder / remote.name
    if not path.exists() and download:
        _try_download(folder, remote)
    if not path.exists():
        raise DataError(
            f"missing data file {path}. Download it from {remote.urls[0]} and put it in {folder}/, or point "
            f"--data.init_args.data_dir (or ${DATA_DIR_ENV}) at a folder that holds {folder.name}/{remote.name}."
        )
    if check:
        verify_checksum(path, remote)
    return path


def verify_checksum(path: Path, remote: RemoteFile) -> None:
    for algorithm in ("md5", "sha256", "git_sha1"):
        expected = getattr(remote, algorithm)
        if expected is not None:
            actual = git_blob_sha1(path) if algorithm == "git_sha1" else file_digest(path, algorithm)
            if actual != expected:
                raise DataError(
                    f"{path} is corrupt or incomplete: its {algorithm} is {actual}, expected {expected}. "
                    f"Delete it and download it again from {remote.urls[0]}."
                )


def _try_download(folder: Path, remote: RemoteFile) -> None:
    from torchvision.datasets.utils import download_url

    folder.mkdir(parents=True, exist_ok=True)
    for url in remote.urls:
        try:
            download_url(url, str(folder), remote.name, md5=remote.md5)
            return
        except Exception:  # no network, a dead mirror or a bad download: try the next URL
            partial = folder / remote.name
            if partial.exists() and remote.md5 is not None:
                partial.unlink()


def read_gzip(path: Path) -> bytes:
    """Whole content of a gzip file, with a clear error for a truncated or damaged file."""
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is not a valid gzip file ({error}). Delete it and download it again.") from error


def read_maybe_gzip(folder: Path, name: str) -> tuple[Path, bytes] | None:
    """Content of `name` or `name.gz` in folder (the first that exists), or None when neither does."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            data = read_gzip(candidate) if candidate.suffix == ".gz" else candidate.read_bytes()
            return candidate, data
    return None
