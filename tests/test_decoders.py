"""The skip-decoder backbone: autoregressive causality and where the latent code enters."""

import pytest
import torch
from helpers import TEXT_FORMAT, tiny

from models import VAE, SkipVAE
from networks.contract import DataSpec
from networks.decoders import GatedPixelCNNDecoder, MLPDecoder
from networks.text_decoders import LSTMDecoder


def pixelcnn(skip: bool, kernels=(5, 3, 3), shape=(1, 8, 8)) -> GatedPixelCNNDecoder:
    torch.manual_seed(0)
    return GatedPixelCNNDecoder(
        DataSpec(shape), latent_dim=3, latent_skip=skip, channels=6, kernel_sizes=list(kernels), latent_feature_maps=2
    ).double()


class TestPixelCNNCausality:
    @pytest.mark.parametrize("skip", [False, True])
    @pytest.mark.parametrize("kernels", [(3, 3, 3), (7, 5, 3)])
    def test_logit_depends_only_on_earlier_pixels(self, skip, kernels):
        decoder = pixelcnn(skip, kernels)
        height, width = 8, 8
        x = torch.bernoulli(torch.full((1, 1, height, width), 0.5, dtype=torch.float64)).requires_grad_()
        z = torch.randn(1, 3, dtype=torch.float64)
        logits = decoder(x, z)
        for i in range(height * width):
            (grad,) = torch.autograd.grad(logits.flatten()[i], x, retain_graph=True)
            dependent = grad.flatten().abs() > 0
            assert not dependent[i:].any(), f"logit {i} depends on pixel {int(dependent[i:].nonzero()[0]) + i}"
            if i % width > 0:  # not blind to the pixel on the left or the one above
                assert dependent[i - 1]
            if i >= width:
                assert dependent[i - width]

    def test_first_logit_sees_no_pixel(self):
        decoder = pixelcnn(False)
        z = torch.randn(1, 3, dtype=torch.float64)
        a = decoder(torch.zeros(1, 1, 8, 8, dtype=torch.float64), z)[0, 0, 0, 0]
        b = decoder(torch.ones(1, 1, 8, 8, dtype=torch.float64), z)[0, 0, 0, 0]
        assert a == b

    def test_the_shifted_in_row_and_column_are_zero_as_in_the_authors_code(self):
        """The shift pads the convolution's output: the vertical stack's first row, and the first layer's horizontal
        first column, are exactly zero before the gate, whatever the convolutions' biases."""
        from networks.decoders import GatedMaskedConv2d

        torch.manual_seed(0)
        layer = GatedMaskedConv2d(2, 4, 3, mask_a=True).double()
        with torch.no_grad():
            for conv in (layer.v_conv, layer.h_conv):
                conv.bias.fill_(0.7)
            layer.v_to_h.bias.zero_()
            layer.h_out.bias.zero_()
        x = torch.randn(3, 2, 5, 6, dtype=torch.float64)
        v_pre = layer.vertical(x)
        assert (v_pre[:, :, 0] == 0).all() and (v_pre[:, :, 1:] != 0).any()
        out = layer.horizontal(x, torch.zeros_like(v_pre))  # the vertical stack's part held at zero
        assert (out[:, :, :, 0] == 0).all() and (out[:, :, :, 1:] != 0).any()


class TestPixelCNNSampling:
    @pytest.mark.parametrize("skip", [False, True])
    @pytest.mark.parametrize("greedy", [False, True])
    def test_row_wise_sampler_draws_what_full_passes_draw(self, skip, greedy):
        """`sample` reuses each row's vertical stack; drawing every pixel from a full forward pass instead
        (the definition of ancestral sampling) must give the same images from the same random stream."""
        decoder = pixelcnn(skip, kernels=(5, 3, 3), shape=(1, 6, 7))
        with torch.no_grad():
            decoder.output.weight.mul_(3)  # logits that vary with the pixels above and to the left
            decoder.output.bias.zero_()
        z = torch.randn(3, 3, dtype=torch.float64)
        torch.manual_seed(1)
        fast = decoder.sample(z, greedy=greedy)
        torch.manual_seed(1)
        slow = torch.zeros(3, 1, 6, 7, dtype=torch.float64)
        with torch.no_grad():
            for row in range(6):
                for col in range(7):
                    probs = torch.sigmoid(decoder(slow, z)[:, :, row, col].float())
                    slow[:, :, row, col] = (probs > 0.5).double() if greedy else torch.bernoulli(probs).double()
        assert torch.equal(fast.double(), slow)
        if not greedy:
            assert 0 < slow.mean() < 1  # not a degenerate all-0 or all-1 draw


class TestLatentRouting:
    @staticmethod
    def _layer_inputs_with_latent(decoder: GatedPixelCNNDecoder) -> list[int]:
        """Indices of layers whose input channels include the z maps (layer L = output conv)."""
        widths = [layer.v_conv.in_channels for layer in decoder.layers] + [decoder.output.in_channels]
        base = [1] + [6] * len(decoder.layers)
        return [i for i, (w, b) in enumerate(zip(widths, base)) if w == b + decoder.maps_of(i)]

    def test_vae_feeds_first_layer_only_and_skipvae_every_layer(self):
        assert self._layer_inputs_with_latent(pixelcnn(False)) == [0]
        assert self._layer_inputs_with_latent(pixelcnn(True)) == [0, 1, 2, 3]

    def test_output_layer_takes_one_latent_map_whatever_the_gated_layers_take(self):
        decoder = pixelcnn(True)  # two maps per gated layer
        assert decoder.layers[1].v_conv.in_channels == 6 + 2
        assert decoder.output.in_channels == 6 + 1
        assert decoder.latent_maps["3"].out_features == 1 * 8 * 8

    @pytest.mark.parametrize("skip", [False, True])
    def test_z_reaches_output_without_first_layer_only_when_skipping(self, skip):
        decoder = pixelcnn(skip)
        with torch.no_grad():
            decoder.latent_maps["0"].weight.zero_()
        z = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        x = torch.bernoulli(torch.full((2, 1, 8, 8), 0.5, dtype=torch.float64))
        (grad,) = torch.autograd.grad(decoder(x, z).sum(), z)
        assert (grad.abs().sum() > 0) == skip

    @pytest.mark.parametrize("skip", [False, True])
    def test_every_latent_projection_gets_gradient(self, skip):
        decoder = pixelcnn(skip)
        z = torch.randn(2, 3, dtype=torch.float64)
        x = torch.bernoulli(torch.full((2, 1, 8, 8), 0.5, dtype=torch.float64))
        decoder(x, z).sum().backward()
        assert sorted(decoder.latent_maps.keys(), key=int) == (["0", "1", "2", "3"] if skip else ["0"])
        for projection in decoder.latent_maps.values():
            assert projection.weight.grad.abs().sum() > 0

    def test_lightning_modules_differ_only_in_latent_skip(self):
        vae, skip = tiny(VAE, "pixelcnn"), tiny(SkipVAE, "pixelcnn")
        assert not vae.decoder.latent_skip and skip.decoder.latent_skip
        extra = set(skip.state_dict()) - set(vae.state_dict())
        assert extra == {f"decoder.latent_maps.{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
        assert set(vae.state_dict()) <= set(skip.state_dict())


class TestMLPDecoder:
    @pytest.mark.parametrize("skip", [False, True])
    def test_z_enters_hidden_layers_only_when_skipping(self, skip):
        torch.manual_seed(0)
        decoder = MLPDecoder(DataSpec((1, 4, 4)), latent_dim=3, latent_skip=skip, hidden=8, num_layers=2)
        assert sorted(decoder.latent.keys()) == (["1", "2"] if skip else [])
        with torch.no_grad():
            decoder.input.weight.zero_()
        z = torch.randn(2, 3, requires_grad=True)
        (grad,) = torch.autograd.grad(decoder(None, z).sum(), z)
        assert (grad.abs().sum() > 0) == skip

    def test_skip_model_output_layer_has_no_latent_input(self):
        """As in the paper code's MLP model: with every path through the hidden layers cut, z has no effect."""
        torch.manual_seed(0)
        decoder = MLPDecoder(DataSpec((1, 4, 4)), latent_dim=3, latent_skip=True, hidden=8, num_layers=2)
        assert not decoder.takes_latent(3) and decoder.takes_latent(2)
        with torch.no_grad():
            decoder.hidden[-1].weight.zero_()
            decoder.latent["2"].weight.zero_()
        z = torch.randn(2, 3, requires_grad=True)
        (grad,) = torch.autograd.grad(decoder(None, z).sum(), z)
        assert grad.abs().sum() == 0


class TestLSTMDecoder:
    def decoder(self, skip: bool, layers: int = 2) -> LSTMDecoder:
        torch.manual_seed(0)
        return LSTMDecoder(
            DataSpec((11,), TEXT_FORMAT),
            3,
            skip,
            embedding_dim=5,
            hidden=7,
            num_layers=layers,
            dropout=0.0,
            init_range=0.3,
        ).double()

    @pytest.mark.parametrize("skip", [False, True])
    def test_logits_at_t_ignore_tokens_at_or_after_t(self, skip):
        decoder = self.decoder(skip)
        tokens = torch.tensor([[1, 4, 5, 6, 7, 8, 2]])
        z = torch.randn(1, 3, dtype=torch.float64)
        embedded = decoder.embedding(tokens[:, :-1]).detach().requires_grad_()
        decoder.embedding.forward = lambda _: embedded  # feed the embeddings we take gradients against
        logits = decoder(tokens, z)
        steps = logits.shape[1]
        for t in range(steps):
            (grad,) = torch.autograd.grad(logits[0, t].sum(), embedded, retain_graph=True)
            per_input = grad[0].abs().sum(-1)
            assert (per_input[t + 1 :] == 0).all()
            assert (per_input[: t + 1] > 0).all()

    @pytest.mark.parametrize("skip", [False, True])
    def test_z_enters_upper_layers_and_output_only_when_skipping(self, skip):
        decoder = self.decoder(skip)
        assert decoder.lstms[1].input_size == 7 + (3 if skip else 0)
        assert decoder.output.in_features == 7 + (3 if skip else 0)
        assert decoder.lstms[0].input_size == 5 + 3  # both models append z to every input embedding

    @pytest.mark.parametrize("layers", [1, 2])
    def test_linear_z_is_the_last_layers_initial_hidden_state(self, layers):
        """h0 = Linear(z) enters the last LSTM layer (the paper code sets h0[-1]); the others start at zero."""
        decoder = self.decoder(False, layers)
        seen = []
        for lstm in decoder.lstms:
            lstm.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
        z = torch.randn(2, 3, dtype=torch.float64)
        decoder(torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0]]), z)
        h0, c0 = seen[-1]
        torch.testing.assert_close(h0[0], decoder.initial_hidden(z))
        assert (c0 == 0).all()
        assert all(state is None for state in seen[:-1])  # PyTorch's zero initial state

    def test_log_prob_ignores_padding(self):
        decoder = self.decoder(True)
        z = torch.randn(1, 3, dtype=torch.float64)
        short = torch.tensor([[1, 4, 5, 2]])
        padded = torch.tensor([[1, 4, 5, 2, 0, 0]])
        torch.testing.assert_close(decoder.log_prob(short, z), decoder.log_prob(padded, z))
