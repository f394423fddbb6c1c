"""A new network is one class and one config: an encoder and a decoder written here, outside the project's code, and
an experiment file written into a folder of its own live the whole life of an experiment through `main.py` (fit,
exact resume, test, predict, reload), with no edit of the project; a bad setting of theirs is refused in one line."""

import math

import pytest
import torch
from conftest import fixture_args
from helpers import error_line, fit_test_predict_resume_reload, main_exit
from jsonargparse.typing import PositiveInt
from torch import nn

from networks.contract import DataSpec
from networks.decoders import FactorisedImageDecoder
from networks.encoders import Encoder
from networks.initialisation import init_linear_layers


class TinyEncoder(Encoder):
    """One ReLU layer on the flattened image."""

    def __init__(self, data: DataSpec, latent_dim: int, hidden: PositiveInt = 16):
        super().__init__()
        channels, height, width = data.image_shape(type(self).__name__)
        self.hidden = nn.Linear(channels * height * width, hidden)
        self.mean, self.logvar = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)
        init_linear_layers(self, "he_normal")

    def forward(self, x):
        h = torch.relu(self.hidden(x.flatten(1)))
        return self.mean(h), self.logvar(h)


class TinyDecoder(FactorisedImageDecoder):
    """One hidden layer fed by z (layer 0), then the output layer (layer 1), which the skip model also feeds z."""

    def __init__(self, data: DataSpec, latent_dim: int, latent_skip: bool, hidden: PositiveInt = 16):
        super().__init__(data, latent_skip, output_layer=1)
        self.hidden = nn.Linear(latent_dim, hidden)
        self.output = nn.Linear(hidden + self.latent_width(1, latent_dim), math.prod(self.image_shape))
        init_linear_layers(self, "he_normal")

    def forward(self, x, z):
        h = torch.relu(self.hidden(z))
        if self.takes_latent(1):
            h = torch.cat([h, z], dim=-1)
        return self.output(h).view(len(z), *self.image_shape)


EXPERIMENT = """\
# Skip-VAE with the tiny networks of tests/test_new_network.py on MNIST.
model:
  class_path: models.SkipVAE
  init_args:
    encoder: {class_path: test_new_network.TinyEncoder, init_args: {hidden: 12}}
    decoder: {class_path: test_new_network.TinyDecoder}
    latent_dim: 4
data: datamodules.MNISTDataModule
trainer.logger.init_args.name: mnist_skipvae_tiny
"""


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "configs" / "mnist_skipvae_tiny.yaml"
    path.parent.mkdir()
    path.write_text(EXPERIMENT)
    return path


@pytest.mark.integration
def test_a_new_network_lives_the_life_of_an_experiment(tmp_path, fixture_data_dir, experiment):
    metrics = fit_test_predict_resume_reload(
        tmp_path / "runs", ["--config", str(experiment)], *fixture_args(fixture_data_dir)
    )
    assert metrics["test/nll_iw"] <= metrics["test/elbo"] + 1e-3
    saved = torch.load(tmp_path / "runs/resumed/version_0/checkpoints/last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["decoder"]["class_path"] == "test_new_network.TinyDecoder"
    assert saved["hyper_parameters"]["encoder"]["init_args"] == {"hidden": 12}
    assert "decoder.output.weight" in saved["state_dict"]
    assert saved["state_dict"]["decoder.output.weight"].shape == (28 * 28, 16 + 4)  # z into the output layer


@pytest.mark.parametrize("network", ["encoder", "decoder"])
def test_a_bad_setting_of_a_new_network_is_refused_in_one_line(tmp_path, capsys, experiment, network):
    args = ["fit", "--config", str(experiment), f"--model.init_args.{network}.init_args.hidden", "0"]
    exit = main_exit([*args, "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")], capsys)
    line = error_line(exit)
    assert exit.returncode == 2 and line.startswith(f"error: model.init_args.{network}.init_args.hidden: ")
    assert "PositiveInt" in line and len(line) < 200
    assert len(exit.stderr.strip().splitlines()) == 1 and not (tmp_path / "logs").exists()
