"""A refused run leaves nothing behind: for each kind of refusal, `main.py` stops with one `error:` line before the
model summary, and the log folder (which already holds a run) and the checkpoint folders are as they were: no new
version, no config, no event file, no checkpoint directory. The messages themselves are checked in
`test_failures.py`; here, what the refusal leaves."""

from pathlib import Path

import pytest
import torch
from helpers import MLP, checkpoint_of, config_args, error_line, main_exit, tiny

from models import SkipVAE


def tree(folder: Path) -> dict[str, int] | None:
    """Every path under `folder` with its size (None when the folder does not exist)."""
    if not folder.exists():
        return None
    return {str(path.relative_to(folder)): path.stat().st_size for path in sorted(folder.rglob("*"))}


def checkpoint_file(tmp_path: Path, kind: str) -> str:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "unreadable":
        path.write_bytes(b"not a checkpoint")
    elif kind == "earlier_layout":
        hparams = {"architecture": "mlp", "latent_dim": 20, "_class_path": "models.SkipVAE"}
        torch.save({"state_dict": {}, "hyper_parameters": hparams, "skipvae_model": {"class": "SkipVAE"}}, path)
    elif kind == "earlier_modules":  # as the CLI wrote it while the networks were modules of models/
        checkpoint = checkpoint_of(tiny(SkipVAE))
        checkpoint["hyper_parameters"] = {
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
            "_class_path": "models.vae.SkipVAE",
            "data_dims": [1, 28, 28],
            "latent_dim": 3,
            "encoder": {"class_path": "models.encoders.MLPEncoder", "init_args": {"hidden": 8}},
            "decoder": {"class_path": "models.decoders.MLPDecoder", "init_args": {"hidden": 8, "num_layers": 1}},
        }
        torch.save({**checkpoint, "pytorch-lightning_version": "2.6.6"}, path)
    else:  # written by a model of another class and other networks, on another dataset
        checkpoint = checkpoint_of(tiny())
        checkpoint["hyper_parameters"] = {"latent_dim": 3}  # as saved by the CLI: plain values only
        checkpoint["skipvae_model"]["datamodule"] = "YahooDataModule"
        torch.save(checkpoint, path)
    return str(path)


# Each kind of refusal: the arguments that cause it (after the MLP Skip-VAE and the debug preset, on the test data)
# and a word of its message. `{tmp}` is the test's folder, `{data}` the test data, `{ckpt:KIND}` a checkpoint file.
REFUSALS = {
    "bad_value": (["--model.init_args.latent_dim", "-5"], "latent_dim"),
    "unknown_key": (["--model.init_args.latent_dimm", "3"], "latent_dimm"),
    "too_many_devices": (["--trainer.accelerator", "cpu", "--trainer.devices", "4096"], "4096"),
    "checkpoint_folder_not_writable": (["--checkpoint.dirpath", "{tmp}/a_file/ckpt"], "cannot write"),
    "unreadable_checkpoint": (["--ckpt_path", "{ckpt:unreadable}"], "not a readable checkpoint"),
    "checkpoint_of_the_earlier_layout": (["--ckpt_path", "{ckpt:earlier_layout}"], "earlier version"),
    "checkpoint_of_the_earlier_modules": (["--ckpt_path", "{ckpt:earlier_modules}"], "earlier module layout"),
    "checkpoint_of_another_model": (["--ckpt_path", "{ckpt:other}"], "does not match the configured model"),
    "missing_data_file": (
        ["--data.init_args.data_dir", "{tmp}/empty", "--data.init_args.download", "false"],
        "missing data file",
    ),
    "batch_larger_than_the_data": (["--data.init_args.batch_size", "600"], "larger than the training set"),
    "part_missing_a_setting": (
        [*config_args("remedies/cyclical_annealing.yaml"), "--trainer.max_epochs", "-1"],
        "needs the run's length",
    ),
    "callback_setting_a_part_cannot_follow": (
        [*config_args("remedies/aggressive.yaml"), "--diagnostics.every_n_epochs", "2"],
        "every validation epoch",
    ),
    "part_that_cannot_be_built": (
        [*config_args("remedies/free_bits.yaml"), "--model.init_args.kl_term.init_args.group_size", "3"],
        "does not divide",
    ),
}


@pytest.mark.parametrize("kind", REFUSALS)
def test_a_refused_run_leaves_the_output_folders_as_they_were(kind, tmp_path, fixture_data_dir, capsys, caplog):
    args, words = REFUSALS[kind]
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    logs = tmp_path / "logs"
    (logs / "run" / "version_0" / "checkpoints").mkdir(parents=True)  # an earlier run of the same name
    (logs / "run" / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"earlier")
    before = tree(logs)
    substituted = []
    for arg in args:
        if arg.startswith("{ckpt:"):
            arg = checkpoint_file(tmp_path, arg[6:-1])
        substituted.append(arg.format(tmp=tmp_path, data=fixture_data_dir))
    data = ["--data.init_args.data_dir", str(fixture_data_dir), "--data.init_args.check_file", "false"]
    result = main_exit(
        [
            "fit",
            *config_args(MLP, "presets/debug.yaml"),
            "--trainer.logger.init_args.save_dir",
            str(logs),
            "--trainer.logger.init_args.name",
            "run",
            *data,
            *substituted,
        ],
        capsys,
    )
    line = error_line(result)
    assert line.startswith("error: ") and words in line, line
    assert "Total params" not in result.stderr + caplog.text  # refused before the model summary
    assert tree(logs) == before
    assert tree(tmp_path / "a_file") is not None and not list((tmp_path / "empty").iterdir())
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["a_file", "empty", "logs", *(Path(a).name for a in substituted if a.endswith(".ckpt"))]
    )
