"""The model from parts: experiments keep their meaning, parts are chosen by class_path and rebuilt from
checkpoints, and every remedy preset fits with VAE and SkipVAE on the MLP, PixelCNN and LSTM configs (and with the
SA models where it applies)."""

from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, EXPERIMENT_CONFIGS, fixture_args
from helpers import config_args, error_line, logging_args, main_exit, small

from main import cli_main
from models import VAE, SkipVAE
from models.identity import checkpoint_mismatches

GOLDEN = Path(__file__).parent / "golden" / "print_config"
PART_KEYS = ("kl_schedule", "kl_term", "mean_normalisation", "procedure", "encoder", "decoder", "refinement")
REMEDIES = sorted(p.name for p in (CONFIGS / "remedies").glob("*.yaml"))
# Per architecture: a VAE and a SkipVAE experiment.
ARCHITECTURES = {
    "mlp": ("mnist_vae_mlp.yaml", "mnist_skipvae_mlp.yaml"),
    "pixelcnn": ("mnist_vae.yaml", "mnist_skipvae.yaml"),
    "lstm": ("yahoo_vae.yaml", "yahoo_skipvae.yaml"),
}
# Overrides that keep a remedy's debug fit short: at most 3 inner steps of aggressive training (100 on the
# PixelCNN are about 100 s on 2 cores).
FAST_REMEDY: dict[str, list[str]] = {"aggressive.yaml": ["--model.init_args.procedure.init_args.max_inner_steps", "3"]}
# Remedies refused with the SA models, with the reason the user reads.
SA_REFUSED: dict[str, str] = {
    "aggressive.yaml": "does not apply to SAVAE: an SA model's encoder is trained through the SVI steps"
}


def printed_config(capsys, *configs: str) -> dict:
    with pytest.raises(SystemExit):
        cli_main(["fit", *config_args(*configs), "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS)
def test_experiments_keep_their_meaning(capsys, config):
    """--print_config equals the one before the model took parts, apart from the new keys, which are unset."""
    printed = printed_config(capsys, config)
    init_args = printed["model"]["init_args"]
    assert all(init_args.pop(key) is None for key in PART_KEYS)
    assert printed == yaml.safe_load((GOLDEN / config).read_text())


def test_every_experiment_has_a_golden_config():
    assert sorted(p.name for p in GOLDEN.glob("*.yaml")) == EXPERIMENT_CONFIGS


@pytest.mark.parametrize("remedy", REMEDIES)
def test_remedy_presets_only_set_parts(capsys, remedy):
    """A remedy preset stacks on any experiment: it sets model parts only, nothing an experiment chose."""
    preset = yaml.safe_load((CONFIGS / "remedies" / remedy).read_text())
    assert set(preset) == {"model"} and set(preset["model"]) == {"init_args"}
    assert set(preset["model"]["init_args"]) <= set(PART_KEYS)
    printed = printed_config(capsys, "yahoo_skipvae.yaml", f"remedies/{remedy}")
    assert printed["model"]["init_args"]["embedding_dim"] == 512  # the experiment's settings stay
    for key, part in preset["model"]["init_args"].items():
        assert printed["model"]["init_args"][key]["class_path"] == part["class_path"]


def fit(tmp_path, data_dir, config: str, remedy: str, *extra: str) -> Path:
    cli_main(
        [
            "fit",
            *config_args(config, "debug.yaml", f"remedies/{remedy}"),
            *logging_args(tmp_path),
            *fixture_args(config, data_dir),
            *FAST_REMEDY.get(remedy, []),
            *extra,
        ]
    )
    return tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.integration
@pytest.mark.parametrize("remedy", REMEDIES)
@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("skip", [False, True], ids=["vae", "skipvae"])
def test_remedy_fits(tmp_path, fixture_data_dir, remedy, architecture, skip):
    """A debug fit of each remedy preset; its checkpoint reloads with `load_from_checkpoint`, parts rebuilt from
    their configs (the file holds no pickled objects)."""
    shallow = ["--model.init_args.decoder_layers", "2"] if architecture == "pixelcnn" else []  # the remedy is the point
    checkpoint = fit(tmp_path, fixture_data_dir, ARCHITECTURES[architecture][skip], remedy, *shallow)
    saved = torch.load(checkpoint, weights_only=True)
    preset = yaml.safe_load((CONFIGS / "remedies" / remedy).read_text())["model"]["init_args"]
    model = (SkipVAE if skip else VAE).load_from_checkpoint(checkpoint)
    for key, part in preset.items():
        assert saved["hyper_parameters"][key]["class_path"] == part["class_path"]
        built = getattr(model, key)
        assert f"{type(built).__module__}.{type(built).__name__}" == part["class_path"]
    torch.testing.assert_close(model.state_dict(), saved["state_dict"])


@pytest.mark.integration
@pytest.mark.parametrize("remedy", REMEDIES)
def test_remedy_with_sa_models(tmp_path, fixture_data_dir, capsys, remedy):
    """SA-VAE with each remedy that applies (a debug fit, 2 SVI steps); the others are refused with one line."""
    args = ["--model.init_args.svi_steps", "2", "--data.init_args.batch_size", "10"]
    if remedy in SA_REFUSED:
        exit = main_exit(
            ["fit", *config_args("mnist_savae_mlp.yaml", "debug.yaml", f"remedies/{remedy}"), *logging_args(tmp_path)],
            capsys,
        )
        assert exit.returncode == 1 and error_line(exit).startswith("error: ")
        assert SA_REFUSED[remedy] in exit.stderr
        assert not (tmp_path / "run").exists()
    else:
        assert fit(tmp_path, fixture_data_dir, "mnist_savae_mlp.yaml", remedy, *args).exists()


def test_a_checkpoint_of_the_layout_before_parts_loads(tmp_path):
    """Hyper-parameters without the part keys (checkpoints written before the parts existed) build the defaults."""
    model = small()
    hparams = {key: value for key, value in model.hparams.items() if key not in PART_KEYS}
    path = tmp_path / "old.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": hparams,
            "skipvae_model": {"class": "VAE", "datamodule": None},
            "pytorch-lightning_version": "2.6.0",
        },
        path,
    )
    loaded = VAE.load_from_checkpoint(path)
    assert type(loaded.kl_schedule).__name__ == "LinearWarmup" and loaded.mean_normalisation is None
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_a_checkpoint_with_other_parts_is_refused():
    normalised = small(mean_normalisation=lambda dim: torch.nn.BatchNorm1d(dim))
    checkpoint = {"skipvae_model": {"class": "VAE"}, "state_dict": normalised.state_dict(), "hyper_parameters": {}}
    assert checkpoint_mismatches(small(), checkpoint) == [
        "the weights of mean_normalisation (a part configured differently)"
    ]
