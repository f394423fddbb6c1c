"""Every error `docs/troubleshooting.md` lists, caused through `main.py` as a user would: one `error:` line, under
200 characters, in the user's terms, no traceback. A row of that page without a case here fails
`test_every_documented_error_has_a_case`."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from helpers import MLP, config_args, error_line, logging_args, main_exit
from test_refusals import checkpoint_file
from test_resume import TEXT_ARGS

pytestmark = pytest.mark.integration  # some cases train a step first


def copy_data(tmp: Path, data: Path, dataset: str) -> Path:
    """The fixture folder of `dataset` alone, copied, to damage."""
    shutil.copytree(data / dataset, tmp / "data" / dataset)
    return tmp / "data"


def write_chardata(tmp: Path, fixtures: Path, **arrays) -> list[str]:
    from scipy.io import savemat

    folder = copy_data(tmp, fixtures, "omniglot")
    savemat(
        str(folder / "omniglot" / "chardata.mat"),
        {"data": np.zeros((784, 4)), "testdata": np.zeros((784, 4)), **arrays},
    )
    return ["--data.init_args.data_dir", str(folder)]


def damaged_file(tmp: Path, data: Path, dataset: str, name: str, content: bytes) -> list[str]:
    folder = copy_data(tmp, data, dataset)
    (folder / dataset / name).write_bytes(content)
    return ["--data.init_args.data_dir", str(folder)]


def vocabulary_file(tmp: Path, words: list[str]) -> list[str]:
    (tmp / "vocab.txt").write_text("\n".join(words) + "\n")
    return ["--data.init_args.vocab_file", str(tmp / "vocab.txt")]


def trained(tmp: Path, data: Path, configs: list[str], *args: str) -> str:
    """The last checkpoint of a one-step fit of `configs` on the fixture data."""
    fit = ["fit", *config_args(*configs), *args, *logging_args(tmp, "trained"), "--trainer.max_steps", "1"]
    fit += ["--trainer.limit_val_batches", "0", "--data.init_args.data_dir", str(data), "--data.init_args.check_file"]
    fit += ["false", "--samples.every_n_epochs", "0", "--latent_views.num_points", "0"]
    from main import main

    assert main(fit) == 0
    return str(tmp / "trained/version_0/checkpoints/last.ckpt")


def cut_off(checkpoint: str, to: Path) -> str:
    """The first 1,000 bytes of a checkpoint, as an interrupted copy leaves it (`head -c 1000`)."""
    to.write_bytes(Path(checkpoint).read_bytes()[:1000])
    return str(to)


TEXT = ["yahoo_skipvae.yaml", "presets/debug.yaml"]

# Each documented error: (the start of its row's first message in docs/troubleshooting.md, the subcommand, configs,
# arguments, or a function of (test folder, fixture data) that returns them after writing what they need).
CASES = {
    "unknown_key": ("error: <key>", "fit", [MLP], ["--model.init_args.latent_dimm", "3"]),
    "missing_file": ("missing data file", "fit", [MLP], lambda t, d: ["--data.init_args.data_dir", str(t)]),
    "checksum": ("... is corrupt or incomplete", "fit", [MLP], ["--data.init_args.check_file", "true"]),
    "chardata_shape": (
        "'data' has shape",
        "fit",
        ["omniglot_skipvae.yaml"],
        lambda t, d: write_chardata(t, d, data=np.zeros((10, 4))),
    ),
    "chardata_not_matlab": (
        "... is corrupt or incomplete",
        "fit",
        ["omniglot_skipvae.yaml"],
        lambda t, d: damaged_file(t, d, "omniglot", "chardata.mat", b"MATLAB 5.0 MAT-file" + bytes(50)),
    ),
    "blank_text": (
        "... is empty or holds only blank lines",
        "fit",
        TEXT,
        lambda t, d: damaged_file(t, d, "yahoo", "train.txt", b"\n  \n\n"),
    ),
    "vocabulary_start": (
        "a vocabulary must start with",
        "fit",
        TEXT,
        lambda t, d: vocabulary_file(t, ["a\t0", "<pad>\t1", "<bos>\t2", "<eos>\t3"]),
    ),
    "vocabulary_size": (
        "checkpoint does not match the configured model: data_dims=",
        "test",
        TEXT,
        lambda t, d: [
            "--ckpt_path",
            trained(t, d, TEXT, *TEXT_ARGS),
            *TEXT_ARGS,
            *vocabulary_file(t, ["<pad>", "<bos>", "<eos>", "_UNK", "how", "do"]),
        ],
    ),
    "other_model": (
        "checkpoint does not match the configured model: ...",
        "test",
        [MLP],
        lambda t, d: ["--ckpt_path", checkpoint_file(t, "other")],
    ),
    "earlier_layout": (
        "this checkpoint was written by an earlier version",
        "test",
        [MLP],
        lambda t, d: ["--ckpt_path", checkpoint_file(t, "earlier_layout")],
    ),
    "earlier_modules": (
        "this checkpoint was written with the project's earlier module layout",
        "test",
        [MLP],
        lambda t, d: ["--ckpt_path", checkpoint_file(t, "earlier_modules")],
    ),
    "other_parts": (
        "checkpoint does not match the configured model: the weights of mean_normalisation",
        "fit",
        [MLP, "remedies/bn_vae.yaml"],
        lambda t, d: ["--ckpt_path", trained(t, d, [MLP, "presets/debug.yaml"])],
    ),
    "aggressive_sa": (
        "aggressive inference-network training does not apply to SA-VAE models",
        "fit",
        ["mnist_savae_mlp.yaml", "remedies/aggressive.yaml"],
        [],
    ),
    "aggressive_mi": (
        "the model's training procedure reads val/mi",
        "fit",
        [MLP, "remedies/aggressive.yaml"],
        ["--diagnostics.every_n_epochs", "2"],
    ),
    "incomplete_network": (
        "<Class> does not define <method>(), which every <base class> must",
        "fit",
        [MLP],
        ["--model.init_args.decoder", "test_examples.DecoderWithoutSample"],
    ),
    "network_kind": (
        "... is a network for images",
        "fit",
        [MLP],
        ["--model.init_args.decoder", "networks.text_decoders.LSTMDecoder"],
    ),
    "cyclical": (
        "cyclical KL annealing needs the run's length",
        "fit",
        [MLP, "remedies/cyclical_annealing.yaml"],
        ["--trainer.max_epochs", "-1"],
    ),
    "free_bits": (
        "free bits: group_size G does not divide",
        "fit",
        [MLP, "remedies/free_bits.yaml"],
        ["--model.init_args.kl_term.init_args.group_size", "3"],
    ),
    "foreign_checkpoint": (
        "this checkpoint was not written by a VAE/SkipVAE",
        "test",
        [MLP],
        lambda t, d: (torch.save({"state_dict": {}}, t / "foreign.ckpt"), ["--ckpt_path", str(t / "foreign.ckpt")])[1],
    ),
    "cut_off_checkpoint": (
        "--ckpt_path ... is not a readable checkpoint",
        "test",
        [MLP],
        lambda t, d: ["--ckpt_path", cut_off(trained(t, d, [MLP, "presets/debug.yaml"]), t / "bad.ckpt")],
    ),
    "nothing_to_resume": ("--ckpt_path last: there is no last checkpoint", "fit", [MLP], ["--ckpt_path", "last"]),
    "batch_size": (
        "batch_size N is larger than the training set",
        "fit",
        [MLP],
        ["--data.init_args.batch_size", "600"],
    ),
    "devices": (
        "--trainer.devices N on CPU",
        "fit",
        [MLP],
        ["--trainer.accelerator", "cpu", "--trainer.devices", "4096"],
    ),
    "not_writable": (
        "cannot write to <folder>",
        "fit",
        [MLP],
        lambda t, d: ((t / "a_file").write_text("x"), ["--checkpoint.dirpath", str(t / "a_file" / "ckpt")])[1],
    ),
    "not_finite": (
        "the training loss is not finite",
        "fit",
        [MLP],
        ["--model.init_args.optimizer.init_args.lr", "1e30"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_documented_error_is_one_short_line(case, tmp_path, fixture_data_dir, capsys):
    row, subcommand, configs, args = CASES[case]
    extra = args(tmp_path, fixture_data_dir) if callable(args) else args
    data = ["--data.init_args.data_dir", str(fixture_data_dir), "--data.init_args.check_file", "false"]
    run = [subcommand, *config_args(*configs, "presets/debug.yaml"), *data, *logging_args(tmp_path, "run"), *extra]
    result = main_exit(run, capsys)
    line = error_line(result)  # no traceback: the message is the last line
    assert line.startswith("error: ") and len(without_paths(line)) < 200, line
    assert result.stderr.count("error: ") == 1


def without_paths(line: str) -> str:
    """The line with each path and URL it names as `<path>`: their length is the user's folders', not the message's."""
    return re.sub(r"(?:https?://|/)[^\s;,()]+", "<path>", line)


def documented_rows() -> list[str]:
    """The first message of each row of the troubleshooting table."""
    rows = [line for line in (ROOT / "docs" / "troubleshooting.md").read_text().splitlines() if line.startswith("| `")]
    return [re.match(r"\| `([^`]*)`", row).group(1) for row in rows]


def test_every_documented_error_has_a_case():
    covered = {row for row, *_ in CASES.values()}
    missing = [row for row in documented_rows() if not any(row.startswith(start) for start in covered)]
    assert not missing, f"rows of docs/troubleshooting.md without a case in CASES: {missing}"
