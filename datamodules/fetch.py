"""Fetch every data file the project can download into the data folder, each checked against its pinned checksum.

    python -m datamodules.fetch [--data-dir DIR] [--dataset mnist omniglot yahoo reference] [--mirror URL]
    make data                                   # the same, for every dataset

DIR defaults to $SKIPVAE_DATA_DIR, then ./data. Files already there are checked, not downloaded again. `--mirror`
fetches `<URL>/<dataset>/<file name>` instead of the official URLs (a local copy of the files). Every file is
listed with its outcome; the exit code is 1 when one could not be had, with the URLs to get it by hand.

- mnist: the four LeCun IDX files (dynamic binarization) and Larochelle's three `.amat` files (static);
- omniglot: Burda et al.'s `chardata.mat`;
- yahoo: `train.txt`, `valid.txt`, `test.txt`;
- reference: the Skip-VAE authors' released MNIST test posteriors, converted to `reference/mnist-*-latents.npz`.
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from datamodules.files import DataError, RemoteFile, dataset_dir, fetch
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


def fetch_file(folder: Path, remote: RemoteFile, mirror: str | None) -> str:
    """Fetch and check one file; returns what happened ("present", "downloaded"). Raises DataError."""
    if remote in LAROCHELLE_FILES.values() and (folder / f"{remote.name}.gz").exists():
        return "present (.gz; its content is checked when it is read)"
    path = folder / remote.name
    present = path.exists()
    if mirror is not None:
        remote = replace(remote, urls=(f"{mirror.rstrip('/')}/{folder.name}/{remote.name}",))
    try:
        fetch(folder, remote, download=True, check=True)
    except DataError:
        if not present and path.exists():  # a download that fails its checksum is set aside, not used
            path.replace(path.with_name(path.name + ".rejected"))
        raise
    return "present" if present else "downloaded"


def fetch_dataset(data_dir: str | None, dataset: str, mirror: str | None) -> list[tuple[str, str | None]]:
    """(path, None) for each file of `dataset` that is now in place and checked, (path, why) for each that is not."""
    folder = dataset_dir(data_dir, dataset)
    outcomes: list[tuple[str, str | None]] = []
    for remote in CATALOG[dataset]:
        path = folder / remote.name
        try:
            status = fetch_file(folder, remote, mirror)
            if dataset == "reference":
                model = next(key for key, value in REFERENCE_PICKLES.items() if value.name == remote.name)
                target = convert(path, folder / npz_name(model))
                status += f", converted to {target.name}"
            outcomes.append((str(path), None))
            print(f"ok       {path}: {status}")
        except DataError as error:
            outcomes.append((str(path), str(error)))
            print(f"FAILED   {path}: {error}")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="the data folder (default: $SKIPVAE_DATA_DIR, then ./data)")
    parser.add_argument("--dataset", nargs="+", choices=list(CATALOG), default=list(CATALOG))
    parser.add_argument("--mirror", help="base URL of a copy laid out as <dataset>/<file name>")
    args = parser.parse_args(argv)
    failed = [
        path
        for dataset in args.dataset
        for path, why in fetch_dataset(args.data_dir, dataset, args.mirror)
        if why is not None
    ]
    if failed:
        print(f"\n{len(failed)} file(s) could not be fetched or checked: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
