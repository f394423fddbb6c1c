"""Checkpoint identity: a checkpoint is only loaded into the model class, network shapes and dataset it was written
for, and a refusal names the settings that differ.

A mixin of the project's LightningModules (rather than a Trainer callback) because `Model.load_from_checkpoint`
must check too, and a callback's checkpoint hook runs only after the weights are loaded, and only when fitting.
Which hyper-parameters shape the networks (the flat settings and the network parts) is read from `build_networks`'s
signature: nothing is listed twice.
"""

import inspect
from typing import Any

import torch

from models.networks import build_networks

NETWORK_SETTINGS = tuple(name for name in inspect.signature(build_networks).parameters if name != "latent_skip")


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by a different model class, architecture or dataset than the one configured."""


def datamodule_name(model) -> str | None:
    """The class name of the datamodule the model trains or tests on; None when there is none."""
    trainer = model._trainer
    datamodule = trainer.datamodule if trainer is not None else None
    return type(datamodule).__name__ if datamodule is not None else None


def refinement_name(model) -> str:
    """The class name of the model's posterior refinement part, or "none"."""
    refinement = getattr(model, "refinement", None)
    return type(refinement).__name__ if refinement is not None else "none"


def _plain(value):
    """Lists and tuples compare equal when their items do (YAML gives lists, defaults are tuples)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _shapes(state_dict: dict) -> dict:
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items() if torch.is_tensor(tensor)}


def checkpoint_mismatches(model, checkpoint: dict) -> list[str]:
    """What differs between `checkpoint` and `model`: its class, the network settings (when the weights' shapes
    differ) and its dataset. Empty when the checkpoint fits; raises for a checkpoint not written by this project."""
    saved = checkpoint.get("skipvae_model")
    if saved is None:
        raise CheckpointMismatchError("this checkpoint was not written by a VAE/SkipVAE of this project")
    problems = []
    if saved["class"] != type(model).__name__:
        problems.append(f"model class {saved['class']} (configured: {type(model).__name__})")
    elif "refinement" in saved and saved["refinement"] != refinement_name(model):
        problems.append(f"posterior refinement {saved['refinement']} (configured: {refinement_name(model)})")
    saved_shapes, configured_shapes = _shapes(checkpoint.get("state_dict", {})), _shapes(model.state_dict())
    if saved_shapes != configured_shapes:
        hparams = checkpoint.get("hyper_parameters", {})
        settings = [
            f"{key}={hparams[key]!r} (configured: {model.hparams.get(key)!r})"
            for key in NETWORK_SETTINGS
            if key in hparams and _plain(hparams[key]) != _plain(model.hparams.get(key))
        ]
        problems += settings
        if not problems:  # neither the class nor a network setting explains the shapes: a part does
            differing = sorted({name.split(".")[0] for name in saved_shapes.keys() ^ configured_shapes.keys()})
            problems.append(f"the weights of {', '.join(differing) or 'the networks'} (a part configured differently)")
    configured = datamodule_name(model)
    if configured is not None and saved.get("datamodule", configured) != configured:
        problems.append(f"data {saved['datamodule']} (configured: {configured})")
    return problems


class CheckpointIdentity:
    """LightningModule mixin: writes the model class and dataset into each checkpoint and refuses a checkpoint
    that does not match the configured model."""

    hparams: Any  # the LightningModule's saved init arguments

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["skipvae_model"] = {
            "class": type(self).__name__,
            "datamodule": datamodule_name(self),
            "refinement": refinement_name(self),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        problems = checkpoint_mismatches(self, checkpoint)
        if not problems:
            return
        hint = ""
        if any(problem.startswith("data_dims=") for problem in problems) and len(self.hparams.data_dims) == 1:
            hint = (
                " For text, data_dims is the vocabulary size: pass the training run's vocabulary "
                "(vocab.txt in its log folder) as --data.init_args.vocab_file."
            )
        raise CheckpointMismatchError(
            "checkpoint does not match the configured model: "
            + "; ".join(problems)
            + ". Use the config the checkpoint was trained with (saved as config.yaml next to it)."
            + hint
        )
