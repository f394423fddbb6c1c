"""Callbacks: latent diagnostics (KL, MI, AU, IW-NLL, perplexity) and sample/reconstruction logging."""
