"""Encoders, the KL warm-up, sampling from the MLP and LSTM decoders, the callbacks' contract and checkpoint identity,
each on small networks without a Trainer."""

from functools import partial

import pytest
import torch
from helpers import TEXT_FORMAT, checkpoint_of, on_fake_trainer, tiny
from lightning.fabric.utilities.exceptions import MisconfigurationException
from test_refusals import checkpoint_file

from datamodules import MNISTDataModule, OmniglotDataModule, YahooDataModule
from diagnostics.contract import LabeledData, TextData
from models import VAE, SkipVAE
from models.contract import LatentVariableModel
from models.kl_schedule import LinearWarmup
from models.refinement import SVI
from networks.contract import DataSpec
from networks.decoders import MLPDecoder
from networks.encoders import LSTMEncoder, MLPEncoder, ResidualConvEncoder
from networks.text_decoders import LSTMDecoder
from runtime.checkpoint_identity import NETWORK_SETTINGS, CheckpointMismatchError, checkpoint_mismatches

IMAGES, TEXT = DataSpec((1, 28, 28)), DataSpec((11,), TEXT_FORMAT)


class TestEncoders:
    def test_residual_conv_encoder_downsamples_to_a_gaussian(self):
        encoder = ResidualConvEncoder(IMAGES, latent_dim=5, channels=8)
        assert encoder.mean.in_features == 8 * 3 * 3  # 28 -> 14 -> 7 -> 3
        mean, logvar = encoder(torch.rand(4, 1, 28, 28))
        assert mean.shape == logvar.shape == (4, 5)
        assert not torch.equal(mean, logvar)

    def test_residual_conv_encoder_output_depends_on_each_example_only(self):
        encoder = ResidualConvEncoder(IMAGES, latent_dim=5, channels=8).eval()  # BatchNorm: running stats
        x = torch.rand(3, 1, 28, 28)
        torch.testing.assert_close(encoder(x)[0][1:], encoder(x[1:])[0])

    def test_mlp_encoder(self):
        encoder = MLPEncoder(DataSpec((1, 4, 4)), latent_dim=3, hidden=7)
        mean, logvar = encoder(torch.rand(2, 1, 4, 4))
        assert mean.shape == logvar.shape == (2, 3)

    def test_lstm_encoder_reads_up_to_the_last_real_token(self):
        torch.manual_seed(0)
        encoder = LSTMEncoder(TEXT, latent_dim=3, embedding_dim=5, hidden=7).double()
        short = torch.tensor([[1, 4, 5, 2]])
        padded = torch.tensor([[1, 4, 5, 2, 0, 0], [1, 6, 7, 8, 9, 2]])
        torch.testing.assert_close(encoder(padded)[0][:1], encoder(short)[0])
        torch.testing.assert_close(encoder(padded)[1][:1], encoder(short)[1])
        assert not torch.allclose(encoder(padded)[0][0], encoder(padded)[0][1])

    @pytest.mark.parametrize(
        "network, data", [(MLPEncoder, TEXT), (LSTMEncoder, IMAGES), (partial(MLPDecoder, latent_skip=False), TEXT)]
    )
    def test_a_network_refuses_data_of_another_kind(self, network, data):
        with pytest.raises(MisconfigurationException, match="is a network for"):
            network(data, 3)


class TestKLWeight:
    @staticmethod
    def model_at(step: int, kl_start: float = 0.1, warmup_epochs: float = 2, batches: int = 10) -> VAE:
        return on_fake_trainer(tiny(kl_schedule=LinearWarmup(kl_start, warmup_epochs)), step, batches)

    def test_the_paper_codes_increment_per_step(self):
        """beta = min(1, start + (step + 1) / (warm-up epochs x batches)): the paper's code adds 1 / (2 x 10)
        before each batch, so with start 0.1 beta reaches 1 at step 17, after 0.9 x 2 epochs."""
        assert self.model_at(0).kl_weight() == pytest.approx(0.15)
        assert self.model_at(9).kl_weight() == pytest.approx(0.6)
        assert self.model_at(16).kl_weight() == pytest.approx(0.95)
        assert self.model_at(17).kl_weight() == pytest.approx(1.0)
        assert self.model_at(35).kl_weight() == 1.0
        assert self.model_at(3, kl_start=0.5, warmup_epochs=1).kl_weight() == pytest.approx(0.9)

    def test_no_warmup_no_schedule_and_no_trainer_mean_one(self):
        assert self.model_at(0, warmup_epochs=0).kl_weight() == 1.0
        assert on_fake_trainer(tiny(), 0).kl_weight() == 1.0  # the default schedule
        model = self.model_at(0)
        model._trainer = None
        assert model.kl_weight() == 1.0


class TestSampling:
    def test_mlp_sample_is_bernoulli_of_the_logits(self):
        torch.manual_seed(0)
        decoder = MLPDecoder(DataSpec((1, 4, 4)), latent_dim=3, latent_skip=True, hidden=8, num_layers=2)
        z = torch.randn(5, 3)
        probs = torch.sigmoid(decoder(None, z))
        assert torch.equal(decoder.sample(z, greedy=True), (probs > 0.5).float())
        torch.manual_seed(1)
        drawn = decoder.sample(z)
        torch.manual_seed(1)
        assert torch.equal(drawn, torch.bernoulli(probs)) and drawn.shape == (5, 1, 4, 4)

    @pytest.mark.parametrize("skip", [False, True])
    def test_lstm_greedy_tokens_are_the_argmax_of_teacher_forced_logits(self, skip):
        torch.manual_seed(0)
        decoder = LSTMDecoder(
            DataSpec((9,), TEXT_FORMAT), 3, skip, embedding_dim=5, hidden=7, num_layers=2, dropout=0.0, init_range=0.3
        ).eval()
        z = torch.randn(4, 3) * 3
        tokens = decoder.sample(z, greedy=True, max_length=12)
        assert (tokens[:, 0] == decoder.bos_id).all() and tokens.shape[1] <= 13
        logits = decoder(torch.cat([tokens, torch.zeros_like(tokens[:, :1])], dim=1), z)  # logits for every step
        for row in range(4):
            steps = tokens[row, 1:]
            ended = (steps == decoder.eos_id).nonzero()
            length = int(ended[0]) + 1 if len(ended) else len(steps)
            assert torch.equal(steps[:length], logits[row, :length].argmax(-1))
            assert (steps[length:] == decoder.pad_id).all()  # padded after <eos>

    def test_lstm_sampling_stops_when_every_row_has_ended(self):
        decoder = LSTMDecoder(
            DataSpec((5,), TEXT_FORMAT), 2, False, embedding_dim=3, hidden=4, num_layers=1, dropout=0.0
        )
        with torch.no_grad():  # every step predicts <eos>
            decoder.output.weight.zero_()
            decoder.output.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0, 0.0]))
        tokens = decoder.sample(torch.randn(3, 2), max_length=20)
        assert tokens.tolist() == [[decoder.bos_id, decoder.eos_id]] * 3


class TestContract:
    @pytest.mark.parametrize("model_class", [VAE, SkipVAE])
    @pytest.mark.parametrize("refinement", [None, SVI(steps=2)], ids=["plain", "svi"])
    @pytest.mark.parametrize("kind", ["pixelcnn", "mlp", "lstm"])
    def test_every_model_class_offers_what_the_callbacks_use(self, model_class, refinement, kind):
        model = tiny(model_class, kind, refinement=refinement)
        assert isinstance(model, LatentVariableModel) and model.latent_dim == 3

    def test_datamodules_offer_labels_or_text(self):
        assert issubclass(MNISTDataModule, LabeledData) and issubclass(OmniglotDataModule, LabeledData)
        assert issubclass(YahooDataModule, TextData) and not issubclass(YahooDataModule, LabeledData)
        assert not issubclass(MNISTDataModule, TextData)


class TestCheckpointIdentity:
    def test_network_settings_are_the_arguments_that_shape_the_weights(self):
        assert set(NETWORK_SETTINGS) == {"data_dims", "latent_dim", "encoder", "decoder"}

    def test_training_settings_may_differ(self):
        other = tiny(optimizer=partial(torch.optim.SGD, lr=0.5), kl_schedule=LinearWarmup(0.2, 3))
        assert checkpoint_mismatches(other, checkpoint_of(tiny())) == []

    def test_shape_changing_settings_are_named(self):
        problems = checkpoint_mismatches(tiny(latent_dim=4, kl_schedule=LinearWarmup(0.2)), checkpoint_of(tiny()))
        assert problems == ["latent_dim=3 (configured: 4)"]  # the schedule differs too, but shapes no weight

    def test_model_class(self):
        problems = checkpoint_mismatches(tiny(VAE), checkpoint_of(tiny(SkipVAE)))
        assert problems == ["model class SkipVAE (configured: VAE)"]

    def test_refinement(self):
        problems = checkpoint_mismatches(tiny(), checkpoint_of(tiny(refinement=SVI())))
        assert problems == ["posterior refinement SVI (configured: none)"]
        assert checkpoint_mismatches(tiny(refinement=SVI(steps=3)), checkpoint_of(tiny(refinement=SVI()))) == []

    def test_foreign_checkpoint(self):
        with pytest.raises(CheckpointMismatchError, match="not written by a VAE/SkipVAE of this project"):
            checkpoint_mismatches(tiny(), {"state_dict": {}})

    @pytest.mark.parametrize(
        "saved, hparams",
        [("VAE", {"architecture": "mlp", "latent_dim": 3}), ("SkipSAVAE", {"latent_dim": 3})],
        ids=["architecture", "sa_class"],
    )
    def test_a_checkpoint_of_the_earlier_layout_is_refused_in_one_line(self, tmp_path, saved, hparams):
        checkpoint = {"state_dict": tiny().state_dict(), "hyper_parameters": hparams, "skipvae_model": {"class": saved}}
        with pytest.raises(CheckpointMismatchError, match="earlier version of this project") as refused:
            checkpoint_mismatches(tiny(), checkpoint)
        assert "\n" not in str(refused.value) and len(str(refused.value)) < 200
        path = tmp_path / "old.ckpt"
        torch.save({**checkpoint, "pytorch-lightning_version": "2.6.6"}, path)
        with pytest.raises(CheckpointMismatchError, match="earlier version of this project"):
            VAE.load_from_checkpoint(path)

    def test_a_checkpoint_of_the_earlier_module_layout_is_refused_in_one_line(self, tmp_path):
        """Its weights fit, but its networks' class paths are those of the modules before networks/ held them."""
        path = checkpoint_file(tmp_path, "earlier_modules")
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["state_dict"].keys() == tiny(SkipVAE).state_dict().keys()
        named = r"earlier module layout \(models\.encoders\.MLPEncoder, now in networks\.encoders\)"
        with pytest.raises(CheckpointMismatchError, match=named) as refused:
            checkpoint_mismatches(tiny(SkipVAE), checkpoint)
        assert "\n" not in str(refused.value) and len(str(refused.value)) < 200
        with pytest.raises(CheckpointMismatchError, match=named):
            SkipVAE.load_from_checkpoint(path)
