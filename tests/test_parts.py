"""The model's parts are chosen by class_path and rebuilt from checkpoints: every remedy preset fits with SkipVAE on
every kind of decoder the experiments use, with VAE on one (and with SA-VAE where it applies). The decoders are found in
the experiment configs, so a new network's experiments are fitted with every remedy without a test edit."""

import pytest
import torch
import yaml
from conftest import CONFIGS, EXPERIMENT_CONFIGS, REMEDIES, experiment_parts, fixture_args
from helpers import MLP, config_args, error_line, logging_args, main_exit, tiny

from main import cli_main
from models import VAE, SkipVAE
from runtime.checkpoint_identity import checkpoint_mismatches


def experiments_by_decoder() -> dict[str, tuple[str, str]]:
    """For each decoder class of the experiments, its first VAE and its first SkipVAE experiment without a
    refinement."""
    found: dict[str, dict[str, str]] = {}
    for config in EXPERIMENT_CONFIGS:
        parts = experiment_parts(config)
        if parts["refinement"] is None:
            found.setdefault(str(parts["decoder"]), {}).setdefault(str(parts["model"]), config)
    return {decoder: (pair["models.VAE"], pair["models.SkipVAE"]) for decoder, pair in sorted(found.items())}


DECODERS = experiments_by_decoder()
SA_EXPERIMENT = next(c for c in EXPERIMENT_CONFIGS if experiment_parts(c)["refinement"] and "mlp" in c)
# Overrides that keep a remedy's debug fit short: at most 3 inner steps of aggressive training (100 on the
# PixelCNN are about 100 s on 2 cores).
FAST_REMEDY: dict[str, list[str]] = {
    "remedies/aggressive.yaml": ["--model.init_args.procedure.init_args.max_inner_steps", "3"]
}
# Remedies refused with the SA models, with the reason the user reads.
SA_REFUSED: dict[str, str] = {
    "remedies/aggressive.yaml": "does not apply to SA-VAE models: their encoder learns through the SVI steps"
}
# A smaller network where the experiment's would only slow the fit down: the remedy is the point.
SHALLOW = {"networks.decoders.GatedPixelCNNDecoder": ["--model.init_args.decoder.init_args.kernel_sizes", "[3,3]"]}


def fit(tmp_path, data_dir, config: str, remedy: str, *extra: str):
    cli_main(
        [
            "fit",
            *config_args(config, "presets/debug.yaml", remedy),
            *logging_args(tmp_path),
            *fixture_args(data_dir),
            *FAST_REMEDY.get(remedy, []),
            *extra,
        ]
    )
    return tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"


# Each remedy with the SkipVAE of every kind of decoder, and with the VAE of the tests' fastest model (the two models
# differ in where z enters the decoder, which no remedy touches).
FITS = [(decoder, True) for decoder in DECODERS] + [(str(experiment_parts(MLP)["decoder"]), False)]


@pytest.mark.integration
@pytest.mark.parametrize("remedy", REMEDIES)
@pytest.mark.parametrize("decoder, skip", FITS, ids=lambda value: {True: "skipvae", False: "vae"}.get(value, value))
def test_remedy_fits(tmp_path, fixture_data_dir, remedy, decoder, skip):
    """A debug fit of each remedy preset; its checkpoint reloads with `load_from_checkpoint`, parts rebuilt from
    their configs (the file holds no pickled objects)."""
    checkpoint = fit(tmp_path, fixture_data_dir, DECODERS[decoder][skip], remedy, *SHALLOW.get(decoder, []))
    saved = torch.load(checkpoint, weights_only=True)
    preset = yaml.safe_load((CONFIGS / remedy).read_text())["model"]["init_args"]
    model = (SkipVAE if skip else VAE).load_from_checkpoint(checkpoint, weights_only=True)
    for key, part in preset.items():
        assert saved["hyper_parameters"][key]["class_path"] == part["class_path"]
        built = getattr(model, key)
        assert f"{type(built).__module__}.{type(built).__name__}" == part["class_path"]
    torch.testing.assert_close(model.state_dict(), saved["state_dict"])


@pytest.mark.integration
@pytest.mark.parametrize("remedy", REMEDIES)
def test_remedy_with_sa_models(tmp_path, fixture_data_dir, capsys, remedy):
    """SA-VAE with each remedy that applies (a debug fit, 2 SVI steps); the others are refused with one line."""
    args = ["--model.init_args.refinement.init_args.steps", "2", "--data.init_args.batch_size", "10"]
    if remedy in SA_REFUSED:
        exit = main_exit(
            ["fit", *config_args(SA_EXPERIMENT, "presets/debug.yaml", remedy), *logging_args(tmp_path)], capsys
        )
        assert exit.returncode == 1 and error_line(exit).startswith("error: ")
        assert SA_REFUSED[remedy] in exit.stderr
        assert not (tmp_path / "run").exists()
    else:
        assert fit(tmp_path, fixture_data_dir, SA_EXPERIMENT, remedy, *args).exists()


def test_a_checkpoint_with_other_parts_is_refused():
    normalised = tiny(mean_normalisation=lambda dim: torch.nn.BatchNorm1d(dim))
    checkpoint = {"skipvae_model": {"class": "VAE"}, "state_dict": normalised.state_dict(), "hyper_parameters": {}}
    assert checkpoint_mismatches(tiny(), checkpoint) == [
        "the weights of mean_normalisation (a part configured differently)"
    ]
