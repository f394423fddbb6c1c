"""The LightningModules (VAE, SkipVAE) and the parts they are built from. SA-VAE and Skip-SA-VAE are VAE and SkipVAE
with the SVI refinement part (`models/refinement.py`)."""

from models.vae import VAE, SkipVAE

__all__ = ["VAE", "SkipVAE"]
