"""The named studies: which runs (config files, seed, command-line overrides) make up each comparison.

Every run is an ordinary `python main.py fit ...` followed by `python main.py test ...` with the same
arguments; `python -m experiments.run STUDY --dry-run` prints the exact commands.
"""

from dataclasses import dataclass, replace


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


IMAGE_METRICS = ("test/elbo", "test/elbo_subset", "test/nll_iw", "test/kl", "test/mi", "test/mi_batch", "test/au", "test/probe_acc")
TEXT_METRICS = ("test/elbo", "test/elbo_subset", "test/nll_iw", "test/ppl_elbo", "test/ppl_iw", "test/kl", "test/mi", "test/mi_batch",
                "test/au")


def pair(stem: str, seeds: tuple[int, ...], presets: tuple[str, ...] = (), overrides: tuple[str, ...] = (),
         suffix: str = "", label: str = "") -> tuple[Run, ...]:
    """VAE and SkipVAE runs of `configs/<stem with vae|skipvae>.yaml` for each seed, with the same extras."""
    runs = []
    for model, config in (("VAE", stem.format("vae")), ("SkipVAE", stem.format("skipvae"))):
        for seed in seeds:
            runs.append(Run(f"{model.lower()}{suffix}_seed{seed}", f"{model}{label}",
                            (f"configs/{config}.yaml", *presets), seed, overrides))
    return tuple(runs)


def depth_runs(depths: tuple[int, ...], seeds: tuple[int, ...], presets: tuple[str, ...],
               extra: tuple[str, ...] = ()) -> tuple[Run, ...]:
    """VAE and SkipVAE pairs of the MNIST PixelCNN with `depth` layers of 3x3 kernels."""
    runs = ()
    for depth in depths:
        overrides = ("--model.init_args.decoder_layers", str(depth),
                     "--model.init_args.kernel_sizes", str([3] * depth).replace(" ", ""), *extra)
        runs += pair("mnist_{}", seeds, presets, overrides, suffix=f"_depth{depth}", label=f" depth {depth}")
    return runs


CPU_MNIST = ("configs/cpu_study.yaml",)

STUDIES: dict[str, Study] = {
    "debug": Study(
        "Pipeline check: VAE vs SkipVAE on MNIST with the debug preset (a few batches), 1 seed. About a minute.",
        pair("mnist_{}", (1,), ("configs/debug.yaml",)), IMAGE_METRICS),
    "mnist_cpu": Study(
        "MNIST, the paper code's architecture (gated PixelCNN 8 x 32, latent 20), VAE vs SkipVAE, 2 seeds, on the "
        "reduced CPU budget of configs/cpu_study.yaml (50,000 training images). About 1.5 h on 2 cores.",
        pair("mnist_{}", (1, 2), CPU_MNIST), IMAGE_METRICS),
    "mnist_depth_cpu": Study(
        "MNIST decoder strength: PixelCNN depth 2, 4 and 8 (3x3 kernels, 32 channels), VAE vs SkipVAE, 1 seed, "
        "configs/cpu_study.yaml budget with 2 epochs (25,000 training images).",
        depth_runs((2, 4, 8), (1,), CPU_MNIST, ("--trainer.max_epochs", "2")), IMAGE_METRICS),
    "mlp_cpu": Study(
        "MNIST with the MLP encoder/decoder (1024 units), VAE vs SkipVAE, 2 seeds, 10 full epochs, the callbacks of "
        "configs/cpu_study.yaml (IW-NLL on the first 100 test images).",
        pair("mnist_{}_mlp", (1, 2), ("configs/cpu_study.yaml",),
             ("--trainer.max_epochs", "10", "--trainer.limit_train_batches", "1.0", "--trainer.limit_val_batches", "1.0")),
        IMAGE_METRICS),
    "yahoo_small_cpu": Study(
        "Text stand-in: LSTM VAE vs SkipVAE trained on Yahoo valid.txt and tested on test.txt (configs/yahoo_small.yaml).",
        pair("yahoo_{}", (1,), ("configs/yahoo_small.yaml",)), TEXT_METRICS),
    "mnist_paper": Study(
        "MNIST with the paper code's settings (100 epochs), VAE vs SkipVAE, 2 seeds. GPU.",
        pair("mnist_{}", (1, 2)), IMAGE_METRICS),
    "mnist_depth_paper": Study(
        "MNIST decoder strength at the paper's budget: depth 2, 4, 8 (3x3) and the 12-layer large decoder. GPU.",
        depth_runs((2, 4, 8), (1,), ()) + pair("mnist_{}_large", (1,), suffix="_large12", label=" large 12"),
        IMAGE_METRICS),
    "omniglot_paper": Study(
        "Omniglot with the predecessor's large decoder (12 layers, latent 32, warm-up), VAE vs SkipVAE, 2 seeds. GPU.",
        pair("omniglot_{}", (1, 2)), ("test/elbo", "test/nll_iw", "test/kl", "test/mi", "test/mi_batch", "test/au")),
    "yahoo_paper": Study(
        "Yahoo Answers with the paper code's text settings (needs train.txt), VAE vs SkipVAE, 2 seeds. GPU.",
        pair("yahoo_{}", (1, 2)), TEXT_METRICS),
}
