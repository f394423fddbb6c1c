"""The network of docs/configs.md ("Adding a network") is a file that runs: the page shows examples/tiny_decoder.py
and its experiment as they are, and both go through main.py fit and test with the debug preset. A network that
lacks a method of its base class is refused in one line when the model is built."""

import re

import pytest
from conftest import ROOT, fixture_args
from helpers import error_line, main_exit

from experiments.events import read_scalars
from models.kl_schedule import KLSchedule
from networks.abstract import IncompleteClassError
from networks.contract import DataSpec
from networks.decoders import BernoulliImageDecoder, FactorisedImageDecoder
from networks.encoders import Encoder

EXAMPLE = ROOT / "examples" / "tiny_decoder.py"
EXPERIMENT = ROOT / "examples" / "mnist_skipvae_tiny.yaml"


def code_blocks(page: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "docs" / page).read_text(), flags=re.S)


def test_the_docs_show_the_example_files_as_they_are():
    assert EXAMPLE.read_text() in code_blocks("configs.md", "python")
    assert EXPERIMENT.read_text() in code_blocks("configs.md", "yaml")


@pytest.mark.integration
def test_the_example_trains_and_tests_through_main(tmp_path, fixture_data_dir, capsys):
    common = ["--config", str(EXPERIMENT), "--config", str(ROOT / "configs/presets/debug.yaml")]
    common += [*fixture_args(fixture_data_dir), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main_exit(["fit", *common], capsys).returncode == 0
    assert (tmp_path / "mnist_skipvae_tiny" / "version_0" / "checkpoints" / "last.ckpt").exists()  # its own name
    tested = main_exit(["test", *common, "--ckpt_path", "last"], capsys)
    assert tested.returncode == 0, tested.stderr[-2000:]
    logged = read_scalars(tmp_path / "mnist_skipvae_tiny" / "version_1", "test/")
    assert {"test/elbo", "test/nll_iw", "test/kl", "test/mi", "test/au", "test/probe_acc"} <= set(logged)


class DecoderWithoutSample(BernoulliImageDecoder):
    """An autoregressive-looking image decoder that forgot `sample`."""

    def __init__(self, data: DataSpec, latent_dim: int, latent_skip: bool):
        super().__init__(data, latent_skip, output_layer=1)

    def forward(self, x, z):
        raise AssertionError("never reached: the class is refused when it is built")


class EncoderWithoutForward(Encoder):
    def __init__(self, data: DataSpec, latent_dim: int):
        super().__init__()


class ScheduleWithoutWeight(KLSchedule):
    pass


DATA = DataSpec(dims=(1, 28, 28))


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: DecoderWithoutSample(DATA, 2, True),
            "DecoderWithoutSample does not define sample(), which every Decoder",
        ),
        (
            lambda: EncoderWithoutForward(DATA, 2),
            "EncoderWithoutForward does not define forward(), which every Encoder",
        ),
        (lambda: ScheduleWithoutWeight(), "ScheduleWithoutWeight does not define weight(), which every KLSchedule"),
    ],
)
def test_an_incomplete_class_is_refused_when_built(build, message):
    with pytest.raises(IncompleteClassError, match=re.escape(message)):
        build()


def test_a_factorised_decoder_samples_from_its_base():
    import torch

    from examples.tiny_decoder import TinyDecoder

    assert "sample" not in vars(TinyDecoder) and TinyDecoder.sample is FactorisedImageDecoder.sample
    torch.manual_seed(0)
    decoder = TinyDecoder(DATA, 3, True)
    z = torch.randn(5, 3)
    drawn = decoder.sample(z)
    assert drawn.shape == (5, 1, 28, 28) and set(drawn.unique().tolist()) <= {0.0, 1.0}
    greedy = decoder.sample(z, greedy=True)
    assert torch.equal(greedy, (torch.sigmoid(decoder(None, z)) > 0.5).float())


@pytest.mark.parametrize("network", ["decoder", "encoder"])
def test_main_refuses_an_incomplete_network_in_one_line(tmp_path, capsys, network):
    incomplete = {"decoder": "DecoderWithoutSample", "encoder": "EncoderWithoutForward"}[network]
    args = ["fit", "--config", str(ROOT / "configs/mnist_skipvae_mlp.yaml")]
    args += [f"--model.init_args.{network}", f"test_examples.{incomplete}"]
    exit = main_exit([*args, "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")], capsys)
    line = error_line(exit)
    method = "sample()" if network == "decoder" else "forward()"
    assert exit.returncode == 1 and line.startswith(f"error: {incomplete} does not define {method}"), exit.stderr
    assert len(line) < 200 and "Traceback" not in exit.stderr and not (tmp_path / "logs").exists()
