"""The LightningModules (VAE, SkipVAE, SAVAE, SkipSAVAE) and the networks they are built from."""

from models.savae import SAVAE, SkipSAVAE
from models.vae import VAE, SkipVAE

__all__ = ["VAE", "SkipVAE", "SAVAE", "SkipSAVAE"]
