"""The LightningModules (VAE, SkipVAE) and the parts they are built from: the KL schedule and term, the training
procedure, the posterior refinement (SA-VAE's SVI), the remedies, and the text models' learning-rate schedule.
SA-VAE and Skip-SA-VAE are VAE and SkipVAE with the SVI refinement part (`models/refinement.py`).
"""

from models.vae import VAE, SkipVAE

__all__ = ["VAE", "SkipVAE"]
