"""What a run measures of the latent code: the diagnostics as torchmetrics (KL, MI, AU, IW-NLL, perplexity), the
callbacks that compute them on the evaluation outputs, the linear probe, the posteriors writer, and the views in
TensorBoard (reconstructions and samples, the projector, traversals and interpolations)."""
