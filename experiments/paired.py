"""Paired differences Skip − base over seeds, with a 95 % paired t interval and a verdict.

Both models of a pair are trained with the same seed (the same initial draw of the shared parts and the same data
order), so the per-seed difference removes the variation that the two share; the interval is the paired t interval
of the mean difference, mean ± t(0.975, n − 1) · sd / √n, over the n seeds that both models ran. A difference is
claimed only where that interval excludes 0.
"""

import math
from dataclasses import dataclass

from scipy import stats

SKIP_PREFIX = "Skip"
HIGHER, LOWER, NOT_SEPARATED, ONE_SEED = "Skip higher", "Skip lower", "not separated", "one seed: untested"


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
        sd = math.sqrt(sum((d - self.mean) ** 2 for d in self.differences) / (n - 1))
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        return self.mean - half, self.mean + half

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
        digits = 3 if d.metric.endswith("probe_acc") else 2
        interval = d.interval
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
