"""Every experiment config resolves to what it claims: a model class of the project built from an encoder and a
decoder, a datamodule, its own log folder, and, where it claims them, the authors' settings. Experiments, presets and
remedies are found in configs/, not listed here: a new experiment file is checked without a test edit."""

import importlib

import pytest
import yaml
from conftest import CONFIGS, EXPERIMENT_CONFIGS, PRESETS, REMEDIES
from helpers import config_args, flat, printed_config

from datamodules.base import SkipVAEDataModule
from models import VAE
from networks.decoders import Decoder
from networks.encoders import Encoder

PART_KEYS = ("kl_schedule", "kl_term", "mean_normalisation", "procedure", "refinement", "optimizer")


def imported(class_path: str) -> type:
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS)
def test_an_experiment_is_a_model_of_parts_on_a_datamodule(tmp_path, capsys, config):
    """Its model class, networks and datamodule are the project's kinds; it logs under its own name; and its
    printed config reads back as itself."""
    printed = printed_config(capsys, *config_args(config))
    model = printed["model"]
    assert issubclass(imported(model["class_path"]), VAE)
    assert issubclass(imported(model["init_args"]["encoder"]["class_path"]), Encoder)
    assert issubclass(imported(model["init_args"]["decoder"]["class_path"]), Decoder)
    assert issubclass(imported(printed["data"]["class_path"]), SkipVAEDataModule)
    assert printed["trainer"]["logger"]["init_args"]["name"] == config.removesuffix(".yaml")  # by default: a copy
    assert "trainer.logger.init_args.name" not in flat(yaml.safe_load((CONFIGS / config).read_text()))  # logs apart
    assert printed["trainer"]["gradient_clip_val"] == 5.0 and printed["checkpoint"]["save_last"] is True
    saved = tmp_path / "printed.yaml"
    saved.write_text(yaml.safe_dump(printed))
    assert printed_config(capsys, "--config", str(saved)) == printed


# The authors' code, per experiment that claims it (yoonkim/skip-vae train_img_skip.py defaults, which are also its
# Omniglot command; models_img_skip.py; train_text_skip.py, models_text_skip.py; harvardnlp/sa-vae optim_n2n.py for
# the SVI refinement). An experiment not in this table claims no authors' settings.
IMAGE = {
    "seed_everything": 354,
    "trainer.max_epochs": 100,
    "trainer.gradient_clip_val": 5.0,
    "trainer.gradient_clip_algorithm": "norm",
    "data.init_args.batch_size": 50,
    "model.init_args.latent_dim": 20,
    "model.init_args.optimizer.class_path": "torch.optim.Adam",
    "model.init_args.optimizer.init_args.lr": 0.001,
    "model.init_args.kl_schedule": None,  # beta 1 from the first step: no warm-up
}
PIXELCNN = {
    "model.init_args.encoder.class_path": "networks.encoders.ResidualConvEncoder",
    "model.init_args.encoder.init_args.channels": 64,
    "model.init_args.encoder.init_args.stages": 3,
    "model.init_args.encoder.init_args.linear_init": "he_normal",
    "model.init_args.encoder.init_args.batchnorm_init": "uniform",
    "model.init_args.decoder.class_path": "networks.decoders.GatedPixelCNNDecoder",
    "model.init_args.decoder.init_args.channels": 32,
    "model.init_args.decoder.init_args.kernel_sizes": [3] * 8,
    "model.init_args.decoder.init_args.latent_feature_maps": 1,
    "model.init_args.decoder.init_args.linear_init": "he_normal",
}
MLP_MODEL = {
    "model.init_args.encoder.class_path": "networks.encoders.MLPEncoder",
    "model.init_args.encoder.init_args.hidden": 1024,
    "model.init_args.encoder.init_args.linear_init": "default",
    "model.init_args.decoder.class_path": "networks.decoders.MLPDecoder",
    "model.init_args.decoder.init_args.hidden": 1024,
    "model.init_args.decoder.init_args.num_layers": 2,
    "model.init_args.decoder.init_args.linear_init": "default",
}
SVI = {
    "model.init_args.refinement.class_path": "models.refinement.SVI",
    "model.init_args.refinement.init_args.steps": 20,
    "model.init_args.refinement.init_args.lr": 1.0,
    "model.init_args.refinement.init_args.momentum": 0.5,
    "model.init_args.refinement.init_args.max_grad_norm": 5.0,
    "checkpoint.monitor": "val/elbo_svi",
}
NO_SVI = {"model.init_args.refinement": None, "checkpoint.monitor": "val/elbo"}
TEXT = {
    "seed_everything": 3435,
    "trainer.max_epochs": 30,
    "trainer.gradient_clip_val": 5.0,
    "data.class_path": "datamodules.YahooDataModule",
    "data.init_args.batch_size": 32,
    "data.init_args.max_vocab": 20000,
    "data.init_args.batching": "same_length",
    "model.init_args.encoder.class_path": "networks.encoders.LSTMEncoder",
    "model.init_args.encoder.init_args.embedding_dim": 512,
    "model.init_args.encoder.init_args.hidden": 1024,
    "model.init_args.encoder.init_args.init_range": 0.1,
    "model.init_args.decoder.class_path": "networks.text_decoders.LSTMDecoder",
    "model.init_args.decoder.init_args.embedding_dim": 512,
    "model.init_args.decoder.init_args.hidden": 1024,
    "model.init_args.decoder.init_args.num_layers": 1,
    "model.init_args.decoder.init_args.dropout": 0.5,
    "model.init_args.decoder.init_args.init_range": 0.1,
    "model.init_args.latent_dim": 32,
    "model.init_args.optimizer.class_path": "torch.optim.SGD",
    "model.init_args.optimizer.init_args.lr": 1.0,
    "model.init_args.optimizer.init_args.momentum": 0.0,
    "model.init_args.kl_schedule.class_path": "models.kl_schedule.LinearWarmup",
    "model.init_args.kl_schedule.init_args.start": 0.1,
    "model.init_args.kl_schedule.init_args.epochs": 10.0,
    "lr_schedule.start_epoch": 15,
    "lr_schedule.factor": 0.5,
    "lr_schedule.min_lr": 0.03,
}
SKIP = {"model.class_path": "models.SkipVAE"}
PLAIN = {"model.class_path": "models.VAE"}
MODELS = {"vae": PLAIN | NO_SVI, "skipvae": SKIP | NO_SVI, "savae": PLAIN | SVI, "skipsavae": SKIP | SVI}
SA_EVALUATION = {"data.init_args.eval_batch_size": 50}  # an SVI step moves each example by lr / batch size
AUTHORS = {
    **{f"mnist_{m}.yaml": IMAGE | PIXELCNN | MODELS[m] | {"data.init_args.binarization": "dynamic"} for m in MODELS},
    **{f"omniglot_{m}.yaml": IMAGE | PIXELCNN | MODELS[m] for m in MODELS},
    **{f"mnist_{m}_mlp.yaml": IMAGE | MLP_MODEL | MODELS[m] for m in MODELS},
    **{f"yahoo_{m}.yaml": TEXT | MODELS[m] | {"lr_schedule.monitor": "val/elbo"} for m in ("vae", "skipvae")},
    **{
        f"yahoo_{m}.yaml": TEXT
        | MODELS[m]
        | {
            "lr_schedule.monitor": "val/elbo_svi",
            "model.init_args.refinement.init_args.hessian_products": "official",
            "model.init_args.refinement.init_args.diagnostics_posterior": "refined",
            "model.init_args.refinement.init_args.validation_beta": "current",
        }
        for m in ("savae", "skipsavae")
    },
}
for name in ("mnist_savae.yaml", "mnist_skipsavae.yaml", "omniglot_savae.yaml", "omniglot_skipsavae.yaml"):
    AUTHORS[name] |= SA_EVALUATION | {"model.init_args.refinement.init_args.hessian_products": "official"}
for name in ("mnist_savae_mlp.yaml", "mnist_skipsavae_mlp.yaml"):  # not the authors' (their code has no MLP SA-VAE)
    AUTHORS[name] |= SA_EVALUATION | {"model.init_args.refinement.init_args.hessian_products": "exact"}


@pytest.mark.parametrize("config", list(AUTHORS))
def test_experiment_has_the_authors_settings(capsys, config):
    printed = flat(printed_config(capsys, *config_args(config)))
    mismatches = {
        key: (printed.get(key, "<missing>"), value)
        for key, value in AUTHORS[config].items()
        if printed.get(key, "<missing>") != value
    }
    assert not mismatches, mismatches


# Settings that come from the composed parts of an experiment and its presets, as --print_config resolves them.
COMPOSED = {
    ("mnist_skipvae_large.yaml",): {
        "model.init_args.latent_dim": 32,
        "model.init_args.decoder.init_args.kernel_sizes": [9, 9, 9, 7, 7, 7, 5, 5, 5, 3, 3, 3],
        "model.init_args.decoder.init_args.channels": 32,
        "model.init_args.kl_schedule.init_args.start": 0.1,
        "data.class_path": "datamodules.MNISTDataModule",
    },
    ("omniglot_vae.yaml", "parts/savae_paper_decoder.yaml"): {
        "model.init_args.decoder.init_args.latent_feature_maps": 4,
        "model.init_args.decoder.init_args.kernel_sizes": [9, 9, 9, 7, 7, 7, 5, 5, 5, 3, 3, 3],
        "data.class_path": "datamodules.OmniglotDataModule",
    },
    ("yahoo_skipvae.yaml",): {"trainer.max_epochs": 30, "lr_schedule.start_epoch": 15, "nll_iw.chunk_size": 50},
    ("yahoo_vae.yaml", "presets/yahoo_small.yaml"): {
        "model.class_path": "models.VAE",
        "model.init_args.encoder.init_args.embedding_dim": 128,
        "model.init_args.decoder.init_args.hidden": 256,
        "model.init_args.optimizer.init_args.lr": 1.0,
        "model.init_args.kl_schedule.init_args.epochs": 4.0,
        "trainer.max_epochs": 8,
        "trainer.limit_train_batches": 140,
        "lr_schedule.start_epoch": 4,
        "data.init_args.val_split": 1000,
        "data.init_args.batching": "padded",
        "trainer.logger.init_args.name": "yahoo_small",
    },
}


@pytest.mark.parametrize("configs", list(COMPOSED))
def test_composed_settings(capsys, configs):
    printed = flat(printed_config(capsys, *config_args(*configs)))
    for key, value in COMPOSED[configs].items():
        assert printed[key] == value, key


def test_command_line_overrides_reach_the_parts(capsys):
    printed = printed_config(
        capsys,
        *config_args("mnist_skipvae.yaml"),
        "--model.init_args.latent_dim",
        "16",
        "--model.init_args.decoder.init_args.kernel_sizes",
        "[5,3]",
        "--model.init_args.optimizer.init_args.lr",
        "0.01",
        "--trainer.max_epochs",
        "5",
    )
    settings = flat(printed)
    assert settings["model.init_args.latent_dim"] == 16 and settings["trainer.max_epochs"] == 5
    assert settings["model.init_args.decoder.init_args.kernel_sizes"] == [5, 3]
    assert settings["model.init_args.optimizer.init_args.lr"] == 0.01


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_sets_no_model_class_and_no_data_class(preset):
    """A preset stacks on any experiment of its kind: it may tune settings, never swap the model or the data."""
    settings = flat(yaml.safe_load((CONFIGS / preset).read_text()))
    assert not {key for key in settings if key in ("model.class_path", "data.class_path", "model", "data")}


@pytest.mark.parametrize("remedy", REMEDIES)
def test_remedy_presets_only_set_parts(capsys, remedy):
    """A remedy preset stacks on any experiment: it sets model parts only, nothing an experiment chose."""
    preset = yaml.safe_load((CONFIGS / remedy).read_text())
    assert set(preset) == {"model"} and set(preset["model"]) == {"init_args"}
    assert set(preset["model"]["init_args"]) <= set(PART_KEYS)
    printed = printed_config(capsys, *config_args("yahoo_skipvae.yaml", remedy))
    assert printed["model"]["init_args"]["decoder"]["init_args"]["embedding_dim"] == 512  # the experiment's stay
    for key, part in preset["model"]["init_args"].items():
        assert printed["model"]["init_args"][key]["class_path"] == part["class_path"]


def test_two_stacked_configs_that_choose_the_same_part_are_named_once(recwarn):
    """beta-VAE then cyclical annealing both choose the KL schedule: the later wins, and a warning says so."""
    from cli import warn_of_parts_set_twice

    files = [
        CONFIGS / name for name in ("yahoo_vae.yaml", "remedies/beta_vae.yaml", "remedies/cyclical_annealing.yaml")
    ]
    warn_of_parts_set_twice(files)
    messages = [str(w.message) for w in recwarn if "both choose" in str(w.message)]
    assert (
        len(messages) == 1
        and "model.init_args.kl_schedule: cyclical_annealing.yaml comes later and wins" in messages[0]
    )
    warn_of_parts_set_twice([CONFIGS / "yahoo_vae.yaml", CONFIGS / "remedies/cyclical_annealing.yaml"])  # replaces the
    assert len([w for w in recwarn if "both choose" in str(w.message)]) == 1  # experiment's warm-up: no warning


def test_an_experiment_logs_under_its_file_name_unless_a_config_names_one(tmp_path, capsys):
    """A copied experiment logs under its own name with no edit; a name set by the experiment, a stacked preset or
    the command line wins."""
    import shutil

    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    copy = configs / "my_experiment.yaml"
    shutil.copy(configs / "mnist_skipvae.yaml", copy)

    def name(*args: str) -> str:
        return printed_config(capsys, *args)["trainer"]["logger"]["init_args"]["name"]

    assert name("--config", str(copy)) == "my_experiment"
    assert name(f"--config={copy}") == "my_experiment"
    text = configs / "my_text.yaml"
    shutil.copy(configs / "yahoo_vae.yaml", text)
    assert name("--config", str(text)) == "my_text"
    assert name("--config", str(text), "--config", str(configs / "presets/yahoo_small.yaml")) == "yahoo_small"
    assert name("--config", str(copy), "--trainer.logger.init_args.name", "mine") == "mine"
    named = configs / "named.yaml"
    named.write_text(copy.read_text() + "trainer.logger.init_args.name: chosen\n")
    assert name("--config", str(named)) == "chosen"
    nested = configs / "nested.yaml"
    nested.write_text(copy.read_text() + "trainer:\n  logger:\n    init_args:\n      name: nested_choice\n")
    assert name("--config", str(nested)) == "nested_choice"
