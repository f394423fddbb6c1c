"""How much a trained decoder uses z: the test reconstruction term at four codes, and the KL split in two.

    python -m experiments.latent_use RUN [RUN ...] [--checkpoint best|last] [--max-examples N] [--json FILE]

RUN is a training run's folder (the `fit/` folder of a study run, or `logs/<experiment>/version_N`): its
`config.yaml` gives the data module, its `checkpoints/` the model. Printed per run, on the test set (or its first
N examples), in nats per example:
- recon at z ~ q: -log p(x|z) with z drawn from the encoder's posterior (the test ELBO's reconstruction term, the
  same per-example noise as the test step);
- recon at z = mean: at the posterior mean of each example;
- recon at z = average mean: at one code for every example, the average over the examples of the posterior means;
- recon at z = 0: at the prior's mean;
- KL = E_x KL(q(z|x) || p(z)) = MI + KL(q(z) || p(z)), with MI the full-set estimator of the diagnostics callback
  and KL(q(z) || p(z)) the aggregate posterior's distance from the prior.
A decoder that ignores z has the four recon values equal; the gap between z = average mean and z = mean is what
the example-specific part of the code buys.
"""

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch
import yaml

import models
from datamodules.files import DataError
from diagnostics.metrics import KLDivergence, MutualInformation
from runtime.checkpoint_identity import CheckpointMismatchError

CODES = ("z ~ q", "z = mean", "z = average mean", "z = 0")


def checkpoint_of(run: Path, which: str) -> Path:
    """The run's best (lowest monitored value, `best-*.ckpt`, the newest if several) or last checkpoint."""
    folder = run / "checkpoints"
    candidates = sorted(folder.glob("best-*.ckpt")) if which == "best" else [folder / "last.ckpt"]
    candidates = [path for path in candidates if path.exists()]
    if not candidates:
        raise DataError(f"no {which} checkpoint in {folder}")
    return candidates[-1]


def load_run(run: Path, which: str):
    """(model in evaluation mode, data module set up for testing, checkpoint path) of a training run's folder."""
    config_path = run / "config.yaml"
    if not config_path.exists():
        raise DataError(f"{run} holds no config.yaml: give the folder of a training run")
    config = yaml.safe_load(config_path.read_text())
    module_name, class_name = config["data"]["class_path"].rsplit(".", 1)
    data = getattr(importlib.import_module(module_name), class_name)(**config["data"].get("init_args", {}))
    data.setup("test")
    path = checkpoint_of(run, which)
    saved = torch.load(path, map_location="cpu", weights_only=False).get("skipvae_model")
    if saved is None:
        raise CheckpointMismatchError(f"{path} was not written by a model of this project")
    model = getattr(models, saved["class"]).load_from_checkpoint(path, map_location="cpu")
    return model.eval(), data, path


@torch.no_grad()
def latent_use(model, data, max_examples: int | None = None) -> dict[str, float]:
    """The recon terms at the four codes and the KL split (see the module docstring), means over the test set."""
    batches = []
    for batch in data.test_dataloader():
        batch = data.on_after_batch_transfer(batch, 0)
        if max_examples is not None:
            keep = batch["index"] < max_examples
            if not keep.any():
                continue
            batch = {key: value[keep] for key, value in batch.items()}
        mean, logvar = model.encode(batch["x"])
        batches.append((batch, mean, logvar))
    if not batches:
        raise DataError("the test set is empty")
    count = sum(len(mean) for _, mean, _ in batches)
    average_mean = sum(mean.double().sum(0) for _, mean, _ in batches) / count
    totals = dict.fromkeys(CODES, 0.0)
    kl, mi = KLDivergence(), MutualInformation("full")
    for batch, mean, logvar in batches:
        x = batch["x"]
        codes = {
            "z ~ q": mean + torch.exp(0.5 * logvar) * model.evaluation_noise(batch),
            "z = mean": mean,
            "z = average mean": average_mean.to(mean).expand_as(mean),
            "z = 0": torch.zeros_like(mean),
        }
        for name, z in codes.items():
            totals[name] += float(-model.decoder.log_prob(x, z).double().sum())
        kl.update(mean, logvar)
        mi.update(mean, logvar, batch["index"])
    result = {f"recon at {name}": total / count for name, total in totals.items()}
    result["kl"], result["mi"] = float(kl.compute()), float(mi.compute())
    result["kl_aggregate"] = result["kl"] - result["mi"]
    result["examples"] = count
    return result


def table(rows: dict[str, dict[str, float]]) -> str:
    keys = [f"recon at {name}" for name in CODES] + ["kl", "mi", "kl_aggregate"]
    heads = [f"recon ({name})" for name in CODES] + ["KL", "MI", "KL(q(z) ‖ p(z))"]
    lines = ["| run | examples | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
    for run, values in rows.items():
        lines.append(f"| {run} | {values['examples']} | " + " | ".join(f"{values[key]:.2f}" for key in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders (with config.yaml, checkpoints/)")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument("--max-examples", type=int, help="only the test examples with index below this")
    parser.add_argument("--json", type=Path, help="also write the values to this file")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    rows = {}
    try:
        for run in args.runs:
            model, data, path = load_run(run, args.checkpoint)
            rows[str(run)] = latent_use(model, data, args.max_examples)
            print(f"{run}: {path.name}, {rows[str(run)]['examples']} test examples", file=sys.stderr)
    except (DataError, CheckpointMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
