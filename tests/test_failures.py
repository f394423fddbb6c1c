"""Faults and bad input: each stops with one clear message, before any work is lost, and leaves no partial
checkpoint behind; non-finite steps stop training (or are skipped) without touching the weights."""

import shutil
from collections import namedtuple

import lightning as L
import pytest
import torch
from helpers import MLP, callbacks_config, config_args, error_line, logging_args, main_exit, read_events

from datamodules.files import DataError
from main import cli_main
from runtime.checkpoint_identity import CheckpointMismatchError
from runtime.guards import NonFiniteGuard, NonFiniteLossError
from runtime.run_setup import RunSetupError


def checkpoints(folder) -> list:
    return sorted(folder.rglob("*.ckpt"))


def fit(tmp_path, *extra: str, presets=("presets/debug.yaml",)):
    return cli_main(["fit", *config_args(MLP, *presets), *logging_args(tmp_path), *extra])


@pytest.fixture
def mlp_checkpoint(debug_run):
    return debug_run / "checkpoints" / "last.ckpt"


@pytest.mark.integration
class TestNonFinite:
    def test_nan_loss_stops_at_that_step_and_keeps_the_last_checkpoint(self, tmp_path):
        extra = callbacks_config(
            tmp_path / "cb.yaml", "class_path: helpers.InjectNonFinite\n      init_args: {steps: [6]}"
        )
        with pytest.raises(NonFiniteLossError) as error:
            fit(tmp_path, *extra, "--trainer.max_epochs", "3")
        last = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
        message = str(error.value)
        assert message.startswith("the training loss is not finite at global step 6 (epoch 1, batch 2;")
        assert "recon nan" in message and "kl nan" in message
        assert f"last good checkpoint {last};" in message
        saved = torch.load(last, map_location="cpu", weights_only=True)
        assert saved["global_step"] == 4  # end of epoch 0, not overwritten by the failing epoch
        assert all(torch.isfinite(w).all() for w in saved["state_dict"].values())
        assert {path.name for path in checkpoints(tmp_path)} == {"last.ckpt", "best-000.ckpt"}  # nothing new

    def test_infinite_gradient_stops_before_the_update(self, tmp_path):
        extra = callbacks_config(
            tmp_path / "cb.yaml", "class_path: helpers.InjectNonFinite\n      init_args: {steps: [1], where: gradient}"
        )
        with pytest.raises(NonFiniteLossError, match="^a gradient is not finite at global step 1 .*no checkpoint yet"):
            fit(tmp_path, *extra)
        assert checkpoints(tmp_path) == []

    def test_skip_option_drops_the_steps_counts_and_logs_them(self, tmp_path):
        extra = callbacks_config(
            tmp_path / "cb.yaml", "class_path: helpers.InjectNonFinite\n      init_args: {steps: [1, 5]}"
        )
        cli = fit(tmp_path, *extra, "--trainer.max_epochs", "2", "--nonfinite.action", "skip")
        guard = next(callback for callback in cli.trainer.callbacks if isinstance(callback, NonFiniteGuard))
        assert cli.trainer.global_step == 8 and guard.skipped_steps == 2
        saved = torch.load(tmp_path / "run/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
        assert saved["callbacks"]["NonFiniteGuard"]["skipped_steps"] == 2
        assert all(torch.isfinite(w).all() for w in saved["state_dict"].values())
        # Adam never stepped on the skipped batches: 8 optimizer calls, 6 updates of every parameter
        assert {int(state["step"]) for state in saved["optimizer_states"][0]["state"].values()} == {6}
        events = read_events(tmp_path / "run" / "version_0")
        logged = {e.step: e.value for e in events.Scalars("train/skipped_steps")}
        assert logged[0] == 0 and logged[1] == 1 and logged[4] == 1 and logged[5] == 2 and logged[7] == 2

    def test_cli_prints_one_line(self, tmp_path, capsys):
        result = main_exit(
            [
                "fit",
                *config_args(MLP, "presets/debug.yaml"),
                *logging_args(tmp_path),
                "--model.init_args.optimizer.init_args.lr",
                "1e30",
            ],
            capsys,
        )
        assert error_line(result).startswith("error: the training loss is not finite at global step")


class EncoderStepsFirst(L.LightningModule):
    """A training procedure with an optimizer step before the model logs anything (as encoder-only updates would
    take): manual optimization, one unlogged step per batch, then the logged one. `bad_step`: the global step
    whose gradient is made infinite."""

    def __init__(self, bad_step: int | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.layer, self.bad_step = torch.nn.Linear(3, 1), bad_step

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        for logged in (False, True):
            loss = self.layer(batch[0]).pow(2).mean()
            optimizer.zero_grad()
            self.manual_backward(loss)
            if self.global_step == self.bad_step:
                self.layer.weight.grad[0, 0] = float("inf")
            optimizer.step()
            if logged:
                self.log("train/loss", loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TestGuardWithoutALoggedLoss:
    @staticmethod
    def train(model, tmp_path, action="stop"):
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3)), batch_size=4)
        trainer = L.Trainer(
            max_epochs=1,
            callbacks=[NonFiniteGuard(action)],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(model, data)
        return trainer

    def test_steps_before_the_first_logged_loss_are_checked(self, tmp_path):
        assert self.train(EncoderStepsFirst(), tmp_path).global_step == 4  # two steps per batch
        model = EncoderStepsFirst(bad_step=0)  # the very first step: nothing logged yet
        before = model.layer.weight.detach().clone()
        with pytest.raises(NonFiniteLossError, match="a gradient is not finite at global step 0"):
            self.train(model, tmp_path)
        assert torch.equal(model.layer.weight, before)  # not updated from it

    def test_skip_drops_such_a_step(self, tmp_path):
        model = EncoderStepsFirst(bad_step=0)
        trainer = self.train(model, tmp_path, action="skip")
        guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
        assert guard.skipped_steps == 1 and torch.isfinite(model.layer.weight).all()


class TestBadConfig:
    @pytest.mark.parametrize(
        "args, words",
        [
            (["--model.init_args.decoder", "networks.decoders.PixelCNN"], ["decoder", "PixelCNN"]),
            (["--trainer.max_epochs", "ten"], ["max_epochs", "ten"]),
            (["--data.init_args.binarization", "dinamic"], ["binarization", "dinamic"]),
            (["--model.init_args.latent_dimm", "3"], ["latent_dimm"]),
        ],
    )
    def test_mistyped_key_or_value(self, tmp_path, capsys, args, words):
        with pytest.raises(SystemExit) as stopped:
            cli_main(["fit", *config_args(MLP, "presets/debug.yaml"), *logging_args(tmp_path), *args])
        stderr = capsys.readouterr().err
        assert stopped.value.code == 2 and "Traceback" not in stderr
        assert all(word in stderr for word in words), stderr[-2000:]
        assert checkpoints(tmp_path) == []

    # Every numeric argument of the models and data modules, at a value outside its range: one `error:` line
    # that names the argument and the value, exit code 2, nothing written.
    OUT_OF_RANGE = [
        (MLP, "model", "latent_dim", "-5"),
        (MLP, "model", "encoder.init_args.hidden", "0"),
        (MLP, "model", "decoder.init_args.num_layers", "0"),
        (MLP, "model", "decoder.init_args.hidden", "-1"),
        (MLP, "model", "decoder.init_args.linear_init", "he_uniform"),
        ("mnist_vae.yaml", "model", "encoder.init_args.channels", "0"),
        ("mnist_vae.yaml", "model", "encoder.init_args.stages", "0"),
        ("mnist_vae.yaml", "model", "decoder.init_args.channels", "0"),
        ("mnist_vae.yaml", "model", "decoder.init_args.latent_feature_maps", "0"),
        ("mnist_vae.yaml", "model", "decoder.init_args.kernel_sizes", "[3,-3]"),
        ("yahoo_vae.yaml", "model", "encoder.init_args.init_range", "-0.1"),
        ("yahoo_vae.yaml", "model", "decoder.init_args.embedding_dim", "0"),
        ("yahoo_vae.yaml", "model", "decoder.init_args.dropout", "1.5"),
        ("yahoo_vae.yaml", "model", "kl_schedule.init_args.start", "2"),
        ("yahoo_vae.yaml", "model", "kl_schedule.init_args.epochs", "-1"),
        ("mnist_savae_mlp.yaml", "model", "refinement.init_args.steps", "-1"),
        ("mnist_savae_mlp.yaml", "model", "refinement.init_args.lr", "0"),
        ("mnist_savae_mlp.yaml", "model", "refinement.init_args.momentum", "1.5"),
        ("mnist_savae_mlp.yaml", "model", "refinement.init_args.max_grad_norm", "-1"),
        (MLP, "data", "batch_size", "0"),
        (MLP, "data", "eval_batch_size", "-50"),
        (MLP, "data", "num_workers", "-1"),
        ("yahoo_vae.yaml", "data", "val_split", "-1"),
        ("yahoo_vae.yaml", "data", "max_vocab", "0"),
    ]

    @pytest.mark.parametrize("config, group, key, value", OUT_OF_RANGE, ids=lambda v: str(v))
    def test_value_out_of_range(self, tmp_path, capsys, config, group, key, value):
        with pytest.raises(SystemExit) as stopped:
            cli_main(
                [
                    "fit",
                    *config_args(config, "presets/debug.yaml"),
                    *logging_args(tmp_path),
                    f"--{group}.init_args.{key}",
                    value,
                ]
            )
        lines = capsys.readouterr().err.strip().splitlines()
        assert stopped.value.code == 2
        # the setting's full key, then what is wrong with it, in one short line
        assert len(lines) == 1 and lines[0].startswith(f"error: {group}.init_args.{key}: "), lines[-5:]
        assert len(lines[0]) < 200 and value.strip("[]").split(",")[-1] in lines[0]  # the value at fault
        assert not any(tmp_path.iterdir())

    @pytest.mark.parametrize("subcommand", ["fit", "test"])
    def test_checkpoint_of_the_earlier_layout(self, tmp_path, capsys, subcommand):
        """A checkpoint from before the networks were parts: refused in one line before anything is written."""
        old = tmp_path / "old.ckpt"
        hparams = {"architecture": "mlp", "encoder_hidden": 1024, "latent_dim": 20, "_class_path": "models.SkipVAE"}
        torch.save({"state_dict": {}, "hyper_parameters": hparams, "skipvae_model": {"class": "SkipVAE"}}, old)
        logs = tmp_path / "logs"
        args = [
            subcommand,
            *config_args(MLP),
            "--ckpt_path",
            str(old),
            "--trainer.logger.init_args.save_dir",
            str(logs),
        ]
        line = error_line(main_exit(args, capsys))
        assert line.startswith("error: this checkpoint was written by an earlier version of this project")
        assert len(line) < 200 and not logs.exists()

    @pytest.mark.integration
    @pytest.mark.parametrize(
        "content", [b"not a checkpoint", b"\x80\x04\x95" + bytes(64), b"", b"PK\x03\x04" + bytes(996)]
    )
    def test_unreadable_checkpoint(self, tmp_path, content, capsys):
        path = tmp_path / "broken.ckpt"
        path.write_bytes(content)
        logs = tmp_path / "logs"
        result = main_exit(
            [
                "test",
                *config_args(MLP, "presets/debug.yaml"),
                "--ckpt_path",
                str(path),
                "--trainer.logger.init_args.save_dir",
                str(logs),
            ],
            capsys,
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {errors[0].removeprefix('error: ')}"] and str(path) in errors[0]
        assert "is not a readable checkpoint" in errors[0]
        assert not logs.exists()

    @pytest.mark.integration
    def test_checkpoint_of_other_networks(self, tmp_path, mlp_checkpoint, capsys):
        result = main_exit(
            [
                "test",
                *config_args("mnist_skipvae.yaml", "presets/debug.yaml"),
                *logging_args(tmp_path),
                "--ckpt_path",
                str(mlp_checkpoint),
            ],
            capsys,
        )
        line = error_line(result)
        assert line.startswith("error: checkpoint does not match the configured model:")
        assert "encoder=networks.encoders.MLPEncoder(hidden=1024, linear_init='default') (configured: " in line
        assert "decoder=networks.decoders.MLPDecoder(" in line and "config.yaml" in line

    @pytest.mark.integration
    def test_checkpoint_of_another_dataset(self, tmp_path, mlp_checkpoint, fixture_data_dir):
        with pytest.raises(CheckpointMismatchError, match=r"data MNISTDataModule \(configured: OmniglotDataModule\)"):
            cli_main(
                [
                    "test",
                    *config_args(MLP, "presets/debug.yaml"),
                    *logging_args(tmp_path),
                    "--data",
                    "datamodules.OmniglotDataModule",
                    "--data.init_args.data_dir",
                    str(fixture_data_dir),
                    "--data.init_args.check_file",
                    "false",
                    "--ckpt_path",
                    str(mlp_checkpoint),
                ]
            )

    def test_batch_larger_than_the_training_set(self, tmp_path, fixture_data_dir):
        with pytest.raises(DataError, match=r"batch_size 600 is larger than the training set \(500 images\)"):
            fit(
                tmp_path,
                "--data.init_args.batch_size",
                "600",
                "--data.init_args.data_dir",
                str(fixture_data_dir),
                "--data.init_args.check_file",
                "false",
            )
        assert checkpoints(tmp_path) == []

    def test_text_batch_larger_than_the_training_set(self, tmp_path, fixture_data_dir):
        with pytest.raises(DataError, match=r"batch_size 1000 is larger than the training set \(\d+ documents\)"):
            cli_main(
                [
                    "fit",
                    *config_args("yahoo_skipvae.yaml", "presets/debug.yaml"),
                    *logging_args(tmp_path),
                    "--data.init_args.data_dir",
                    str(fixture_data_dir),
                    "--data.init_args.check_file",
                    "false",
                    "--data.init_args.batch_size",
                    "1000",
                ]
            )
        assert checkpoints(tmp_path) == []

    @pytest.mark.integration
    def test_more_cpu_devices_than_cores(self, tmp_path, capsys):
        result = main_exit(
            [
                "fit",
                *config_args(MLP, "presets/debug.yaml"),
                *logging_args(tmp_path),
                "--trainer.accelerator",
                "cpu",
                "--trainer.devices",
                "4096",
            ],
            capsys,
        )
        assert error_line(result).startswith("error: --trainer.devices 4096 on CPU starts 4096 processes")
        assert not (tmp_path / "run").exists()

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
    def test_gpu_on_a_machine_without_one(self):
        with pytest.raises(RunSetupError, match="no CUDA GPU is visible"):
            cli_main(["fit", *config_args(MLP, "presets/debug.yaml"), "--trainer.accelerator", "gpu"])


class TestBadFiles:
    @pytest.mark.real_data
    def test_mnist_file_of_the_wrong_shape(self, tmp_path, mnist_dir):
        import gzip

        import numpy as np

        target = tmp_path / "mnist"
        shutil.copytree(mnist_dir, target)
        header = np.array([0x0803, 100, 32, 32], dtype=">i4").tobytes()  # 100 images of 32 x 32
        (target / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(100 * 32 * 32)))
        with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*(checksum|MD5|md5)"):
            fit(tmp_path, "--data.init_args.data_dir", str(tmp_path), "--data.init_args.download", "false")
        assert checkpoints(tmp_path) == []


def test_last_is_the_newest_version_that_holds_a_last_checkpoint(tmp_path):
    """`fit` continues that version; `test` reads its checkpoint and logs into a new version; a fit whose logger
    names a version continues that one or is refused."""
    from jsonargparse import Namespace

    from runtime.run_setup import RunSetupError, resolve_last_checkpoint

    root = tmp_path / "run"
    for version, has_last in ((0, True), (2, True), (10, True), (11, False)):
        (root / f"version_{version}" / "checkpoints").mkdir(parents=True)
        if has_last:
            (root / f"version_{version}" / "checkpoints" / "last.ckpt").write_bytes(b"")

    def config(version=None):
        logger = Namespace(save_dir=str(tmp_path), name="run", version=version)
        return Namespace(
            ckpt_path="last", trainer=Namespace(logger=Namespace(class_path="TensorBoardLogger", init_args=logger))
        )

    newest = str(root / "version_10" / "checkpoints" / "last.ckpt")
    for subcommand, logged_into in (("fit", 10), ("test", None), ("predict", None)):
        resolved = config()
        resolve_last_checkpoint(subcommand, resolved)
        assert resolved.ckpt_path == newest and resolved.trainer.logger.init_args.version == logged_into
    pinned = config(version=2)
    resolve_last_checkpoint("fit", pinned)
    assert pinned.ckpt_path == str(root / "version_2" / "checkpoints" / "last.ckpt")
    with pytest.raises(RunSetupError, match="no last checkpoint under .*version_11/checkpoints/; start without"):
        resolve_last_checkpoint("fit", config(version=11))


class TestOutputFolders:
    def test_log_folder_that_cannot_be_created(self, tmp_path):
        blocker = tmp_path / "a_file"
        blocker.write_text("not a folder")
        with pytest.raises(RunSetupError, match=f"cannot write to {blocker}/logs"):
            cli_main(["fit", *config_args(MLP, "presets/debug.yaml"), *logging_args(blocker / "logs")])

    def test_checkpoint_folder_that_cannot_be_written(self, tmp_path):
        blocker = tmp_path / "a_file"
        blocker.write_text("not a folder")
        with pytest.raises(RunSetupError, match=f"cannot write to {blocker}/ckpt"):
            cli_main(
                [
                    "fit",
                    *config_args(MLP, "presets/debug.yaml"),
                    "--checkpoint.dirpath",
                    str(blocker / "ckpt"),
                    *logging_args(tmp_path),
                ]
            )
        assert checkpoints(tmp_path) == []

    def test_disk_too_full_for_checkpoints(self, tmp_path, monkeypatch):
        from runtime import run_setup

        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(run_setup.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
        with pytest.raises(RunSetupError, match="only 0 MiB free on the disk of .* each checkpoint needs about"):
            fit(tmp_path)
        assert checkpoints(tmp_path) == []
