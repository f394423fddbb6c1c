"""SA-VAE's SVI refinement: its gradients against a full autograd unroll, 0 steps is the VAE, and the steps
lower the batch loss of a trained model."""

from functools import partial

import pytest
import torch
from helpers import on_fake_trainer, tiny, tiny_networks

from models import VAE, SkipVAE
from models.kl_schedule import LinearWarmup
from models.refinement import SVI
from models.svi import TF32_BACKENDS, ClipCounts, seeded
from networks.decoders import MLPDecoder
from networks.distributions import gaussian_kl_per_dim
from networks.encoders import MLPEncoder


def small_model(model_class, architecture: str, refined: bool = True, **svi):
    """A tiny MLP (on 4x4 images), PixelCNN (on 8x8 images) or LSTM model (PyTorch's initialisation) in float64 with
    the SVI part of settings `svi` (none when not `refined`)."""
    if architecture == "mlp":
        settings = {"data_dims": [1, 4, 4]}
    elif architecture == "pixelcnn":
        settings = {}
    else:
        networks = tiny_networks("lstm")
        settings = {key: partial(networks[key], init_range=0.0) for key in ("encoder", "decoder")}
    refinement = SVI(**svi) if refined else None
    return tiny(model_class, architecture, refinement=refinement, **settings).double()


def example_batch(architecture: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if architecture == "lstm":
        tokens = torch.randint(3, 9, (5, 7), generator=generator)
        tokens[:, 0], tokens[:, -1], tokens[3:, 5:] = 1, 2, 0  # <bos> .. <eos>, two padded rows
        tokens[3:, 4] = 2
        return tokens
    side = 8 if architecture == "pixelcnn" else 4
    return torch.bernoulli(torch.full((5, 1, side, side), 0.4, dtype=torch.float64), generator=generator)


def unrolled_gradients(model: VAE, x: torch.Tensor, beta: float) -> tuple[list[torch.Tensor], list[float]]:
    """d L(lambda_K) / d parameters by autograd through every SVI step (create_graph), drawing the random numbers
    in the order the implementation does; also the norms of the unclipped SVI gradients."""
    svi, norms = model.refinement.svi, []
    mean, logvar = model.encode(x)
    momentum = [torch.zeros_like(mean), torch.zeros_like(logvar)]
    objective = model.refinement.objective(model, x, beta)
    for _ in range(svi.steps):
        seed = int(torch.randint(2**62, ()))
        with seeded(seed, mean.device):
            loss = objective(mean, logvar)
        grads = torch.autograd.grad(loss, (mean, logvar), create_graph=True)
        norms += [float(g.detach().norm()) for g in grads]
        grads = [g * torch.clamp(svi.max_grad_norm / g.norm(), max=1.0) for g in grads]
        momentum = [svi.momentum * p - g for p, g in zip(momentum, grads)]
        mean, logvar = mean + svi.lr * momentum[0], logvar + svi.lr * momentum[1]
    terms = model.elbo_terms(x, mean, logvar, torch.randn_like(mean))
    loss = (terms["recon"] + beta * terms["kl"]).mean()
    return list(torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)), norms


@pytest.mark.parametrize("architecture", ["mlp", "lstm"])
@pytest.mark.parametrize("model_class", [VAE, SkipVAE])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("hessian_products", ["exact", "finite_difference"])
def test_gradients_equal_a_full_unroll(architecture, model_class, steps, hessian_products):
    """Exact products agree to rounding; one-sided finite differences (r = 1e-5) carry an O(r) error, which in
    float64 on these models is below 1e-7 (measured up to 3e-8)."""
    model = small_model(model_class, architecture, steps=steps, max_grad_norm=0.05, hessian_products=hessian_products)
    x = example_batch(architecture)
    torch.manual_seed(7)
    surrogate, logs = model.refinement.training_loss(model, x, beta=0.7)
    exact = torch.autograd.grad(surrogate, list(model.parameters()), allow_unused=True)
    torch.manual_seed(7)
    reference, norms = unrolled_gradients(model, x, beta=0.7)
    assert max(norms) > 0.05  # clipping was active
    for (name, _), ours, theirs in zip(model.named_parameters(), exact, reference):
        theirs = torch.zeros_like(ours) if theirs is None else theirs
        error = (ours - theirs).norm() / theirs.norm().clamp_min(1e-30)
        assert error < (1e-10 if hessian_products == "exact" else 1e-6), (name, float(error))
    encoder = [g for (name, _), g in zip(model.named_parameters(), exact) if name.startswith("encoder")]
    assert all(g.abs().sum() > 0 for g in encoder)  # the encoder learns through the steps


@pytest.mark.parametrize("architecture", ["mlp", "lstm"])
def test_zero_steps_is_the_vae(architecture):
    savae, vae = small_model(VAE, architecture, steps=0), small_model(VAE, architecture, refined=False)
    x = example_batch(architecture)
    torch.manual_seed(3)
    surrogate, logs = savae.refinement.training_loss(savae, x, beta=0.4)
    ours = torch.autograd.grad(surrogate, list(savae.parameters()))
    torch.manual_seed(3)
    out = vae(x)
    loss = (out["recon"] + 0.4 * out["kl"]).mean()
    theirs = torch.autograd.grad(loss, list(vae.parameters()))
    assert float(logs["loss"]) == pytest.approx(float(loss.detach()), rel=1e-12)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.real_data
def test_svi_lowers_the_batch_loss_of_a_trained_model(mnist_dir):
    from datamodules import MNISTDataModule

    data = MNISTDataModule(data_dir=str(mnist_dir.parent), download=False)
    data.setup("fit")
    x = data.datasets["val"].x[:500].float().div(255)
    torch.manual_seed(0)
    model = tiny(
        encoder=partial(MLPEncoder, hidden=64),
        decoder=partial(MLPDecoder, hidden=64, num_layers=1),
        latent_dim=8,
        refinement=SVI(),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):  # a short amortized (VAE) training: the encoder's posterior is good, not optimal
        out = model(x[step % 10 * 50 : step % 10 * 50 + 50])
        optimizer.zero_grad()
        (out["recon"] + out["kl"]).mean().backward()
        optimizer.step()
    batch = x[:50]
    with torch.no_grad():
        mean, logvar = model.encode(batch)
    objective = model.refinement.objective(model, batch, beta=1.0)
    refined_mean, refined_logvar, _ = model.refinement.svi.refine(objective, mean, logvar)

    def expected_loss(m, lv):  # f with the same 200 noise draws for both posteriors
        with torch.no_grad(), seeded(11, m.device):
            return sum(float(objective(m, lv)) for _ in range(200)) / 200

    before, after = expected_loss(mean, logvar), expected_loss(refined_mean, refined_logvar)
    assert after < before - 0.5, (before, after)


def authors_clip(tensors: list[torch.Tensor], max_norm: float) -> tuple[list[torch.Tensor], bool]:
    """The SA-VAE authors' clip: one norm over all tensors, scaled by max_norm / (norm + 1e-6) when that is < 1;
    also whether it fired."""
    coefficient = max_norm / (float(sum(float(t.norm()) ** 2 for t in tensors)) ** 0.5 + 1e-6)
    return ([t * coefficient for t in tensors], True) if coefficient < 1 else (tensors, False)


def official_reference(
    model: VAE, x: torch.Tensor, beta: float
) -> tuple[list[torch.Tensor], list[int], list[torch.Tensor]]:
    """The authors' SA-VAE gradients (optim_n2n.py's forward_mom and backward_mom) as a plain loop, drawing the
    random numbers in the order the implementation does, over the authors' parameter set (`model.dec`: the decoder
    without what their model keeps outside it, which gets the gradient of the loss at lambda_K only); also how many
    reverse steps had each extra clip active, and the gradient at lambda_K of the parameters outside."""
    svi, r = model.refinement.svi, 1e-5
    c = svi.max_grad_norm
    outside = model.decoder.outside_authors_decoder()
    decoder = [p for p in model.decoder.parameters() if all(p is not o for o in outside)]
    objective = model.refinement.objective(model, x, beta)

    def gradients_at(point: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
        mean, logvar = (t.detach().clone().requires_grad_() for t in point)
        with seeded(seed, mean.device):
            loss = objective(mean, logvar)
        return list(torch.autograd.grad(loss, [mean, logvar, *decoder]))

    mean0, logvar0 = model.encode(x)
    point, velocity, cache = [mean0.detach(), logvar0.detach()], [torch.zeros_like(mean0)] * 2, []
    for _ in range(svi.steps):  # forward_mom
        seed = int(torch.randint(2**62, ()))
        g = gradients_at(point, seed)
        g_lambda = [authors_clip([g[0]], c)[0][0], authors_clip([g[1]], c)[0][0]]
        cache.append((point, seed, g_lambda, g[2:]))  # lambda-gradients clipped, parameter gradients not
        velocity = [svi.momentum * p - g_k for p, g_k in zip(velocity, g_lambda)]
        point = [lam + svi.lr * p for lam, p in zip(point, velocity)]
    mean_k, logvar_k = (t.detach().clone().requires_grad_() for t in point)
    terms = model.elbo_terms(x, mean_k, logvar_k, torch.randn_like(mean_k))
    loss = (terms["recon"] + beta * terms["kl"]).mean()
    final = torch.autograd.grad(loss, [mean_k, logvar_k, *decoder, *outside])
    a_lambda, decoder_grads, outside_grads = (
        list(final[:2]),
        list(final[2 : 2 + len(decoder)]),
        final[2 + len(decoder) :],
    )
    a_p, fired = [torch.zeros_like(mean0)] * 2, [0, 0, 0]
    for point_k, seed, g_lambda, g_params in reversed(cache):  # backward_mom
        a_p = [p + svi.lr * a for p, a in zip(a_p, a_lambda)]
        perturbed, on = authors_clip(gradients_at([lam + r * v for lam, v in zip(point_k, a_p)], seed), c)
        fired[0] += on
        h_params, on = authors_clip([(g - base) / r for g, base in zip(perturbed[2:], g_params)], c)
        fired[1] += on
        decoder_grads = [d - h for d, h in zip(decoder_grads, h_params)]
        h_lambda = [(g - base) / r for g, base in zip(perturbed[:2], g_lambda)]
        a_lambda, on = authors_clip([a - h for a, h in zip(a_lambda, h_lambda)], c)
        fired[2] += on
        a_p = [svi.momentum * p for p in a_p]
    encoder_params = list(model.encoder.parameters())
    encoder_grads = torch.autograd.grad((mean0 * a_lambda[0]).sum() + (logvar0 * a_lambda[1]).sum(), encoder_params)
    by_param = dict(zip(map(id, encoder_params), encoder_grads)) | dict(zip(map(id, decoder), decoder_grads))
    by_param |= dict(zip(map(id, outside), outside_grads))
    return [by_param[id(p)] for p in model.parameters()], fired, list(outside_grads)


def model_gradients(model: VAE, x: torch.Tensor, beta: float) -> list[torch.Tensor]:
    torch.manual_seed(7)
    surrogate, _ = model.refinement.training_loss(model, x, beta)
    return list(torch.autograd.grad(surrogate, list(model.parameters())))


@pytest.mark.parametrize("architecture", ["mlp", "lstm", "pixelcnn"])
@pytest.mark.parametrize("model_class", [VAE, SkipVAE])
def test_official_mode_is_the_authors_reverse_pass(architecture, model_class):
    """On the authors' parameter set: for the Skip-PixelCNN without the output layer's projection of z, which their
    model keeps outside `model.dec` and which gets its gradient at lambda_K only."""
    steps = 4
    model = small_model(model_class, architecture, steps=steps, max_grad_norm=0.05, hessian_products="official")
    x = example_batch(architecture)
    model.refinement.svi.clip_counts = ClipCounts()
    ours = model_gradients(model, x, beta=0.7)
    torch.manual_seed(7)
    reference, fired, outside_at_lambda_k = official_reference(model, x, beta=0.7)
    assert fired == [steps, steps, steps]  # every extra clip was active at every reverse step
    counts = model.refinement.svi.clip_counts.read()
    assert [counts[name] for name in ("perturbed gradient", "H_theta v", "lambda adjoint")] == [
        (n, steps) for n in fired
    ]
    # A gradient that is zero up to rounding (a convolution's bias before BatchNorm) is compared at the others' scale.
    floor = 1e-9 * max(float(b.norm()) for b in reference)
    for (name, _), a, b in zip(model.named_parameters(), ours, reference):
        assert float((a - b).norm()) < 1e-6 * max(float(b.norm()), floor), name
    outside = model.decoder.outside_authors_decoder()
    assert len(outside) == (2 if architecture == "pixelcnn" and model_class is SkipVAE else 0)  # weight and bias
    by_param = {id(p): g for p, g in zip(model.parameters(), ours)}
    for param, direct in zip(outside, outside_at_lambda_k):
        torch.testing.assert_close(by_param[id(param)], direct, rtol=1e-10, atol=0)
    exact = model_gradients(
        small_model(model_class, architecture, steps=steps, max_grad_norm=0.05, hessian_products="exact"),
        x,
        beta=0.7,
    )
    encoder_gap = max(
        float((a - b).norm() / b.norm())
        for (name, _), a, b in zip(model.named_parameters(), ours, exact)
        if name.startswith("encoder")
    )
    assert encoder_gap > 0.1  # with the clips active it is not the exact gradient


@pytest.mark.parametrize("architecture", ["mlp", "lstm"])
def test_official_mode_without_active_clips_is_finite_differences(architecture):
    def gradients(mode: str) -> list[torch.Tensor]:
        model = small_model(SkipVAE, architecture, steps=3, max_grad_norm=1e6, hessian_products=mode)
        return model_gradients(model, example_batch(architecture), beta=0.7)

    for a, b in zip(gradients("official"), gradients("finite_difference")):  # the same sums in another order
        assert float((a - b).norm() / b.norm()) < 1e-6


@pytest.mark.parametrize("posterior", ["encoder", "refined"])
def test_latent_diagnostics_use_the_posterior_the_model_names(posterior):
    """The paper's text code computes MI and AU of SA models on the refined posteriors (`diagnostics_posterior`)."""
    from diagnostics.evaluation import LatentDiagnostics

    model = small_model(VAE, "lstm", steps=3, diagnostics_posterior=posterior).eval()
    tokens = example_batch("lstm")
    outputs = model.evaluate({"x": tokens, "index": torch.arange(len(tokens))})
    diagnostics = LatentDiagnostics()
    diagnostics.update(None, model, outputs, {"index": torch.arange(len(tokens))})
    diagnostics.metrics["au"].compute()
    key = "proposal_mean" if posterior == "refined" else "mean"
    torch.testing.assert_close(diagnostics.metrics["au"].variances, outputs[key].detach().double().var(0))
    assert not torch.allclose(outputs["proposal_mean"], outputs["mean"])
    # The per-dimension KL is the encoder's whatever the posterior of MI and AU (the paper's text code, `kl_dim`).
    diagnostics.metrics["kl"].compute()
    encoder_kl = gaussian_kl_per_dim(outputs["mean"].detach(), outputs["logvar"].detach()).double().mean(0)
    torch.testing.assert_close(diagnostics.metrics["kl"].per_dimension, encoder_kl)


@pytest.mark.parametrize("validation_beta, expected", [("one", 1.0), ("current", 0.6)])
@pytest.mark.parametrize("stage", ["validating", "testing"])
def test_the_kl_weight_of_the_validation_svi(validation_beta, expected, stage):
    """The paper's text code refines validation posteriors with the current KL weight (below 1 in the warm-up) and test
    posteriors with 1: `validation_beta: current`; "one" keeps the ELBO's weight in both."""
    model = small_model(VAE, "lstm", steps=2, validation_beta=validation_beta).eval()
    on_fake_trainer(model, step=4, batches=10)  # the text warm-up from 0.1 over 1 epoch: beta 0.1 + 5 / 10 at step 4
    model.kl_schedule = LinearWarmup(0.1, 1)
    model._trainer.validating = stage == "validating"
    seen = []
    objective = model.refinement.objective
    model.refinement.objective = lambda m, x, beta: seen.append(beta) or objective(m, x, beta)
    tokens = example_batch("lstm")
    model.evaluate({"x": tokens, "index": torch.arange(len(tokens))})
    assert seen == [pytest.approx(expected if stage == "validating" else 1.0)]


@pytest.mark.parametrize("hessian_products", ["official", "finite_difference", "exact"])
def test_difference_quotients_are_evaluated_without_tf32_or_autocast(hessian_products):
    """A difference at r = 1e-5 drowns in TF32's 1e-3 relative error (cuDNN's default on recent GPUs): the
    finite-difference modes evaluate their gradients in IEEE float32, and leave the run's settings as they were."""
    svi = SVI(hessian_products=hessian_products).svi
    before = [backend.fp32_precision for backend in TF32_BACKENDS]
    seen = []

    def objective(mean, logvar):
        seen.append(([backend.fp32_precision for backend in TF32_BACKENDS], torch.is_autocast_enabled("cpu")))
        return (mean**2 + logvar.exp()).sum()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        svi.refine(objective, torch.randn(2, 3), torch.zeros(2, 3))
    finite_differences = hessian_products != "exact"
    assert seen and all((precisions == ["ieee"] * 3) == finite_differences for precisions, _ in seen)
    assert all(autocast != finite_differences for _, autocast in seen)
    assert [backend.fp32_precision for backend in TF32_BACKENDS] == before


@pytest.mark.parametrize("architecture", ["pixelcnn", "lstm"])
def test_kept_step_graphs_give_the_recomputed_gradients(architecture, monkeypatch):
    """The exact reverse pass on the forward steps' own graphs equals the one that recomputes each step (bit for bit
    on a CPU); "auto" keeps them where they fit and recomputes where the first step's graph times K does not."""
    import models.svi_exact

    def gradients(step_graphs: str, kept: bool) -> list[torch.Tensor]:
        model = small_model(SkipVAE, architecture, steps=3, max_grad_norm=0.05, step_graphs=step_graphs)
        seen, reverse_step = [], model.refinement.svi.reverse_step

        def recording(trace, k, *rest):
            seen.append(trace.records[k] is not None)
            return reverse_step(trace, k, *rest)

        model.refinement.svi.reverse_step = recording
        result = model_gradients(model, example_batch(architecture), beta=0.7)
        assert seen == [kept] * 3, step_graphs
        return result

    recomputed = gradients("recompute", kept=False)
    for step_graphs in ("keep", "auto"):
        assert all(torch.equal(a, b) for a, b in zip(gradients(step_graphs, kept=True), recomputed))
    monkeypatch.setattr(models.svi_exact, "available_bytes", lambda device: 0)
    assert all(torch.equal(a, b) for a, b in zip(gradients("auto", kept=False), recomputed))
