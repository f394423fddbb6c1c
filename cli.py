"""The project's LightningCLI: the data shape given once to the model, the callbacks every run has, and the
run-setup checks (`run_setup.py`) before any work starts."""

from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from callbacks.diagnostics import ImportanceWeightedEvaluation, LatentDiagnostics
from callbacks.guards import NonFiniteGuard, NonFiniteLossError
from callbacks.latent_views import LatentSpaceViews
from callbacks.posteriors import PosteriorWriter
from callbacks.probe import LatentProbe
from callbacks.samples import SampleLogger
from callbacks.schedules import HalveLearningRateAfterPlateau
from datamodules.files import DataError
from models.identity import CheckpointMismatchError
from run_setup import RunSetupError, check_devices, check_output_folders, checkpoint_bytes, continue_latest_version

# Loaded under every config: the settings all experiments share.
DEFAULTS = Path(__file__).resolve().parent / "configs" / "parts" / "defaults.yaml"

# Callbacks present in every run, each configured under its own key (`--nll_iw.num_samples 5000`), so a config or
# preset changes one setting without restating a callback list. `trainer.callbacks` adds others.
RUN_CALLBACKS = {"checkpoint": ModelCheckpoint, "diagnostics": LatentDiagnostics,
                 "nll_iw": ImportanceWeightedEvaluation, "probe": LatentProbe, "samples": SampleLogger,
                 "lr_schedule": HalveLearningRateAfterPlateau, "nonfinite": NonFiniteGuard,
                 "posteriors": PosteriorWriter, "latent_views": LatentSpaceViews}

# Bad input that `main.py` reports as one `error: ...` line (jsonargparse reports config errors itself).
USER_ERRORS = (DataError, CheckpointMismatchError, NonFiniteLossError, RunSetupError, MisconfigurationException)


class SkipVAECLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        defaults = {"default_config_files": [str(DEFAULTS)]}
        super().__init__(*args, parser_kwargs={name: defaults for name in self.subcommands()}, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_dims", "model.init_args.data_dims", apply_on="instantiate")
        for key, callback in RUN_CALLBACKS.items():
            parser.add_lightning_class_args(callback, key)

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        self.configured = self.config  # what the config files and the command line say

    def before_instantiate_classes(self) -> None:
        # LightningCLI (2.6) merges the hyper-parameters stored in a --ckpt_path file over the parsed config. Here
        # the config wins (a resumed run takes e.g. a new `--model.init_args.kl_warmup_epochs`), and the checkpoint
        # is checked against the configured model when it is loaded (models/identity.py).
        self.config = self.configured
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_devices(config.trainer.accelerator, config.trainer.devices)
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            continue_latest_version(config.trainer)

    def before_fit(self) -> None:
        check_output_folders(self.trainer, checkpoint_bytes(self.model))

    def before_validate(self) -> None:
        check_output_folders(self.trainer, 0)

    before_test = before_validate

    def before_predict(self) -> None:
        writers = [c for c in self.trainer.callbacks if isinstance(c, PosteriorWriter) and c.output]
        check_output_folders(self.trainer, 0, [Path(writer.output).parent for writer in writers])
