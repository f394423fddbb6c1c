"""Networks as parts: the built-in networks given as parts build the same models as the architecture names, a
network written outside the project plugs in by class_path, and its checkpoints reload and are checked."""

import math
from functools import partial

import pytest
import torch
from conftest import fixture_args
from helpers import config_args, error_line, logging_args, main_exit
from torch import nn

from main import cli_main
from models import SAVAE, VAE, SkipVAE
from models.decoders import BernoulliImageDecoder, GatedPixelCNNDecoder, LSTMDecoder, MLPDecoder
from models.encoders import LSTMEncoder, MLPEncoder, ResidualConvEncoder


class TinyDecoder(BernoulliImageDecoder):
    """A decoder written outside the project: one hidden layer fed by z; the skip model also feeds z to the
    output layer."""

    def __init__(self, data_dims, latent_dim: int, latent_skip: bool, hidden: int = 16):
        super().__init__(latent_skip, output_layer=1)
        self.image_shape = list(data_dims)
        self.hidden = nn.Linear(latent_dim, hidden)
        self.output = nn.Linear(hidden + self.latent_width(1, latent_dim), math.prod(data_dims))

    def forward(self, x, z):
        h = torch.relu(self.hidden(z))
        if self.takes_latent(1):
            h = torch.cat([h, z], dim=-1)
        return self.output(h).view(len(z), *self.image_shape)

    @torch.no_grad()
    def sample(self, z, greedy: bool = False):
        probs = torch.sigmoid(self(None, z).float())
        return (probs > 0.5).float() if greedy else torch.bernoulli(probs)


# Per architecture: its flat settings, and the same networks as parts.
SETTINGS = dict(latent_dim=3, encoder_hidden=8, decoder_layers=2, decoder_hidden=6, embedding_dim=5, dropout=0.1)
BUILT_IN = {
    "mlp": ([1, 4, 4], partial(MLPEncoder, hidden=8), partial(MLPDecoder, hidden=6, num_layers=2)),
    "pixelcnn": (
        [1, 8, 8],
        partial(ResidualConvEncoder, channels=8),
        partial(GatedPixelCNNDecoder, channels=6, kernel_sizes=[3, 3], latent_feature_maps=1),
    ),
    "lstm": (
        [11],
        partial(LSTMEncoder, embedding_dim=5, hidden=8),
        partial(LSTMDecoder, embedding_dim=5, hidden=6, num_layers=2, dropout=0.1),
    ),
}


@pytest.mark.parametrize("model_class", [VAE, SkipVAE, SAVAE])
@pytest.mark.parametrize("architecture", list(BUILT_IN))
def test_built_in_networks_as_parts_build_the_architectures_models(model_class, architecture):
    dims, encoder, decoder = BUILT_IN[architecture]
    torch.manual_seed(0)
    named = model_class(architecture=architecture, data_dims=dims, **SETTINGS)
    torch.manual_seed(0)
    parts = model_class(data_dims=dims, latent_dim=3, encoder=encoder, decoder=decoder)  # architecture: the default
    assert type(parts.decoder) is type(named.decoder) and parts.decoder.latent_skip == model_class.latent_skip
    torch.testing.assert_close(parts.state_dict(), named.state_dict(), rtol=0, atol=0)


def test_a_part_replaces_one_network_of_the_architecture():
    model = SkipVAE(architecture="mlp", data_dims=[1, 4, 4], latent_dim=3, encoder_hidden=8, decoder=TinyDecoder)
    assert isinstance(model.encoder, MLPEncoder) and model.encoder.features[0].out_features == 8
    assert isinstance(model.decoder, TinyDecoder) and model.decoder.output.in_features == 16 + 3  # z at the output
    plain = VAE(architecture="mlp", data_dims=[1, 4, 4], latent_dim=3, decoder=TinyDecoder)
    assert plain.decoder.output.in_features == 16


PARTS = [
    "--model.init_args.encoder",
    "models.encoders.ResidualConvEncoder",
    "--model.init_args.encoder.init_args.channels",
    "8",
    "--model.init_args.decoder",
    "test_network_parts.TinyDecoder",
    "--model.init_args.decoder.init_args.hidden",
    "12",
]


@pytest.mark.integration
def test_a_network_from_outside_the_project_by_class_path(tmp_path, capsys):
    """Both networks chosen in the config: a fit, a checkpoint without pickled objects that `load_from_checkpoint`
    rebuilds, and a checkpoint refused, naming the part, when the configured part differs."""
    args = [*config_args("mnist_skipvae_mlp.yaml", "debug.yaml"), *logging_args(tmp_path)]
    cli_main(["fit", *args, *PARTS])
    checkpoint = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["hyper_parameters"]["decoder"]["class_path"] == "test_network_parts.TinyDecoder"
    model = SkipVAE.load_from_checkpoint(checkpoint)
    assert isinstance(model.encoder, ResidualConvEncoder) and isinstance(model.decoder, TinyDecoder)
    assert model.decoder.hidden.out_features == 12 and model.decoder.takes_latent(1)
    torch.testing.assert_close(model.state_dict(), saved["state_dict"])

    exit = main_exit(["test", *args, *PARTS[:-1], "10", "--ckpt_path", str(checkpoint)], capsys)
    assert exit.returncode == 1
    line = error_line(exit)
    assert line.startswith("error: checkpoint does not match the configured model: decoder=") and "'hidden': 12" in line


@pytest.mark.integration
def test_text_networks_as_parts(tmp_path, fixture_data_dir):
    """The LSTM networks as parts on the text experiment (its flat settings then shape neither network)."""
    parts = [
        "--model.init_args.encoder",
        "models.encoders.LSTMEncoder",
        "--model.init_args.encoder.init_args.hidden",
        "16",
        "--model.init_args.decoder",
        "models.decoders.LSTMDecoder",
        "--model.init_args.decoder.init_args.hidden",
        "16",
        "--model.init_args.decoder.init_args.embedding_dim",
        "8",
    ]
    config = "yahoo_skipvae.yaml"
    cli_main(
        ["fit", *config_args(config, "debug.yaml"), *logging_args(tmp_path), *fixture_args(config, fixture_data_dir)]
        + parts
    )
    model = SkipVAE.load_from_checkpoint(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt")
    assert model.encoder.lstm.hidden_size == 16 and model.encoder.embedding.embedding_dim == 512
    assert model.decoder.lstms[0].hidden_size == 16 and model.decoder.embedding.embedding_dim == 8
