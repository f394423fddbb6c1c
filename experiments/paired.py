"""Paired differences Skip − base over seeds, with a 95 % paired t interval and a verdict.

Both models of a pair are trained with the same seed (the same initial draw of the shared parts and the same data
order), so the per-seed difference removes the variation that the two share; the interval is the paired t interval
of the mean difference, mean ± t(0.975, n − 1) · sd / √n, over the n seeds that both models ran. A difference is
claimed only where that interval excludes 0.

    python -m experiments.paired docs/results/mlp_cpu/results.csv    # the table of a finished study
"""

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

SKIP_PREFIX = "Skip"
HIGHER, LOWER, NOT_SEPARATED, ONE_SEED = "Skip higher", "Skip lower", "not separated", "one seed: untested"


def mean_std(values: list[float] | tuple[float, ...]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class PairedDifference:
    """One metric of one pair of groups: the per-seed differences Skip − base and what they show."""

    skip: str
    base: str
    metric: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.differences) / len(self.differences)

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % paired t interval of the mean difference; None with a single seed."""
        n = len(self.differences)
        if n < 2:
            return None
        mean, sd = mean_std(self.differences)
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        return mean - half, mean + half

    @property
    def verdict(self) -> str:
        interval = self.interval
        if interval is None:
            return ONE_SEED
        low, high = interval
        return HIGHER if low > 0 else LOWER if high < 0 else NOT_SEPARATED


def base_group(group: str) -> str | None:
    """The group a Skip group is compared with: its name without the leading `Skip` (`SkipVAE depth 4` →
    `VAE depth 4`, `SkipSAVAE official` → `SAVAE official`); None for a group that is not a Skip model."""
    return group[len(SKIP_PREFIX) :] if group.startswith(SKIP_PREFIX) else None


def paired_differences(records: list[dict], metrics: list[str]) -> list[PairedDifference]:
    """For every Skip group whose base group is in `records`, and every metric both logged: the differences
    Skip − base on the seeds both ran, in seed order."""
    by_group: dict[str, dict[int, dict]] = {}
    for record in records:
        by_group.setdefault(record["group"], {})[record["seed"]] = record["metrics"]
    out = []
    for skip, skip_runs in by_group.items():
        base = base_group(skip)
        if base is None or base not in by_group:
            continue
        base_runs = by_group[base]
        for metric in metrics:
            seeds = tuple(sorted(s for s in skip_runs if metric in skip_runs[s] and metric in base_runs.get(s, {})))
            if seeds:
                differences = tuple(skip_runs[s][metric] - base_runs[s][metric] for s in seeds)
                out.append(PairedDifference(skip, base, metric, seeds, differences))
    return out


def _digits(values: list[float], least: int) -> int:
    """Decimals that show at least two significant digits of the largest value (at most 4), `least` at minimum."""
    largest = max((abs(v) for v in values), default=0.0)
    if largest == 0:
        return least
    return min(4, max(least, 1 - math.floor(math.log10(largest))))


def _number(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"


def paired_table(differences: list[PairedDifference]) -> str:
    """A markdown table: one row per pair and metric, with the per-seed differences, their mean, the interval and
    the verdict."""
    lines = [
        "| Skip − base | metric | seeds | per seed | mean | 95 % interval (paired t) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in differences:
        interval = d.interval
        digits = _digits([*d.differences, *(interval or ())], 3 if d.metric.endswith("probe_acc") else 2)
        cells = [
            f"{d.skip} − {d.base}",
            d.metric.split("/", 1)[-1],
            ", ".join(map(str, d.seeds)),
            ", ".join(_number(v, digits) for v in d.differences),
            _number(d.mean, digits),
            "–" if interval is None else f"[{_number(interval[0], digits)}, {_number(interval[1], digits)}]",
            d.verdict,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def records_from_csv(path: Path) -> list[dict]:
    """The runs of a study's results.csv as records (group, seed, metrics), for studies reported before the
    paired table was part of the report."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    fixed = {"run", "group", "seed", "seconds"}
    return [
        {
            "run": row["run"],
            "group": row["group"],
            "seed": int(row["seed"]),
            "metrics": {k: float(v) for k, v in row.items() if k not in fixed and v not in ("", None)},
        }
        for row in rows
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The paired-difference table of a study's results.csv.")
    parser.add_argument("csv", type=Path, help="a results.csv written by experiments.run")
    args = parser.parse_args(argv)
    records = records_from_csv(args.csv)
    metrics = list(dict.fromkeys(m for r in records for m in r["metrics"]))
    print(paired_table(paired_differences(records, metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
