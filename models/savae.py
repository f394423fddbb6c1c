"""The semi-amortized VAE (SA-VAE; Kim, Wiseman, Miller, Sontag and Rush, 2018) and Skip-SA-VAE: VAE and SkipVAE
with the SVI refinement part (`models/refinement.py`) built from flat `svi_*` settings, as the paper's SA
experiment configs give them.
"""

from typing import ClassVar, Literal

from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, PositiveFloat
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from models.refinement import SVI, PosteriorRefinement
from models.svi import HessianProducts
from models.vae import VAE


class SAVAE(VAE):
    """VAE whose posterior is refined by `svi_steps` SVI steps (`models.refinement.SVI`, which says what is trained
    and logged); with `svi_steps: 0` it is exactly the VAE."""

    def __init__(
        self,
        svi_steps: NonNegativeInt = 20,
        svi_lr: PositiveFloat = 1.0,
        svi_momentum: ClosedUnitInterval = 0.5,
        svi_max_grad_norm: NonNegativeFloat = 5.0,
        svi_hessian_products: HessianProducts = "exact",
        diagnostics_posterior: Literal["encoder", "refined"] = "encoder",
        **kwargs,
    ):
        """
        Args:
            svi_steps: K, SVI steps per batch (0: the VAE).
            svi_lr: SVI learning rate of the mean and the log-variance, on the batch-mean loss.
            svi_momentum: heavy-ball momentum of the SVI steps.
            svi_max_grad_norm: the gradients of the mean and of the log-variance are each clipped to this norm over
                the batch at every step (0: no clipping).
            svi_hessian_products: how the reverse pass through the steps is computed (see `models/svi.py`):
                "exact" (double backward: the gradient of the forward algorithm; recommended for new work),
                "official" (the SA-VAE authors' finite differences with their three extra clips, which produced the
                published SA-VAE and Skip-SA-VAE numbers; the experiment configs of the paper use it) or
                "finite_difference" (finite differences of the exact products, r = 1e-5, float32).
            diagnostics_posterior: the posterior of the latent diagnostics (MI, AU, per-dimension KL): the
                encoder's (the paper code's image models) or the refined one (its text models).
        """
        if kwargs.get("refinement") is not None:
            raise MisconfigurationException(
                f"{type(self).__name__} refines its posterior with its svi_* settings; to choose a refinement part, "
                "use VAE or SkipVAE with model.init_args.refinement"
            )
        super().__init__(**kwargs)

    def default_refinement(self) -> PosteriorRefinement | None:
        settings = self.hparams
        return SVI(
            settings.svi_steps,
            settings.svi_lr,
            settings.svi_momentum,
            settings.svi_max_grad_norm,
            settings.svi_hessian_products,
            settings.diagnostics_posterior,
        )


class SkipSAVAE(SAVAE):
    """Skip-SA-VAE: the SA-VAE with z fed to every decoder layer and to the output layer, as in SkipVAE."""

    latent_skip: ClassVar[bool] = True
