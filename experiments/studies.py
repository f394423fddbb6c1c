"""The named studies: which runs (config files, seed, command-line overrides) make up each comparison.

Every run is an ordinary `python main.py fit ...` followed by `python main.py test ...` with the same
arguments; `python -m experiments.run STUDY --dry-run` prints the exact commands.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    """One training run: its name (unique in the study), the table row it belongs to, and its arguments."""

    name: str
    group: str
    configs: tuple[str, ...]
    seed: int
    overrides: tuple[str, ...] = ()

    def main_args(self) -> list[str]:
        args = [arg for config in self.configs for arg in ("--config", config)]
        return [*args, "--seed_everything", str(self.seed), *self.overrides]


@dataclass(frozen=True)
class Study:
    """A comparison: its runs, the test metrics of its table and the validation curves of its plot."""

    description: str
    runs: tuple[Run, ...]
    metrics: tuple[str, ...] = ("test/elbo", "test/nll_iw", "test/kl", "test/mi", "test/mi_batch", "test/au")
    curves: tuple[str, ...] = ("val/elbo", "val/kl", "val/mi", "val/au")
    precision: str = "32-true"

    def with_precision(self, precision: str) -> "Study":
        """The same study with `--trainer.precision` appended to every run (it wins over the presets)."""
        runs = tuple(replace(run, overrides=(*run.overrides, "--trainer.precision", precision)) for run in self.runs)
        return replace(self, runs=runs, precision=precision)


IMAGE_METRICS = (
    "test/elbo",
    "test/elbo_subset",
    "test/nll_iw",
    "test/kl",
    "test/mi",
    "test/mi_batch",
    "test/au",
    "test/probe_acc",
)
TEXT_METRICS = (
    "test/elbo",
    "test/elbo_subset",
    "test/nll_iw",
    "test/ppl_elbo",
    "test/ppl_iw",
    "test/kl",
    "test/mi",
    "test/mi_batch",
    "test/au",
)


VAE_PAIR = ("VAE", "SkipVAE")
SA_PAIR = ("SAVAE", "SkipSAVAE")


def pair(
    stem: str,
    seeds: tuple[int, ...],
    presets: tuple[str, ...] = (),
    overrides: tuple[str, ...] = (),
    suffix: str = "",
    label: str = "",
    models: tuple[str, ...] = VAE_PAIR,
) -> tuple[Run, ...]:
    """Runs of `configs/<stem with the model's lower-case name>.yaml` for each model and seed, with the same
    extras: VAE and SkipVAE by default."""
    runs = []
    for model in models:
        for seed in seeds:
            runs.append(
                Run(
                    f"{model.lower()}{suffix}_seed{seed}",
                    f"{model}{label}",
                    (f"configs/{stem.format(model.lower())}.yaml", *presets),
                    seed,
                    overrides,
                )
            )
    return tuple(runs)


def four_models(
    stem: str,
    seeds: tuple[int, ...],
    presets: tuple[str, ...] = (),
    overrides: tuple[str, ...] = (),
    sa_overrides: tuple[str, ...] = (),
) -> tuple[Run, ...]:
    """The paper's four-model comparison: VAE, SkipVAE, SAVAE and SkipSAVAE (`sa_overrides` for the last two)."""
    return pair(stem, seeds, presets, overrides) + pair(
        stem, seeds, presets, (*overrides, *sa_overrides), models=SA_PAIR
    )


def seed_by_seed(runs: tuple[Run, ...]) -> tuple[Run, ...]:
    """The runs ordered by seed (stable), so that an interrupted study holds every model of its first seeds."""
    return tuple(sorted(runs, key=lambda run: run.seed))


def depth_runs(
    depths: tuple[int, ...], seeds: tuple[int, ...], presets: tuple[str, ...], extra: tuple[str, ...] = ()
) -> tuple[Run, ...]:
    """VAE and SkipVAE pairs of the MNIST PixelCNN with `depth` layers of 3x3 kernels."""
    runs: tuple[Run, ...] = ()
    for depth in depths:
        overrides = ("--model.init_args.decoder.init_args.kernel_sizes", str([3] * depth).replace(" ", ""), *extra)
        runs += pair("mnist_{}", seeds, presets, overrides, suffix=f"_depth{depth}", label=f" depth {depth}")
    return runs


def replaces_kl_schedule(remedy: str) -> bool:
    """Whether the remedy preset `configs/remedies/<remedy>.yaml` chooses the KL schedule (cyclical annealing, a
    constant beta), so that settings of the experiment's warm-up do not apply to it."""
    config = yaml.safe_load((ROOT / "configs" / "remedies" / f"{remedy}.yaml").read_text())
    return "kl_schedule" in (config.get("model", {}).get("init_args") or {})


def remedy_runs(
    stem: str,
    seeds: tuple[int, ...],
    presets: tuple[str, ...],
    overrides: tuple[str, ...],
    remedies: dict[str, tuple[str, ...]],
    warmup: tuple[str, ...] = (),
) -> tuple[Run, ...]:
    """The VAE and SkipVAE pair without a remedy, then with each remedy preset of `configs/remedies/` (with its own
    extra overrides); `warmup` overrides the warm-up's settings of every run whose remedy keeps the warm-up."""
    runs = pair(stem, seeds, presets, (*overrides, *warmup))
    for remedy, extra in remedies.items():
        preset = (*presets, f"configs/remedies/{remedy}.yaml")
        kept = () if replaces_kl_schedule(remedy) else warmup
        runs += pair(stem, seeds, preset, (*overrides, *kept, *extra), suffix=f"_{remedy}", label=f" + {remedy}")
    return runs


# The Transformer decoder of the text stand-in at about the LSTM decoder's parameter count (8.65M against 8.14M for
# the VAE's, 8.78M for the SkipVAE's) and step cost (benchmarks/text_step_cost.py): width 192, MLP 768; 2 blocks of 8
# heads from its part.
TRANSFORMER_STAND_IN = (
    "--model.init_args.decoder.init_args.embedding_dim",
    "192",
    "--model.init_args.decoder.init_args.hidden",
    "768",
)
# The text stand-in at a quarter of its steps: 2 epochs of 70 batches with the KL warm-up over the first epoch, the
# IW-NLL with K = 100 on the first 100 test documents; aggressive training with at most 3 inner steps.
REMEDIES_TEXT_BUDGET = (
    "--trainer.max_epochs",
    "2",
    "--trainer.limit_train_batches",
    "70",
    "--nll_iw.num_samples",
    "100",
)
REMEDIES_TEXT_WARMUP = ("--model.init_args.kl_schedule.init_args.epochs", "1")
# The paper code's PixelCNN (depth 8, where the VAE's KL falls in `mnist_depth_cpu`) on that study's budget: 2 epochs
# of 250 batches; the IW-NLL with K = 100 on the first 100 test images.
REMEDIES_PIXELCNN_BUDGET = ("--trainer.max_epochs", "2", "--nll_iw.num_samples", "100")
REMEDIES = {
    "free_bits": (),
    "cyclical_annealing": (),
    "bn_vae": (),
    "beta_vae": (),
    "aggressive": (
        "--model.init_args.procedure.init_args.max_inner_steps",
        "3",
        "--model.init_args.procedure.init_args.check_every",
        "3",
    ),
}

# With the refined posterior's ELBO (the SA-VAE models log it; for VAE and SkipVAE it is left blank).
SA_IMAGE_METRICS = (
    "test/elbo",
    "test/elbo_svi",
    "test/elbo_subset",
    "test/nll_iw",
    "test/kl",
    "test/kl_svi",
    "test/mi",
    "test/mi_batch",
    "test/au",
    "test/probe_acc",
)
SA_TEXT_METRICS = (
    "test/elbo",
    "test/elbo_svi",
    "test/elbo_subset",
    "test/nll_iw",
    "test/ppl_elbo",
    "test/ppl_iw",
    "test/kl",
    "test/kl_svi",
    "test/mi",
    "test/mi_batch",
    "test/au",
)
SA_CURVES = ("val/elbo", "val/elbo_svi", "val/kl", "val/mi", "val/au")

CPU_MNIST = ("configs/presets/cpu_study.yaml",)
# Ten times the CPU budget: 20 epochs of 500 batches (10,000 steps), one validation per epoch (every 500 steps).
LONG_MNIST_BUDGET = ("--trainer.max_epochs", "20", "--trainer.limit_train_batches", "500")
# The text stand-in's decoder with two LSTM layers, and the learning rate halved at the earliest after the last of
# its 8 epochs, so that both models train at lr 1 throughout.
TWO_LAYER_TEXT = ("--model.init_args.decoder.init_args.num_layers", "2", "--lr_schedule.start_epoch", "8")

STUDIES: dict[str, Study] = {
    "debug": Study(
        "Pipeline check: VAE vs SkipVAE on MNIST with the MLP networks and the debug preset (a few batches), 1 seed. "
        "Under a minute.",
        pair("mnist_{}_mlp", (1,), ("configs/presets/debug.yaml",)),
        IMAGE_METRICS,
    ),
    "mnist_cpu": Study(
        "MNIST, the paper code's architecture (gated PixelCNN 8 x 32, latent 20), VAE vs SkipVAE, seeds 1-3, on the "
        "reduced CPU budget of configs/presets/cpu_study.yaml (1,000 training steps, 50,000 training images).",
        seed_by_seed(pair("mnist_{}", (1, 2, 3), CPU_MNIST)),
        IMAGE_METRICS,
    ),
    "mnist_long_cpu": Study(
        "MNIST, the paper code's architecture, VAE vs SkipVAE, seed 1, 10,000 training steps (20 epochs of 500 "
        "batches: 10 times the CPU budget, a tenth of the paper's), validation on 2,000 images every 500 steps.",
        pair("mnist_{}", (1,), CPU_MNIST, LONG_MNIST_BUDGET),
        IMAGE_METRICS,
    ),
    "yahoo_2layer_cpu": Study(
        "Text stand-in (configs/presets/yahoo_small.yaml) with a 2-layer LSTM decoder: the VAE's upper layer gets z "
        "only through layer 0 (and its initial state), SkipVAE's also at its input at every step; no learning-rate "
        "halving before the last epoch; VAE vs SkipVAE, seed 1.",
        pair("yahoo_{}", (1,), ("configs/presets/yahoo_small.yaml",), TWO_LAYER_TEXT),
        TEXT_METRICS,
    ),
    "mnist_depth_cpu": Study(
        "MNIST decoder strength: PixelCNN depth 2, 4 and 8 (3x3 kernels, 32 channels), VAE vs SkipVAE, 1 seed, "
        "configs/presets/cpu_study.yaml budget with 2 epochs (25,000 training images).",
        depth_runs((2, 4, 8), (1,), CPU_MNIST, ("--trainer.max_epochs", "2")),
        IMAGE_METRICS,
    ),
    "mlp_cpu": Study(
        "MNIST with the MLP encoder/decoder (1024 units), VAE vs SkipVAE, 2 seeds, 10 full epochs, the callbacks of "
        "configs/presets/cpu_study.yaml (IW-NLL on the first 100 test images).",
        pair(
            "mnist_{}_mlp",
            (1, 2),
            ("configs/presets/cpu_study.yaml",),
            (
                "--trainer.max_epochs",
                "10",
                "--trainer.limit_train_batches",
                "1.0",
                "--trainer.limit_val_batches",
                "1.0",
            ),
        ),
        IMAGE_METRICS,
    ),
    "yahoo_small_cpu": Study(
        "Text stand-in: LSTM VAE vs SkipVAE trained on Yahoo valid.txt and tested on test.txt "
        "(configs/presets/yahoo_small.yaml).",
        pair("yahoo_{}", (1,), ("configs/presets/yahoo_small.yaml",)),
        TEXT_METRICS,
    ),
    "transformer_cpu": Study(
        "Text stand-in with the Transformer decoder: VAE vs SkipVAE (z into the first block, or into every block and "
        "the output layer) on configs/presets/yahoo_small.yaml, the Transformer at width 192, MLP 768, 2 blocks "
        "(about the LSTM decoder's parameter count and step cost), 2 seeds; to set beside yahoo_small_cpu's LSTM rows.",
        seed_by_seed(pair("yahoo_{}_transformer", (1, 2), ("configs/presets/yahoo_small.yaml",), TRANSFORMER_STAND_IN)),
        TEXT_METRICS,
    ),
    "remedies_cpu": Study(
        "Posterior-collapse remedies on the text stand-in (configs/presets/yahoo_small.yaml) at a quarter of its steps "
        "(140): VAE and SkipVAE alone and with free bits, cyclical annealing, BN-VAE, beta-VAE and aggressive training "
        "(at most 3 inner steps), 1 seed.",
        remedy_runs(
            "yahoo_{}",
            (1,),
            ("configs/presets/yahoo_small.yaml",),
            REMEDIES_TEXT_BUDGET,
            REMEDIES,
            REMEDIES_TEXT_WARMUP,
        ),
        TEXT_METRICS,
    ),
    "remedies_pixelcnn_cpu": Study(
        "Posterior-collapse remedies on MNIST with the gated PixelCNN 8 x 32 (configs/presets/cpu_study.yaml budget "
        "with 2 epochs, as mnist_depth_cpu): VAE and SkipVAE alone and with each remedy preset (aggressive training "
        "with at most 3 inner steps), 1 seed.",
        remedy_runs("mnist_{}", (1,), CPU_MNIST, REMEDIES_PIXELCNN_BUDGET, REMEDIES),
        IMAGE_METRICS,
    ),
    "four_models_cpu": Study(
        "The four models (VAE, SkipVAE, SAVAE, SkipSAVAE with K = 20) side by side on a CPU: MNIST with the MLP "
        "encoder/decoder on the configs/presets/cpu_study.yaml budget (1,000 training steps), 2 seeds; the SA models "
        "with the exact reverse pass (the MLP configs' default) and with the SA-VAE authors' (official).",
        four_models("mnist_{}_mlp", (1, 2), CPU_MNIST)
        + pair(
            "mnist_{}_mlp",
            (1, 2),
            CPU_MNIST,
            ("--model.init_args.refinement.init_args.hessian_products", "official"),
            suffix="_official",
            label=" official",
            models=SA_PAIR,
        ),
        SA_IMAGE_METRICS,
        SA_CURVES,
    ),
    "mnist_paper": Study(
        "MNIST with the paper code's settings (100 epochs): VAE, SkipVAE, SAVAE and SkipSAVAE (K = 20), 2 seeds. GPU.",
        four_models("mnist_{}", (1, 2)),
        SA_IMAGE_METRICS,
        SA_CURVES,
    ),
    "mnist_depth_paper": Study(
        "MNIST decoder strength at the paper's budget: depth 2, 4, 8 (3x3) and the 12-layer large decoder. GPU.",
        depth_runs((2, 4, 8), (1,), ()) + pair("mnist_{}_large", (1,), suffix="_large12", label=" large 12"),
        IMAGE_METRICS,
    ),
    "omniglot_paper": Study(
        "Omniglot with the Skip-VAE code's Omniglot settings (its image defaults): the four models, 2 seeds. GPU.",
        four_models("omniglot_{}", (1, 2)),
        tuple(m for m in SA_IMAGE_METRICS if m != "test/probe_acc"),
        SA_CURVES,
    ),
    "yahoo_paper": Study(
        "Yahoo Answers with the paper code's text settings (needs train.txt): the four models, 2 seeds. GPU.",
        four_models("yahoo_{}", (1, 2)),
        SA_TEXT_METRICS,
        SA_CURVES,
    ),
}
