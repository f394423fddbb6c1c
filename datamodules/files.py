"""Where data files live, how they are fetched and how they are checked.

The data folder is `--data.init_args.data_dir`, else the environment variable SKIPVAE_DATA_DIR, else ./data;
each dataset has its own subfolder (mnist/, omniglot/, yahoo/). A missing file is downloaded from its
official URL when a network is reachable; otherwise, and for a file that fails its checksum, a `DataError`
says which file, where it belongs and where to get it.
"""

import contextlib
import gzip
import hashlib
import io
import os
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

DATA_DIR_ENV = "SKIPVAE_DATA_DIR"
MIRROR_ENV = "SKIPVAE_MIRROR"  # base URL of a copy of the files laid out as <dataset>/<file name>


class DataError(RuntimeError):
    """A data file is missing, corrupt or malformed; the message says how to fix it."""


def check_batch_size(batch_size: int, examples: int, what: str = "examples") -> None:
    """A training batch larger than the training set is a configuration mistake (one partial batch per epoch)."""
    if batch_size > examples:
        raise DataError(
            f"batch_size {batch_size} is larger than the training set ({examples} {what}); "
            f"use --data.init_args.batch_size {examples} or less."
        )


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


def download_reason(failure: str) -> str:
    """Why a download failed, from `download_file`'s `url: reason`, without the URL (named anyway) or urllib's
    wrapping, at most 60 characters."""
    reason = failure.split(": ", 1)[-1]
    return re.sub(r"^<urlopen error (.*)>$", r"\1", reason)[:60]


def fetch(folder: Path, remote: RemoteFile, download: bool = True, check: bool = True) -> Path:
    """Return the path of `remote` in `folder`, downloading it first when it is missing, and (with `check`)
    verified against its published checksum."""
    path = folder / remote.name
    failure = "; download"
    if not path.exists() and download:
        failures = download_file(folder, remote)
        failure = f"; downloading failed ({download_reason(failures[0])}): download" if failures else failure
    if not path.exists():
        raise DataError(
            f"missing data file {path}{failure} {remote.urls[0]} there, or set --data.init_args.data_dir "
            f"(or ${DATA_DIR_ENV}) to a folder holding {folder.name}/"
        )
    if check:
        verify_checksum(path, remote)
    return path


_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime) of files whose checksum passed in this process


def verify_checksum(path: Path, remote: RemoteFile) -> None:
    """Compare the file with its published checksums, once per process for an unchanged file."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    for algorithm in ("md5", "sha256", "git_sha1"):
        expected = getattr(remote, algorithm)
        if expected is not None:
            actual = git_blob_sha1(path) if algorithm == "git_sha1" else file_digest(path, algorithm)
            if actual != expected:
                raise DataError(
                    f"{path} is corrupt or incomplete: its {algorithm} is {actual}, expected {expected}. "
                    f"Delete it and download it again from {remote.urls[0]}."
                )
    _verified.add(key)


def mirrored(folder: Path, remote: RemoteFile, mirror: str | None = None) -> RemoteFile:
    """`remote` as fetched from `mirror` (else $SKIPVAE_MIRROR), a copy laid out as <dataset>/<file name>: its one
    URL is `<mirror>/<dataset>/<file name>`. Unchanged without a mirror."""
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if not mirror:
        return remote
    return replace(remote, urls=(f"{mirror.rstrip('/')}/{folder.name}/{remote.name}",))


def download_file(folder: Path, remote: RemoteFile, mirror: str | None = None) -> list[str]:
    """Try each URL of `remote` (its `mirrored` URL when a mirror is set) until one gives the file (checked
    afterwards, not here); returns why each URL failed, `url: reason` (empty on success)."""
    from urllib.error import URLError

    from torchvision.datasets.utils import download_url

    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in mirrored(folder, remote, mirror).urls:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints each URL; the caller reports
                download_url(url, str(folder), remote.name)
            return []
        except (URLError, OSError, RuntimeError) as error:  # no network, a dead mirror, an interrupted download
            failures.append(f"{url}: {error}")
            (folder / remote.name).unlink(missing_ok=True)
    return failures


def read_gzip(path: Path) -> bytes:
    """Whole content of a gzip file, with a clear error for a truncated or damaged file."""
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is not a valid gzip file ({error}). Delete it and download it again.") from error
