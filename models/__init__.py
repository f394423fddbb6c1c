"""The VAE and Skip-VAE LightningModules and the networks they are built from."""

from models.vae import VAE, SkipVAE

__all__ = ["VAE", "SkipVAE"]
