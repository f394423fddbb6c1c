"""The project's LightningCLI: the data shape given once to the model, the callbacks every run has, and the
run-setup checks (`runtime/run_setup.py`) before any work starts."""

import logging
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.files import DataError
from diagnostics.evaluation import ImportanceWeightedEvaluation, LatentDiagnostics
from diagnostics.latent_views import LatentSpaceViews
from diagnostics.posteriors import PosteriorWriter
from diagnostics.probe import LatentProbe
from diagnostics.samples import SampleLogger
from models.lr_schedule import HalveLearningRateAfterPlateau
from runtime.checkpoint import Checkpoint
from runtime.checkpoint_identity import CheckpointMismatchError, refuse_mismatch, refuse_unloadable
from runtime.guards import NonFiniteGuard, NonFiniteLossError
from runtime.preemption import RequeueOnPreemption
from runtime.run_setup import (
    RunSetupError,
    check_checkpoint_file,
    check_devices,
    check_output_folders,
    checkpoint_bytes,
    resolve_last_checkpoint,
)
from runtime.summary import ModelSummaryWithoutZeroFlops

# Messages of the pinned Lightning and torch versions about their own internals or offers, not about the run:
# Lightning's pytree helper uses a torch API that torch deprecated, `test` from a checkpoint of another folder
# notes that the checkpoint folder changed, every run advertises a logging service, and the command line is passed
# on (below).
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message="The dirpath has changed from", category=UserWarning)
# The CLI hands LightningCLI the command line itself (with the experiment's log name), which Lightning warns about.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)

# Loaded under every config: the settings all experiments share.
DEFAULTS = Path(__file__).resolve().parent / "configs" / "parts" / "defaults.yaml"

# Callbacks present in every run, each configured under its own key (`--nll_iw.num_samples 5000`), so a config or
# preset changes one setting without restating a callback list. `trainer.callbacks` adds others.
RUN_CALLBACKS = {
    "checkpoint": Checkpoint,
    "diagnostics": LatentDiagnostics,
    "nll_iw": ImportanceWeightedEvaluation,
    "probe": LatentProbe,
    "samples": SampleLogger,
    "lr_schedule": HalveLearningRateAfterPlateau,
    "nonfinite": NonFiniteGuard,
    "posteriors": PosteriorWriter,
    "latent_views": LatentSpaceViews,
    "preemption": RequeueOnPreemption,
}

# Bad input that `main.py` reports as one `error: ...` line (jsonargparse reports config errors itself).
USER_ERRORS = (DataError, CheckpointMismatchError, NonFiniteLossError, RunSetupError, MisconfigurationException)


def user_error(error: BaseException) -> BaseException | None:
    """The user error behind `error`: itself, or the one a class's `__init__` raised while jsonargparse built it
    (jsonargparse reports it as a ValueError caused by it); None when there is none."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, USER_ERRORS):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# Lines of jsonargparse's messages that describe its own machinery (the model and data are `Union[class, None]`
# arguments), not the user's mistake.
_PARSER_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "- Expected a <class 'NoneType'>",
    "Given value type:",
)


# What jsonargparse says of its own way of parsing, inside a message, rather than of the user's mistake.
_PARSER_ASIDES = (
    r"Problem with given class_path '[^']*': ",
    r"Type \S+(?:\[.*?\])? expects a function or a callable class: ",
    r"Expected a path but \S+ either not accessible or invalid ",
    r" ?(?:Got|Given) value: (?:Namespace|NestedArg)\(.*$",  # a whole namespace dumped back
)


def one_line(message: str) -> str:
    """jsonargparse's nested error message as one line in the user's terms: the full key of the setting at fault
    (`model.init_args.decoder.init_args.hidden`) and what is wrong with it, without the lines about its Union
    machinery, the types it tried and the value dumped back."""
    lines = [line.strip() for line in message.splitlines()]
    text = " ".join(line.removeprefix("- ") for line in lines if line and not line.startswith(_PARSER_NOISE))
    keys = re.findall(r'Parser key "([^"]+)": ', text)
    reason = re.split(r'Parser key "[^"]+": ', text)[-1]
    for aside in _PARSER_ASIDES:
        reason = re.sub(aside, "", reason)
    reason = re.sub(r"\.? ?(?:Got|Given) value: (.*)$", r" (given: \1)", reason)
    if not keys:
        return reason.strip()
    key = keys[0] + "".join(f".init_args.{name}" for name in keys[1:])  # the model, data and parts: class + settings
    return f"{key}: {reason.strip()}"


def config_files(args: list[str] | None) -> list[Path]:
    """The `--config` files of a command line, in order."""
    args = sys.argv[1:] if args is None else args
    files = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--config"]
    files += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    return [Path(name) for name in files]


def _sets_log_name(config: object) -> bool:
    """Whether a config file's YAML sets the logger's name (nested keys or dotted ones)."""
    if not isinstance(config, dict):
        return False
    flat: dict[str, object] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            flat[name] = value
            if isinstance(value, dict):
                walk(value, f"{name}.")

    walk(config, "")
    return "trainer.logger.init_args.name" in flat


def with_experiment_log_name(args: list[str]) -> list[str]:
    """`args` with the log folder named after the experiment (the first `--config` file's name) unless that file
    names one: a copied experiment logs apart with no edit. Configs stacked after it and later arguments still win."""
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            path, end = Path(args[i + 1]), i + 2
        elif arg.startswith("--config="):
            path, end = Path(arg.split("=", 1)[1]), i + 1
        else:
            continue
        try:
            config = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            return args  # the parser reports an unreadable file
        if _sets_log_name(config):
            return args
        return [*args[:end], "--trainer.logger.init_args.name", path.stem, *args[end:]]
    return args


def warn_of_parts_set_twice(files: list[Path]) -> None:
    """When two of the configs stacked on an experiment (presets, remedies) choose the same model part, the later
    one wins: say so once, rather than drop the earlier one silently."""
    chosen: dict[str, tuple[Path, str]] = {}
    for path in files[1:]:  # the first is the experiment, whose parts the others may replace
        try:
            config = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue  # the parser reports an unreadable file
        model = config.get("model") if isinstance(config, dict) else None
        parts = model.get("init_args", {}) if isinstance(model, dict) else {}
        for key, part in (parts or {}).items():
            if not (isinstance(part, dict) and "class_path" in part):
                continue
            if key in chosen:
                earlier, earlier_class = chosen[key]
                rank_zero_warn(
                    f"{earlier} and {path} both choose model.init_args.{key}: {path.name} comes later and wins "
                    f"({part['class_path']}; {earlier.name}'s {earlier_class} is not used)"
                )
            chosen[key] = (path, part["class_path"])


class SkipVAEArgumentParser(LightningArgumentParser):
    """Reports a bad config key or value as one `error: ...` line (exit code 2), without the usage block."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {one_line(message)} (`{prog} --help` lists every key)\n")
        self.exit(2)


class SkipVAECLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        defaults = {"default_config_files": [str(DEFAULTS)]}
        command_line = kwargs.pop("args", None)
        if command_line is None or isinstance(command_line, list):
            command_line = with_experiment_log_name(list(sys.argv[1:] if command_line is None else command_line))
        super().__init__(
            *args,
            parser_kwargs={name: defaults for name in self.subcommands()},
            parser_class=SkipVAEArgumentParser,
            args=command_line,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_dims", "model.init_args.data_dims", apply_on="instantiate")
        parser.link_arguments("data.text_format", "model.init_args.text_format", apply_on="instantiate")
        for key, callback in RUN_CALLBACKS.items():
            parser.add_lightning_class_args(callback, key)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Lightning's trainer, with the model summary that leaves out the FLOPs it does not measure here."""
        trainer = super().instantiate_trainer(**kwargs)
        attached: Any = trainer  # `callbacks` is an attribute Lightning sets at run time
        attached.callbacks = [
            ModelSummaryWithoutZeroFlops(callback._max_depth) if type(callback) is ModelSummary else callback
            for callback in attached.callbacks
        ]
        return trainer

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        warn_of_parts_set_twice(config_files(args))

    def _parse_ckpt_path(self) -> None:
        """LightningCLI (2.6) merges the hyper-parameters stored in a --ckpt_path file over the parsed config. Here
        the config wins (a resumed run takes e.g. a new `--model.init_args.kl_schedule.init_args.epochs`): the file is
        only read, refused when no model of this project can load it, and kept until `check_before_run` has compared
        it with the configured model and data."""
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path") == "last":
            resolve_last_checkpoint(subcommand, self.config[subcommand])
        self.checkpoint = check_checkpoint_file(self.config[subcommand].get("ckpt_path")) if subcommand else None
        if self.checkpoint is not None:
            refuse_unloadable(self.checkpoint)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_devices(config.trainer.accelerator, config.trainer.devices)

    def check_before_run(
        self, stage: str, needed_bytes: int = 0, extra_folders: Mapping[Path, str] | None = None
    ) -> None:
        """Every refusal a run can meet, before Lightning creates the log folder, prints the model summary or writes
        a checkpoint, so that a refused run leaves nothing behind: the output folders, the --ckpt_path file against
        the configured model and data, the parts' and callbacks' settings for a fit, and the data itself (fetched
        and read by the process that writes, which Lightning then finds done)."""
        check_output_folders(self.trainer, needed_bytes, extra_folders)
        checkpoint, self.checkpoint = self.checkpoint, None  # not held in memory during the run
        if checkpoint is not None:
            refuse_mismatch(self.model, checkpoint, self.datamodule)
        callbacks = getattr(self.trainer, "callbacks", [])  # set by Lightning at run time
        if stage == "fit":
            self.model.check_fit(self.trainer)
            for callback in callbacks:
                if isinstance(callback, LatentDiagnostics):
                    callback.check_fit(self.trainer, self.model)
        if self.datamodule is not None and self.trainer.is_global_zero:
            self.datamodule.check_ready(stage)

    def before_fit(self) -> None:
        self.check_before_run("fit", checkpoint_bytes(self.model))

    def before_validate(self) -> None:
        self.check_before_run("validate")

    def before_test(self) -> None:
        self.check_before_run("test")

    def before_predict(self) -> None:
        callbacks = getattr(self.trainer, "callbacks", [])
        outputs = [Path(c.output) for c in callbacks if isinstance(c, PosteriorWriter) and c.output]
        self.check_before_run("predict", 0, {output.parent: "--posteriors.output" for output in outputs})
