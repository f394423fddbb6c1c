"""Checkpoint identity: a checkpoint is only loaded into the model class, networks and dataset it was written for,
and a refusal names what differs.

A mixin of the project's LightningModules (rather than a Trainer callback) because `Model.load_from_checkpoint`
must check too, and a callback's checkpoint hook runs only after the weights are loaded, and only when fitting.
Models are compared by their parts: the class (where z enters), the posterior refinement, and, when the weights'
shapes differ, the settings that shape the networks.
"""

from functools import partial
from typing import Any

import torch

# The model's arguments that shape its weights (the networks are the `encoder` and `decoder` parts).
NETWORK_SETTINGS = ("data_dims", "latent_dim", "encoder", "decoder")

EARLIER_LAYOUT = (
    "this checkpoint was written by an earlier version of this project, whose models took an architecture name "
    "instead of network parts; it cannot be loaded: train again with today's configs"
)

# The modules of the project's earlier layout whose classes a checkpoint names (its networks' class paths, in its
# hyper-parameters), and the modules that hold those classes now.
EARLIER_MODULES = {
    "models.encoders": "networks.encoders",
    "models.decoders": "networks.decoders",
    "models.text_decoders": "networks.text_decoders",
    "models.transformer_decoder": "networks.transformer_decoder",
}


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by a different model class, networks or dataset than the one configured."""


def earlier_class_path(value) -> str | None:
    """The first class path in `value` (a checkpoint's hyper-parameters: nested dicts and lists) that names a module
    of the earlier layout (`EARLIER_MODULES`), or None."""
    if isinstance(value, str):
        return value if value.rpartition(".")[0] in EARLIER_MODULES else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return next((found for item in items if (found := earlier_class_path(item)) is not None), None)


def refuse_unloadable(checkpoint: dict) -> None:
    """Raise `CheckpointMismatchError` for a checkpoint no model of this project can load: one it did not write, one
    of the layout before the model took its networks as parts, or one that names its networks by the module paths of
    the earlier layout."""
    saved = checkpoint.get("skipvae_model")
    if saved is None:
        raise CheckpointMismatchError("this checkpoint was not written by a VAE/SkipVAE of this project")
    hparams = checkpoint.get("hyper_parameters") or {}
    if "architecture" in hparams or saved.get("class") in ("SAVAE", "SkipSAVAE"):
        raise CheckpointMismatchError(EARLIER_LAYOUT)
    if (path := earlier_class_path(hparams)) is not None:
        raise CheckpointMismatchError(
            f"this checkpoint was written with the project's earlier module layout ({path}, now in "
            f"{EARLIER_MODULES[path.rpartition('.')[0]]}); train again with today's configs"
        )


def datamodule_name(model, datamodule=None) -> str | None:
    """The class name of `datamodule`, else of the one the model's trainer runs on; None when there is none."""
    if datamodule is None and model._trainer is not None:
        datamodule = model._trainer.datamodule
    return type(datamodule).__name__ if datamodule is not None else None


def refinement_name(model) -> str:
    """The class name of the model's posterior refinement part, or "none"."""
    refinement = getattr(model, "refinement", None)
    return type(refinement).__name__ if refinement is not None else "none"


def _plain(value):
    """Lists and tuples compare equal when their items do (YAML gives lists, defaults are tuples), and parts bound in
    Python (`functools.partial`) when their class and settings do."""
    if isinstance(value, partial):
        return (value.func, _plain(value.args), sorted(value.keywords.items()))
    return list(value) if isinstance(value, (list, tuple)) else value


def _described(value) -> str:
    """A setting as a refusal names it: a part's config as `class_path(setting=value, ...)`."""
    if isinstance(value, dict) and "class_path" in value:
        settings = ", ".join(f"{key}={item!r}" for key, item in (value.get("init_args") or {}).items())
        return f"{value['class_path']}({settings})"
    return repr(value)


def _shapes(state_dict: dict) -> dict:
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items() if torch.is_tensor(tensor)}


def checkpoint_mismatches(model, checkpoint: dict, datamodule=None) -> list[str]:
    """What differs between `checkpoint` and `model` (run on `datamodule`, by default its trainer's): its class, its
    refinement, the network settings (when the weights' shapes differ) and its dataset. Empty when the checkpoint
    fits; raises for a checkpoint not written by this project or by an earlier layout of it."""
    refuse_unloadable(checkpoint)
    saved = checkpoint["skipvae_model"]
    problems = []
    if saved["class"] != type(model).__name__:
        problems.append(f"model class {saved['class']} (configured: {type(model).__name__})")
    if saved.get("refinement", "none") != refinement_name(model):
        problems.append(f"posterior refinement {saved['refinement']} (configured: {refinement_name(model)})")
    saved_shapes, configured_shapes = _shapes(checkpoint.get("state_dict", {})), _shapes(model.state_dict())
    if saved_shapes != configured_shapes:
        hparams = checkpoint.get("hyper_parameters", {})
        settings = [
            f"{key}={_described(hparams[key])} (configured: {_described(model.hparams.get(key))})"
            for key in NETWORK_SETTINGS
            if key in hparams and _plain(hparams[key]) != _plain(model.hparams.get(key))
        ]
        problems += settings
        if not problems:  # neither the class nor a network setting explains the shapes: another part does
            differing = sorted({name.split(".")[0] for name in saved_shapes.keys() ^ configured_shapes.keys()})
            problems.append(f"the weights of {', '.join(differing) or 'the networks'} (a part configured differently)")
    configured = datamodule_name(model, datamodule)
    if configured is not None and saved.get("datamodule", configured) != configured:
        problems.append(f"data {saved['datamodule']} (configured: {configured})")
    return problems


def refuse_mismatch(model, checkpoint: dict, datamodule=None) -> None:
    """Raise `CheckpointMismatchError` naming what differs when `checkpoint` does not fit `model` (on `datamodule`).
    The CLI calls it before a run writes anything; loading the checkpoint calls it again."""
    problems = checkpoint_mismatches(model, checkpoint, datamodule)
    if not problems:
        return
    remedy = "use the config.yaml saved next to it"
    if any(problem.startswith("data_dims=") for problem in problems) and len(model.hparams.data_dims) == 1:
        remedy = "a text model's data_dims is its vocabulary: pass the run's vocab.txt as --data.init_args.vocab_file"
    shown = "; ".join(problems[:2]) + (f" (and {len(problems) - 2} more)" if len(problems) > 2 else "")
    raise CheckpointMismatchError(f"checkpoint does not match the configured model: {shown}; {remedy}")


class CheckpointIdentity:
    """LightningModule mixin: writes the model class, refinement and dataset into each checkpoint and refuses a
    checkpoint that does not match the configured model."""

    hparams: Any  # the LightningModule's saved init arguments

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["skipvae_model"] = {
            "class": type(self).__name__,
            "datamodule": datamodule_name(self),
            "refinement": refinement_name(self),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        refuse_mismatch(self, checkpoint)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """LightningModule's, with a checkpoint no model of this project can load refused in one line (its
        hyper-parameters, if any, do not build today's model)."""
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except Exception as error:
            try:
                checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            except Exception:
                raise error from None
            refuse_unloadable(checkpoint)
            raise
