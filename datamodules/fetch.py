"""Fetch every data file the project can download into the data folder, each checked against its pinned checksum.

    python -m datamodules.fetch [--data-dir DIR] [--dataset mnist omniglot yahoo reference] [--mirror URL]
    python -m datamodules.fetch --for-tests     # only the files the full test suite reads (`make test`)
    make data                                   # every dataset

DIR defaults to $SKIPVAE_DATA_DIR, then ./data. Files already there are checked, not downloaded again. `--mirror`
(else $SKIPVAE_MIRROR) fetches `<URL>/<dataset>/<file name>` instead of the official URLs (a local copy of the
files). Every file gets one line with its outcome, then a summary; the exit code is 1 when one could not be had,
with the URL to get it by hand.

- mnist: the four LeCun IDX files (dynamic binarization) and Larochelle's three `.amat` files (static);
- omniglot: Burda et al.'s `chardata.mat`;
- yahoo: `train.txt`, `valid.txt`, `test.txt`;
- reference: the Skip-VAE authors' released MNIST test posteriors, converted to `reference/mnist-*-latents.npz`
  (a converted file already there is kept; the pickle is not fetched again).
"""

import argparse
import sys
from pathlib import Path

from datamodules.files import DataError, RemoteFile, dataset_dir, download_file, mirrored, verify_checksum
from datamodules.mnist import IDX_FILES, LAROCHELLE_FILES
from datamodules.omniglot import CHARDATA
from datamodules.reference_posteriors import REFERENCE_PICKLES, convert, npz_name
from datamodules.yahoo import YAHOO_FILES

CATALOG: dict[str, tuple[RemoteFile, ...]] = {
    "mnist": (*IDX_FILES.values(), *LAROCHELLE_FILES.values()),
    "omniglot": (CHARDATA,),
    "yahoo": tuple(YAHOO_FILES.values()),
    "reference": tuple(REFERENCE_PICKLES.values()),
}


# The files the full test suite reads (`tests/conftest.py`): all of a dataset (None) or the named ones.
FOR_TESTS: dict[str, tuple[str, ...] | None] = {"mnist": None, "yahoo": ("valid.txt", "test.txt"), "reference": None}


class FetchError(DataError):
    """A file that could not be had, with a short reason and where it comes from."""

    def __init__(self, reason: str, remote: RemoteFile):
        super().__init__(reason)
        self.reason, self.remote = reason, remote


def fetch_file(folder: Path, remote: RemoteFile, mirror: str | None) -> str:
    """Fetch and check one file; returns what happened ("present", "downloaded"). Raises FetchError."""
    if remote in LAROCHELLE_FILES.values() and (folder / f"{remote.name}.gz").exists():
        return "present as .gz, checked when read"
    path = folder / remote.name
    status = "present"
    if not path.exists():
        failures = download_file(folder, remote, mirror)
        remote = mirrored(folder, remote, mirror)  # a failure names the URL tried
        if failures:
            reason = failures[0].split(": ", 1)[-1].strip()
            raise FetchError(f"not downloaded ({reason[:80]})", remote)
        status = "downloaded"
    try:
        verify_checksum(path, remote)
    except DataError:
        if status == "downloaded":  # a download that fails its checksum is set aside, not used
            path.replace(path.with_name(path.name + ".rejected"))
            raise FetchError(f"checksum mismatch, set aside as {path.name}.rejected", remote) from None
        raise FetchError("checksum mismatch: delete it and fetch it again", remote) from None
    return status


def fetch_dataset(
    data_dir: str | None, dataset: str, mirror: str | None, names: tuple[str, ...] | None = None
) -> list[tuple[Path, FetchError | None]]:
    """(path, None) for each file of `dataset` (or of its files `names`) that is now in place and checked, (path,
    the error) for each that is not; one short line printed per file."""
    folder = dataset_dir(data_dir, dataset)
    outcomes: list[tuple[Path, FetchError | None]] = []
    for remote in CATALOG[dataset]:
        if names is not None and remote.name not in names:
            continue
        path = folder / remote.name
        shown = f"{folder.name}/{remote.name}"
        if dataset == "reference":
            model = next(key for key, value in REFERENCE_PICKLES.items() if value.name == remote.name)
            if (converted := folder / npz_name(model)).exists():
                outcomes.append((converted, None))
                print(f"ok      {folder.name}/{converted.name} (present, converted from {remote.name})")
                continue
        try:
            status = fetch_file(folder, remote, mirror)
            if dataset == "reference":
                status += f", converted to {convert(path, folder / npz_name(model)).name}"
            outcomes.append((path, None))
            print(f"ok      {shown} ({status})")
        except FetchError as error:
            outcomes.append((path, error))
            print(f"failed  {shown}: {error.reason}")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="the data folder (default: $SKIPVAE_DATA_DIR, then ./data)")
    parser.add_argument("--dataset", nargs="+", choices=list(CATALOG), default=list(CATALOG))
    parser.add_argument("--mirror", help="base URL of a copy laid out as <dataset>/<file name>")
    parser.add_argument("--for-tests", action="store_true", help="only the files the full test suite reads")
    args = parser.parse_args(argv)
    selection = FOR_TESTS if args.for_tests else dict.fromkeys(args.dataset)
    outcomes = [
        outcome
        for dataset, names in selection.items()
        for outcome in fetch_dataset(args.data_dir, dataset, args.mirror, names)
    ]
    failed = [(path, error) for path, error in outcomes if error is not None]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} files in place and checked")
    if failed:
        print(f"{len(failed)} could not be had; fetch them by hand into their folder:", file=sys.stderr)
        for path, error in failed:
            print(f"  {error.remote.urls[0]} -> {path.parent}/", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
