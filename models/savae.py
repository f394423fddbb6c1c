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
    and logged, and describes each setting: `svi_<name>` here is its `<name>`); with `svi_steps: 0` it is exactly
    the VAE."""

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
            svi_lr: SVI learning rate.
            svi_momentum: heavy-ball momentum of the SVI steps.
            svi_max_grad_norm: clip norm of the mean's and the log-variance's gradients (0: no clipping).
            svi_hessian_products: the reverse pass: "exact", "official" (the SA-VAE authors') or "finite_difference".
            diagnostics_posterior: the posterior of MI, AU and the per-dimension KL: "encoder" or "refined".
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
