"""The Transformer decoder: causal by gradients, z where the VAE and the SkipVAE put it (as an input or as a memory
slot), padding that counts for nothing, a cached sampler that draws what full recomputation draws, SA-VAE's exact
reverse pass through attention, the length limit checked against the data; and its experiments under DDP and bf16.
(Its experiments' fit, resume, test, predict and reload, and every remedy with it: the generic tests.)"""

from functools import partial

import pytest
import torch
from helpers import TEXT_FORMAT, callbacks_config, config_args, logging_args, run_main, tiny
from lightning.fabric.utilities.exceptions import MisconfigurationException
from test_svi import unrolled_gradients

from models import VAE, SkipVAE
from models.refinement import SVI
from networks.contract import DataSpec
from networks.encoders import LSTMEncoder
from networks.transformer_decoder import TransformerDecoder

TEXT = DataSpec((11,), TEXT_FORMAT)
INJECTIONS = ["input", "memory"]


def decoder(skip: bool, latent_as: str = "input", layers: int = 3, dropout: float = 0.0) -> TransformerDecoder:
    torch.manual_seed(0)
    settings = dict(
        num_layers=layers, embedding_dim=8, heads=2, hidden=16, dropout=dropout, max_length=30, latent_as=latent_as
    )
    return TransformerDecoder(TEXT, 3, skip, **settings).double()


def documents() -> torch.Tensor:
    """Two documents, the second padded."""
    return torch.tensor([[1, 4, 5, 6, 7, 8, 2], [1, 9, 10, 2, 0, 0, 0]])


@pytest.mark.parametrize("latent_as", INJECTIONS)
@pytest.mark.parametrize("skip", [False, True])
def test_the_logits_of_a_token_do_not_see_it_or_what_follows(skip, latent_as):
    """The log-likelihood of token t has zero gradient with respect to the inputs at t and after (the input at t is
    token t - 1's embedding: the logits at position t predict token t + 1)."""
    model = decoder(skip, latent_as)
    tokens = documents()[:1]
    z = torch.randn(1, 3, dtype=torch.float64)
    embedded = model.token_embedding(tokens[:, :-1]).detach().requires_grad_()
    model.token_embedding.forward = lambda _: embedded  # feed the embeddings we take gradients against
    logits = model(tokens, z)
    for t in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[0, t].sum(), embedded, retain_graph=True)
        per_input = grad[0].abs().sum(-1)
        assert (per_input[t + 1 :] == 0).all() and (per_input[: t + 1] > 0).all(), t


@pytest.mark.parametrize("latent_as", INJECTIONS)
def test_z_enters_the_first_block_in_the_vae_and_every_layer_in_the_skip_model(latent_as):
    vae, skip = decoder(False, latent_as), decoder(True, latent_as)
    assert list(vae.latent) == ["0"] and list(skip.latent) == ["0", "1", "2", "3"]  # blocks 0-2, output layer 3
    z = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    for model, gets_z in ((vae, False), (skip, True)):
        with torch.no_grad():
            model.latent["0"].weight.zero_()  # cut the first block's path
            model.latent["0"].bias.zero_()
        (grad,) = torch.autograd.grad(model(documents(), z).sum(), z)
        assert bool(grad.abs().sum() > 0) is gets_z  # the VAE's other layers see z only through block 0


@pytest.mark.parametrize("latent_as", INJECTIONS)
def test_each_skip_projection_reaches_the_logits_directly(latent_as):
    """Every block's and the output layer's own projection of z gets a gradient, and the output layer's reaches the
    logits without any block (its gradient stays when every block's path from z is cut)."""
    model = decoder(True, latent_as)
    model(documents(), torch.randn(2, 3, dtype=torch.float64)).sum().backward()
    assert all(float(p.weight.grad.abs().sum()) > 0 for p in model.latent.values())
    with torch.no_grad():
        for i in ("0", "1", "2"):
            model.latent[i].weight.zero_()
            model.latent[i].bias.zero_()
    z = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(model(documents(), z).sum(), z)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("latent_as", INJECTIONS)
def test_padding_counts_in_no_log_likelihood(latent_as):
    model = decoder(True, latent_as)
    z = torch.randn(1, 3, dtype=torch.float64)
    short, padded = torch.tensor([[1, 9, 10, 2]]), documents()[1:]
    torch.testing.assert_close(model.log_prob(padded, z), model.log_prob(short, z))
    other_padding = padded.clone()
    other_padding[0, 4:] = 7  # whatever follows <eos> changes nothing
    torch.testing.assert_close(
        model.log_prob(other_padding.masked_fill(other_padding == 7, 0), z), model.log_prob(short, z)
    )


def recomputed_sample(model: TransformerDecoder, z: torch.Tensor, greedy: bool, max_length: int) -> torch.Tensor:
    """Sampling by definition: every token from a full pass over the document so far, no cache."""
    tokens = torch.full((len(z), 1), model.bos_id, dtype=torch.long)
    done = torch.zeros(len(z), dtype=torch.bool)
    for _ in range(max_length):
        logits = model.decode_steps(tokens, z)[0][:, -1].float()
        step = logits.argmax(-1) if greedy else torch.multinomial(torch.softmax(logits, -1), 1).squeeze(1)
        step = torch.where(done, torch.full_like(step, model.pad_id), step)
        tokens = torch.cat([tokens, step.unsqueeze(1)], dim=1)
        done |= step == model.eos_id
        if bool(done.all()):
            break
    return tokens


@pytest.mark.parametrize("latent_as", INJECTIONS)
@pytest.mark.parametrize("greedy", [True, False])
def test_the_cached_sampler_draws_what_full_recomputation_draws(latent_as, greedy):
    model = decoder(True, latent_as).eval()
    with torch.no_grad():
        model.output.weight.mul_(40)  # logits that depend on the tokens before
    z = torch.randn(5, 3, dtype=torch.float64)
    torch.manual_seed(3)
    cached = model.sample(z, greedy=greedy, max_length=12)
    torch.manual_seed(3)
    assert torch.equal(cached, recomputed_sample(model, z, greedy, 12))
    assert cached.shape[1] > 3 and len(set(map(tuple, cached.tolist()))) > 1  # not a degenerate draw


def test_sampling_stops_at_the_longest_document_the_decoder_predicts():
    model = TransformerDecoder(
        DataSpec((11,), TEXT_FORMAT), 3, False, num_layers=1, embedding_dim=8, heads=2, hidden=16, max_length=30
    )
    with torch.no_grad():
        model.output.bias[model.eos_id] = -1e4  # never ends by itself
    assert model.sample(torch.randn(2, 3), max_length=100).shape == (2, 1 + 30)


def test_a_document_longer_than_max_length_is_refused_when_the_decoder_is_built():
    with pytest.raises(
        MisconfigurationException,
        match="predicts at most max_length=20 tokens of a document, and the data holds one of 30",
    ):
        TransformerDecoder(TEXT, 3, False, max_length=20)
    with pytest.raises(MisconfigurationException, match="not a multiple of heads"):
        TransformerDecoder(TEXT, 3, False, embedding_dim=10, heads=4)


@pytest.mark.parametrize("model_class", [VAE, SkipVAE])
def test_the_exact_svi_reverse_pass_through_attention(model_class):
    """SA-VAE's `exact` mode needs double backward through attention: its gradients equal autograd through the whole
    unrolled SVI (float64, clipping active)."""
    networks = dict(
        encoder=partial(LSTMEncoder, embedding_dim=4, hidden=6),
        decoder=partial(
            TransformerDecoder, num_layers=2, embedding_dim=8, heads=2, hidden=16, dropout=0.2, max_length=30
        ),
    )
    svi = SVI(steps=2, max_grad_norm=0.05, hessian_products="exact")
    model = tiny(model_class, "lstm", data_dims=[11], refinement=svi, **networks).double()
    x = documents()
    torch.manual_seed(7)
    surrogate, _ = model.refinement.training_loss(model, x, beta=0.7)
    ours = torch.autograd.grad(surrogate, list(model.parameters()), allow_unused=True)
    torch.manual_seed(7)
    reference, norms = unrolled_gradients(model, x, beta=0.7)
    assert max(norms) > 0.05  # clipping was active
    for (name, _), a, b in zip(model.named_parameters(), ours, reference):
        b = torch.zeros_like(a) if b is None else b
        assert float((a - b).norm() / b.norm().clamp_min(1e-30)) < 1e-10, name


@pytest.mark.integration
def test_two_processes_in_bf16_keep_the_replicas_identical(tmp_path, fixture_data_dir):
    """The Transformer experiment with the ddp and bf16 presets: two gloo processes end with the same weights, and the
    metrics gathered from both are finite."""
    extra = callbacks_config(tmp_path / "cb.yaml", "class_path: helpers.AssertReplicasAgree")
    result = run_main(
        [
            "fit",
            *config_args(
                "yahoo_skipvae_transformer.yaml", "presets/debug.yaml", "presets/ddp.yaml", "presets/bf16.yaml"
            ),
            *extra,
            *logging_args(tmp_path),
            "--trainer.accelerator",
            "cpu",
            "--data.init_args.data_dir",
            str(fixture_data_dir),
            "--data.init_args.check_file",
            "false",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr
