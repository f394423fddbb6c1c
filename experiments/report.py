"""Tables and plots of a finished study: results.csv, results.md, curves.png, kl_per_dimension.png."""

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from experiments.events import read_scalars
from experiments.paired import mean_std, paired_differences, paired_table
from experiments.studies import Study


def _grouped(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        groups[record["group"]].append(record)
    return groups


def reported_metrics(study: Study, records: list[dict]) -> list[str]:
    """The study's metrics that at least one run logged (e.g. no `elbo_subset` without an IW-NLL subset)."""
    return [m for m in study.metrics if any(m in r["metrics"] for r in records)]


def write_csv(study: Study, records: list[dict], path: Path) -> None:
    metrics = reported_metrics(study, records)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "group", "seed", *metrics, "seconds"])
        for r in records:
            writer.writerow(
                [
                    r["run"],
                    r["group"],
                    r["seed"],
                    *(_plain(r["metrics"].get(m)) for m in metrics),
                    f"{r['seconds']:.0f}",
                ]
            )


def _plain(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def markdown_table(study: Study, records: list[dict]) -> str:
    """One row per group: mean ± std over its seeds of every metric of the study."""
    metrics = reported_metrics(study, records)
    names = [m.split("/", 1)[1] for m in metrics]
    lines = ["| model | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for group, runs in _grouped(records).items():
        cells = []
        for metric in metrics:
            values = [r["metrics"][metric] for r in runs if metric in r["metrics"]]
            if not values:
                cells.append("–")
                continue
            mean, std = mean_std(values)
            digits = 0 if metric.endswith("/au") and std == 0 else 2 if not metric.endswith("probe_acc") else 3
            cells.append(f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else ""))
        lines.append(f"| {group} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def provenance(records: list[dict]) -> str:
    """Which commits and CPUs made the runs (runs recorded before the runner kept them count as `not recorded`)."""

    def runs_by(key: str) -> str:
        seen: dict[str, list[str]] = defaultdict(list)
        for r in records:
            seen[r.get(key) or "not recorded"].append(r["run"])
        if len(seen) == 1:
            return next(iter(seen))
        return "; ".join(f"{value} ({', '.join(runs)})" for value, runs in seen.items())

    return f"Commit: {runs_by('commit')}. CPU: {runs_by('cpu')}."


def write_markdown(name: str, study: Study, records: list[dict], path: Path, missing: Sequence[str] = ()) -> None:
    hours = sum(r["seconds"] for r in records) / 3600
    precision = "" if study.precision == "32-true" else f" --precision {study.precision}"
    metrics = reported_metrics(study, records)
    per_run = "\n".join(
        f"| {r['run']} | {r['seconds'] / 60:.1f} | " + " | ".join(_plain(r["metrics"].get(m)) for m in metrics) + " |"
        for r in records
    )
    names = [m.split("/", 1)[1] for m in metrics]
    differences = paired_differences(records, metrics)
    paired = (
        "Paired differences Skip − base on the same seeds (positive: the Skip model's value is higher; for elbo, "
        "nll_iw and ppl lower is better), their mean and its 95 % paired t interval over seeds; a difference is "
        "claimed only where the interval excludes 0.\n\n" + paired_table(differences) + "\n\n"
        if differences
        else ""
    )
    text = (
        f"# Study `{name}`\n\n{study.description}\n\n"
        + (
            f"**Partial report**: {len(records)} of {len(records) + len(missing)} runs finished; not yet: "
            f"{', '.join(missing)}.\n\n"
            if missing
            else ""
        )
        + f"Command: `python -m experiments.run {name}{precision}`. Precision: {study.precision}. "
        f"{provenance(records)} {hours:.2f} h of run time in all (fit + test).\n\n"
        "All values are test-set numbers, mean ± sample std over seeds: elbo (negative ELBO, all test examples) "
        "and nll_iw (importance-weighted NLL; with elbo_subset where shown, on the examples it was computed on) "
        "in nats per example, lower is better; kl and mi in nats; au the count of active units; probe_acc the test "
        "accuracy of a logistic regression on posterior means.\n\n"
        f"{markdown_table(study, records)}\n\n{paired}"
        f"Per run (wall time of fit + test in minutes):\n\n| run | min | {' | '.join(names)} |\n"
        f"|---|---|{'---|' * len(names)}\n{per_run}\n"
    )
    path.write_text(text)


def _curves(record: dict, study_dir: Path, tags: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """A run's validation curves: from its record, else (runs recorded before the runner kept them) from the
    TensorBoard events of its fit."""
    if "curves" in record:
        return {tag: [tuple(point) for point in record["curves"][tag]] for tag in tags if tag in record["curves"]}
    scalars = read_scalars(study_dir / "runs" / record["run"] / "fit", "val/")
    return {tag: scalars[tag] for tag in tags if tag in scalars}


def plot_curves(study: Study, records: list[dict], study_dir: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(study.curves), figsize=(4 * len(study.curves), 3.2))
    colours = {group: f"C{i}" for i, group in enumerate(_grouped(records))}
    styles = ["-", "--", ":", "-."]
    for record in records:
        curves = _curves(record, study_dir, study.curves)
        seeds = sorted({r["seed"] for r in records if r["group"] == record["group"]})
        for ax, tag in zip(axes, study.curves):
            if tag in curves:
                steps, values = zip(*curves[tag])
                ax.plot(
                    steps,
                    values,
                    styles[seeds.index(record["seed"]) % len(styles)],
                    marker="o",
                    markersize=3,
                    color=colours[record["group"]],
                    label=f"{record['group']} seed {record['seed']}",
                )
    for ax, tag in zip(axes, study.curves):
        ax.set_title(tag)
        ax.set_xlabel("training step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_matched_likelihood(records: list[dict], study_dir: Path, path: Path) -> bool:
    """KL and MI against the validation −ELBO along training, one line per run: compares the models' use of z at
    the same likelihood rather than at the same step. False (nothing drawn) without those curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = ("val/elbo", "val/kl", "val/mi")
    runs = [(record, _curves(record, study_dir, tags)) for record in records]
    runs = [(record, curves) for record, curves in runs if "val/elbo" in curves and "val/kl" in curves]
    if not runs:
        return False
    shown = [tag for tag in ("val/kl", "val/mi") if any(tag in curves for _, curves in runs)]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.6), squeeze=False)
    colours = {group: f"C{i}" for i, group in enumerate(_grouped(records))}
    styles = ["-", "--", ":", "-."]
    for record, curves in runs:
        seeds = sorted({r["seed"] for r in records if r["group"] == record["group"]})
        elbo = dict(curves["val/elbo"])
        for ax, tag in zip(axes[0], shown):
            points = [(elbo[step], value) for step, value in curves.get(tag, []) if step in elbo]
            if not points:
                continue
            x, y = zip(*points)
            ax.plot(
                x,
                y,
                styles[seeds.index(record["seed"]) % len(styles)],
                marker="o",
                markersize=3,
                color=colours[record["group"]],
                label=f"{record['group']} seed {record['seed']}",
            )
            ax.annotate("end", (x[-1], y[-1]), fontsize=6, textcoords="offset points", xytext=(-12, 4))
    for ax, tag in zip(axes[0], shown):
        ax.set_xlabel("validation −ELBO (nats; axis reversed: training moves right)")
        ax.set_ylabel(f"validation {tag.split('/')[1].upper()} (nats)")
        ax.invert_xaxis()
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_kl_per_dimension(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, (group, runs) in enumerate(_grouped(records).items()):
        per_run = [sorted(r["kl_per_dimension"], reverse=True) for r in runs if r.get("kl_per_dimension")]
        if not per_run:
            continue
        mean = [sum(column) / len(column) for column in zip(*per_run)]
        ax.plot(range(1, len(mean) + 1), mean, marker="o", markersize=3, color=f"C{i}", label=group)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("latent dimension, sorted by KL")
    ax.set_ylabel("test KL per dimension (nats)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(name: str, study: Study, records: list[dict], study_dir: Path, missing: Sequence[str] = ()) -> None:
    """The study's tables and plots from `records`; `missing` names the runs not finished yet (a partial report)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    write_csv(study, records, study_dir / "results.csv")
    write_markdown(name, study, records, study_dir / "results.md", missing)
    plot_curves(study, records, study_dir, study_dir / "curves.png")
    plot_kl_per_dimension(records, study_dir / "kl_per_dimension.png")
    plot_matched_likelihood(records, study_dir, study_dir / "matched_likelihood.png")
