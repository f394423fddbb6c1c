"""Encoders, the KL warm-up, sampling from the MLP and LSTM decoders, the callbacks' contract and checkpoint identity,
each on small networks without a Trainer."""

import pytest
import torch
from helpers import on_fake_trainer, small

from callbacks.contract import LabeledData, LatentVariableModel, TextData
from datamodules import MNISTDataModule, OmniglotDataModule, YahooDataModule
from models import SAVAE, VAE, SkipSAVAE, SkipVAE
from models.decoders import LSTMDecoder, MLPDecoder
from models.encoders import LSTMEncoder, MLPEncoder, ResidualConvEncoder
from models.identity import NETWORK_SETTINGS, CheckpointMismatchError, checkpoint_mismatches

MODEL_CLASSES = [VAE, SkipVAE, SAVAE, SkipSAVAE]


class TestEncoders:
    def test_residual_conv_encoder_downsamples_to_a_gaussian(self):
        encoder = ResidualConvEncoder([1, 28, 28], latent_dim=5, channels=8)
        assert encoder.mean.in_features == 8 * 3 * 3  # 28 -> 14 -> 7 -> 3
        mean, logvar = encoder(torch.rand(4, 1, 28, 28))
        assert mean.shape == logvar.shape == (4, 5)
        assert not torch.equal(mean, logvar)

    def test_residual_conv_encoder_output_depends_on_each_example_only(self):
        encoder = ResidualConvEncoder([1, 28, 28], latent_dim=5, channels=8).eval()  # BatchNorm: running stats
        x = torch.rand(3, 1, 28, 28)
        torch.testing.assert_close(encoder(x)[0][1:], encoder(x[1:])[0])

    def test_mlp_encoder(self):
        encoder = MLPEncoder([1, 4, 4], latent_dim=3, hidden=7)
        mean, logvar = encoder(torch.rand(2, 1, 4, 4))
        assert mean.shape == logvar.shape == (2, 3)

    def test_lstm_encoder_reads_up_to_the_last_real_token(self):
        torch.manual_seed(0)
        encoder = LSTMEncoder(data_dims=[11], latent_dim=3, embedding_dim=5, hidden=7).double()
        short = torch.tensor([[1, 4, 5, 2]])
        padded = torch.tensor([[1, 4, 5, 2, 0, 0], [1, 6, 7, 8, 9, 2]])
        torch.testing.assert_close(encoder(padded)[0][:1], encoder(short)[0])
        torch.testing.assert_close(encoder(padded)[1][:1], encoder(short)[1])
        assert not torch.allclose(encoder(padded)[0][0], encoder(padded)[0][1])


class TestKLWeight:
    @staticmethod
    def model_at(step: int, kl_start: float = 0.1, warmup_epochs: float = 2, batches: int = 10) -> VAE:
        return on_fake_trainer(small(kl_start=kl_start, kl_warmup_epochs=warmup_epochs), step, batches)

    def test_the_paper_codes_increment_per_step(self):
        """beta = min(1, kl_start + (step + 1) / (warm-up epochs x batches)): the paper's code adds 1 / (2 x 10)
        before each batch, so with kl_start 0.1 beta reaches 1 at step 17, after 0.9 x 2 epochs."""
        assert self.model_at(0).kl_weight() == pytest.approx(0.15)
        assert self.model_at(9).kl_weight() == pytest.approx(0.6)
        assert self.model_at(16).kl_weight() == pytest.approx(0.95)
        assert self.model_at(17).kl_weight() == pytest.approx(1.0)
        assert self.model_at(35).kl_weight() == 1.0
        assert self.model_at(3, kl_start=0.5, warmup_epochs=1).kl_weight() == pytest.approx(0.9)

    def test_no_warmup_and_no_trainer_mean_one(self):
        assert self.model_at(0, warmup_epochs=0).kl_weight() == 1.0
        model = self.model_at(0)
        model._trainer = None
        assert model.kl_weight() == 1.0


class TestInitialisation:
    @staticmethod
    def linear_weights(model) -> list[torch.Tensor]:
        return [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def test_he_normal_linear_weights_by_default(self):
        """The paper code's image models: every linear weight N(0, 2 / fan_in); here the 20 -> 784 latent maps and
        the encoder's 576 -> 20 heads, whose sample standard deviations are checked to 5 %."""
        torch.manual_seed(0)
        model = SkipVAE()
        weights = self.linear_weights(model)
        assert len(weights) == 2 + 9  # encoder mean/logvar, one latent projection per decoder layer and the output
        for weight in weights:
            expected = (2.0 / weight.shape[1]) ** 0.5
            assert float(weight.std()) == pytest.approx(expected, rel=0.05)
            assert abs(float(weight.mean())) < 0.1 * expected

    def test_default_keeps_pytorchs_initialisation(self):
        torch.manual_seed(0)
        model = VAE(linear_init="default")
        for weight in self.linear_weights(model):  # PyTorch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in)
            assert float(weight.std()) == pytest.approx((1.0 / (3 * weight.shape[1])) ** 0.5, rel=0.05)

    def test_param_init_overrides_linear_init(self):
        model = VAE(
            architecture="mlp", latent_dim=2, encoder_hidden=4, decoder_hidden=4, decoder_layers=1, param_init=0.1
        )
        assert all(float(p.detach().abs().max()) <= 0.1 for p in model.parameters())


class TestSampling:
    def test_mlp_sample_is_bernoulli_of_the_logits(self):
        torch.manual_seed(0)
        decoder = MLPDecoder([1, 4, 4], latent_dim=3, hidden=8, num_layers=2, latent_skip=True)
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
            data_dims=[9], latent_dim=3, embedding_dim=5, hidden=7, num_layers=2, dropout=0.0, latent_skip=skip
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
            data_dims=[5], latent_dim=2, embedding_dim=3, hidden=4, num_layers=1, dropout=0.0, latent_skip=False
        )
        with torch.no_grad():  # every step predicts <eos>
            decoder.output.weight.zero_()
            decoder.output.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0, 0.0]))
        tokens = decoder.sample(torch.randn(3, 2), max_length=20)
        assert tokens.tolist() == [[decoder.bos_id, decoder.eos_id]] * 3


class TestContract:
    @pytest.mark.parametrize("model_class", MODEL_CLASSES)
    @pytest.mark.parametrize("architecture, dims", [("pixelcnn", [1, 28, 28]), ("mlp", [1, 28, 28]), ("lstm", [30])])
    def test_every_model_class_offers_what_the_callbacks_use(self, model_class, architecture, dims):
        model = model_class(
            architecture=architecture,
            data_dims=dims,
            latent_dim=3,
            encoder_hidden=8,
            decoder_layers=2,
            decoder_hidden=8,
            kernel_sizes=None,
            embedding_dim=4,
        )
        assert isinstance(model, LatentVariableModel) and model.latent_dim == 3

    def test_datamodules_offer_labels_or_text(self):
        assert issubclass(MNISTDataModule, LabeledData) and issubclass(OmniglotDataModule, LabeledData)
        assert issubclass(YahooDataModule, TextData) and not issubclass(YahooDataModule, LabeledData)


def checkpoint_of(model) -> dict:
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    return checkpoint


class TestCheckpointIdentity:
    def test_network_settings_come_from_the_network_builder(self):
        assert {"architecture", "data_dims", "latent_dim", "kernel_sizes", "embedding_dim"} <= set(NETWORK_SETTINGS)
        assert "lr" not in NETWORK_SETTINGS and "latent_skip" not in NETWORK_SETTINGS

    def test_training_settings_may_differ(self):
        assert checkpoint_mismatches(small(lr=0.5, kl_start=0.2), checkpoint_of(small())) == []

    def test_shape_changing_settings_are_named(self):
        problems = checkpoint_mismatches(small(latent_dim=4, lr=0.5), checkpoint_of(small()))
        assert problems == ["latent_dim=3 (configured: 4)"]  # lr differs too, but does not shape the networks

    def test_model_class(self):
        problems = checkpoint_mismatches(small(VAE), checkpoint_of(small(SkipVAE)))
        assert problems == ["model class SkipVAE (configured: VAE)"]

    def test_foreign_checkpoint(self):
        with pytest.raises(CheckpointMismatchError, match="not written by a VAE/SkipVAE of this project"):
            checkpoint_mismatches(small(), {"state_dict": {}})
