"""The built-in networks (the parts in configs/parts/) initialise themselves as their settings say, and the model
overwrites none of it: a model's networks hold exactly the weights of the same networks built alone."""

import importlib
from functools import partial

import pytest
import torch
import yaml
from conftest import CONFIGS
from helpers import TEXT_FORMAT
from lightning.fabric.utilities.exceptions import MisconfigurationException

from models import VAE, SkipVAE
from models.refinement import SVI
from networks.contract import DataSpec
from networks.decoders import Decoder
from networks.encoders import Encoder

IMAGES, TEXT = DataSpec((1, 28, 28)), DataSpec((50,), TEXT_FORMAT)


def part(path) -> partial:
    """A network part file as the config parser binds it: its class with its settings."""
    config = yaml.safe_load(path.read_text())
    assert set(config) <= {"class_path", "init_args"}, path
    module, name = config["class_path"].rsplit(".", 1)
    return partial(getattr(importlib.import_module(module), name), **config.get("init_args", {}))


def data_of(network: partial, *args) -> DataSpec:
    """The data a network part is built for: images, or text when it refuses images."""
    try:
        network(IMAGES, 3, *args)
        return IMAGES
    except MisconfigurationException:
        return TEXT


# The network parts: the part files that name a class (the others set several of an experiment's settings).
PART_FILES = sorted((CONFIGS / "parts").glob("*.yaml"))
NETWORKS = {path.stem: part(path) for path in PART_FILES if "class_path" in yaml.safe_load(path.read_text())}
ENCODERS = {name: network for name, network in NETWORKS.items() if issubclass(network.func, Encoder)}
DECODERS = {name: network for name, network in NETWORKS.items() if issubclass(network.func, Decoder)}
PAIRS = [
    (encoder, decoder)
    for encoder in ENCODERS
    for decoder in DECODERS
    if data_of(ENCODERS[encoder]) == data_of(DECODERS[decoder], False)
]


def test_every_network_part_has_a_partner():
    assert set(NETWORKS) == set(ENCODERS) | set(DECODERS)
    assert {e for e, _ in PAIRS} == set(ENCODERS) and {d for _, d in PAIRS} == set(DECODERS)


@pytest.mark.parametrize("model_class", [VAE, SkipVAE])
@pytest.mark.parametrize("refinement", [None, "svi"])
@pytest.mark.parametrize("encoder, decoder", PAIRS)
def test_the_model_overwrites_none_of_its_networks_weights(model_class, refinement, encoder, decoder):
    data = data_of(ENCODERS[encoder])
    torch.manual_seed(0)
    model = model_class(
        encoder=ENCODERS[encoder],
        decoder=DECODERS[decoder],
        data_dims=data.dims,
        text_format=data.text_format,
        latent_dim=3,
        refinement=SVI() if refinement else None,
    )
    torch.manual_seed(0)
    alone = {"encoder": ENCODERS[encoder](data, 3), "decoder": DECODERS[decoder](data, 3, model_class.latent_skip)}
    for name, network in alone.items():
        torch.testing.assert_close(getattr(model, name).state_dict(), network.state_dict(), rtol=0, atol=0)


def linear_weights(*networks) -> list[torch.Tensor]:
    return [m.weight.detach() for n in networks for m in n.modules() if isinstance(m, torch.nn.Linear)]


def test_he_normal_linear_weights_of_the_image_model():
    """The paper code's PixelCNN model: every linear weight N(0, 2 / fan_in); here the 20 -> 784 latent maps and
    the encoder's 576 -> 20 heads, whose sample standard deviations are checked to 5 %."""
    torch.manual_seed(0)
    encoder, decoder = (
        ENCODERS["residual_conv_encoder"](IMAGES, 20),
        DECODERS["gated_pixelcnn_decoder"](IMAGES, 20, True),
    )
    weights = linear_weights(encoder, decoder)
    assert len(weights) == 2 + 9  # encoder mean/logvar, one latent projection per decoder layer and the output
    for weight in weights:
        expected = (2.0 / weight.shape[1]) ** 0.5
        assert float(weight.std()) == pytest.approx(expected, rel=0.05)
        assert abs(float(weight.mean())) < 0.1 * expected


def test_the_image_encoders_batchnorm_scales_start_uniform_in_the_unit_interval():
    """As the PyTorch of the paper's code started them (U(0, 1) until PyTorch 1.0); their shifts 0."""
    torch.manual_seed(0)
    norms = [m for m in ENCODERS["residual_conv_encoder"](IMAGES, 20).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    scales = torch.cat([m.weight.detach() for m in norms])
    assert len(norms) == 6 and 0 <= float(scales.min()) and float(scales.max()) <= 1
    assert float(scales.std()) == pytest.approx(12**-0.5, rel=0.1)  # the standard deviation of U(0, 1)
    assert all(not m.bias.detach().any() for m in norms)


def test_the_mlp_model_keeps_pytorchs_initialisation():
    torch.manual_seed(0)
    encoder, decoder = ENCODERS["mlp_encoder"](IMAGES, 20), DECODERS["mlp_decoder"](IMAGES, 20, True)
    for weight in linear_weights(encoder, decoder):  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)): std 1/sqrt(3 fan_in)
        assert float(weight.std()) == pytest.approx((1.0 / (3 * weight.shape[1])) ** 0.5, rel=0.05)


def test_the_text_model_starts_uniform_in_a_tenth():
    torch.manual_seed(0)
    encoder, decoder = ENCODERS["lstm_encoder"](TEXT, 32), DECODERS["lstm_decoder"](TEXT, 32, True)
    values = torch.cat([p.detach().flatten() for n in (encoder, decoder) for p in n.parameters()])
    assert float(values.abs().max()) <= 0.1 and float(values.std()) == pytest.approx(0.1 / 3**0.5, rel=0.01)
