"""Latent diagnostics of saved posteriors: one table row per `.npz` file.

    python -m experiments.diagnose FILE.npz [FILE.npz ...] [--batch-size 50] [--au-threshold 0.02] [--seed 0]

A file holds `mean` and `logvar` (N x D) and optionally `labels` (N) and `index` (N): what `main.py predict`
writes, and the format of the Skip-VAE authors' released MNIST posteriors. Printed per file, with the metric
classes of the training callbacks (`diagnostics/metrics.py`, `diagnostics/probe.py`):
- KL: mean over examples of KL(q(z|x) || N(0, I));
- MI: the full-set estimator (the aggregate posterior over all N), z drawn per example seeded by its index
  (`index`, else the row number) and `--seed`;
- MI (batch B): the minibatch estimator over consecutive batches of B rows;
- AU: dimensions whose posterior mean varies more than the threshold across examples;
- probe: accuracy of a logistic regression on the means, fitted on the first half of the rows and scored on the
  second half (where `labels` exist).
"""

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from diagnostics.metrics import ActiveUnits, KLDivergence, MutualInformation
from diagnostics.probe import probe_accuracy


class PosteriorFileError(ValueError):
    """A file that is not a readable posterior `.npz`."""


def load_posteriors(path: Path) -> dict[str, torch.Tensor]:
    """mean, logvar (float64), index and labels (int64, when present) of a posterior file, checked."""
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise PosteriorFileError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise PosteriorFileError(f"{path} is not an .npz file ({error})") from None
    missing = [key for key in ("mean", "logvar") if key not in contents]
    if missing:
        raise PosteriorFileError(f"{path} lacks {' and '.join(missing)} (it holds: {', '.join(contents) or 'nothing'})")
    mean, logvar = contents["mean"], contents["logvar"]
    if mean.ndim != 2 or mean.shape != logvar.shape or len(mean) < 2:
        raise PosteriorFileError(
            f"{path}: mean and logvar must have the same shape (examples, latent dimensions) "
            f"with at least 2 examples; they have {mean.shape} and {logvar.shape}"
        )
    posteriors = {}
    for key in ("mean", "logvar"):
        values = contents[key]
        if not np.issubdtype(values.dtype, np.floating) or not np.isfinite(values).all():
            bad = int(values.size - np.isfinite(values).sum()) if np.issubdtype(values.dtype, np.floating) else "all"
            raise PosteriorFileError(
                f"{path}: {key} must hold finite floating-point values ({values.dtype}, {bad} not finite)"
            )
        posteriors[key] = torch.from_numpy(values.astype(np.float64))
    for key in ("labels", "index"):
        if key in contents:
            values = contents[key]
            if values.shape != (len(mean),) or not np.issubdtype(values.dtype, np.integer):
                raise PosteriorFileError(
                    f"{path}: {key} must be {len(mean)} integers, one per row; it is "
                    f"{values.dtype} of shape {values.shape}"
                )
            posteriors[key] = torch.from_numpy(values.astype(np.int64))
    return posteriors


def diagnose(
    posteriors: dict[str, torch.Tensor], batch_size: int = 50, au_threshold: float = 0.02, seed: int = 0
) -> dict[str, float]:
    """KL, MI, MI (batch), AU and, with labels, the probe accuracy of one file's posteriors."""
    mean, logvar = posteriors["mean"], posteriors["logvar"]
    index = posteriors.get("index", torch.arange(len(mean)))
    kl, au = KLDivergence(), ActiveUnits(au_threshold)
    mi, mi_batch = MutualInformation("full", seed=seed), MutualInformation("batch", seed=seed)
    kl.update(mean, logvar)
    au.update(mean)
    mi.update(mean, logvar, index)
    for start in range(0, len(mean), batch_size):
        rows = slice(start, start + batch_size)
        mi_batch.update(mean[rows], logvar[rows], index[rows])
    values = {
        "kl": kl.compute().item(),
        "mi": mi.compute().item(),
        "mi_batch": mi_batch.compute().item(),
        "au": au.compute().item(),
    }
    if "labels" in posteriors:
        half, labels = len(mean) // 2, posteriors["labels"]
        values["probe_acc"] = probe_accuracy(mean[:half], labels[:half], mean[half:], labels[half:])
    return values


def table(rows: dict[str, dict[str, float]], batch_size: int, au_threshold: float) -> str:
    lines = [
        f"| file | examples | KL | MI | MI (batch {batch_size}) | AU ({au_threshold:g}) | probe |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in rows.items():
        probe = f"{v['probe_acc']:.3f}" if "probe_acc" in v else "–"
        lines.append(
            f"| {name} | {v['examples']} | {v['kl']:.3f} | {v['mi']:.3f} | {v['mi_batch']:.3f} | "
            f"{v['au']:.0f} | {probe} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("files", nargs="+", type=Path, help="posterior .npz files")
    parser.add_argument("--batch-size", type=int, default=50, help="batch size of the minibatch MI (default 50)")
    parser.add_argument("--au-threshold", type=float, default=0.02, help="active-unit threshold (default 0.02)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MI estimators' z draws (default 0)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    rows = {}
    try:
        for path in args.files:
            posteriors = load_posteriors(path)
            values = diagnose(posteriors, args.batch_size, args.au_threshold, args.seed)
            rows[path.name] = {"examples": len(posteriors["mean"]), **values}
    except PosteriorFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(table(rows, args.batch_size, args.au_threshold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
