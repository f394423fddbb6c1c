"""Callbacks: latent diagnostics (KL, MI, AU, IW-NLL, perplexity, probe), sample logging, the text models'
learning-rate schedule, and the run guards every model gets (non-finite steps, random states in checkpoints)."""
