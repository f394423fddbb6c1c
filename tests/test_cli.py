"""The command line: test runs from a checkpoint, TensorBoard gets what the README promises, presets (bf16) work, and
bad input fails clearly. (Every experiment's config and life: tests/test_configs.py, tests/test_every_experiment.py.)"""

import math
import shutil

import pytest
import torch
import yaml
from conftest import fixture_args
from helpers import MLP, config_args, error_line, last_scalar, logging_args, main_exit, read_events, run_main

from datamodules.files import DataError
from main import cli_main
from runtime.checkpoint_identity import CheckpointMismatchError

# SA-VAE configs run their debug fits with K = 2 SVI steps on batches of 10 (K = 20 on batches of 50 is about 40 s a
# step on 2 CPU cores); every other setting is the config's.
SA_DEBUG = ["--model.init_args.refinement.init_args.steps", "2", "--data.init_args.batch_size", "10"]


def fit(tmp_path, config: str, *extra: str, name: str = "run", presets=()):
    configs = config_args(config, *presets, "presets/debug.yaml")
    return cli_main(["fit", *configs, *logging_args(tmp_path, name), *extra])


@pytest.mark.integration
class TestRunOutputs:
    def test_mlp_fit_logs_and_checkpoints(self, debug_run):
        log_dir = debug_run
        events = read_events(log_dir)
        scalars = set(events.Tags()["scalars"])
        assert {
            "train/loss",
            "train/elbo",
            "train/recon",
            "train/kl",
            "train/beta",
            "val/elbo",
            "val/recon",
            "val/kl",
            "val/mi",
            "val/mi_batch",
            "val/au",
        } <= scalars
        assert last_scalar(events, "train/beta") == 1.0
        saved = yaml.safe_load((log_dir / "config.yaml").read_text())
        assert saved["model"]["class_path"] == "models.SkipVAE"
        hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
        assert list(hparams["data_dims"]) == [1, 28, 28]  # linked from the datamodule
        # charts at the global step like every other view (one validation, after the 4 training steps)
        assert [event.step for event in events.Images("val/kl_per_dimension")] == [4]

    def test_test_from_checkpoint_reports_all_metrics(self, debug_run, tmp_path):
        log_dir = debug_run
        cli = cli_main(
            [
                "test",
                *config_args(MLP, "presets/debug.yaml"),
                *logging_args(tmp_path),
                "--ckpt_path",
                str(log_dir / "checkpoints" / "last.ckpt"),
            ]
        )
        metrics = cli.trainer.callback_metrics
        for name in ("test/elbo", "test/recon", "test/kl", "test/mi", "test/mi_batch", "test/au", "test/nll_iw"):
            assert math.isfinite(float(metrics[name])), name
        assert float(metrics["test/nll_iw"]) <= float(metrics["test/elbo"]) + 1e-3
        events = read_events(tmp_path / "run" / "version_0")
        tags = [tag for tag in events.Tags()["scalars"] if tag.startswith("test/")]
        assert tags and all(len(events.Scalars(tag)) == 1 for tag in tags)
        # stamped at the checkpoint's training step (4 steps with the debug preset), like the run's validation
        assert {events.Scalars(tag)[0].step for tag in tags} == {4}
        assert [event.step for event in events.Images("test/kl_per_dimension")] == [4]

    def test_tensorboard_holds_scalars_and_image_grids(self, tmp_path, caplog):
        caplog.set_level("INFO")
        fit(tmp_path, "mnist_skipvae.yaml")
        events = read_events(tmp_path / "run" / "version_0")
        assert {"train/elbo", "val/elbo", "val/kl"} <= set(events.Tags()["scalars"])
        assert {"val/reconstructions", "val/samples"} <= set(events.Tags()["images"])
        summary = caplog.text
        assert "Total params" in summary and "Flops" not in summary and "FLOPs" not in summary  # none measured

    def test_text_run_logs_text_samples_and_perplexity(self, tmp_path, fixture_data_dir):
        fit(tmp_path, "yahoo_skipvae.yaml", *fixture_args(fixture_data_dir))
        log_dir = tmp_path / "run" / "version_0"
        tags = read_events(log_dir).Tags()["tensors"]
        assert {"val/reconstructions/text_summary", "val/samples/text_summary"} <= set(tags)
        assert (log_dir / "vocab.txt").read_text().startswith("<pad>\t0\n<bos>\t1\n<eos>\t2\n_UNK\t3\n")
        test = cli_main(
            [
                "test",
                *config_args("yahoo_skipvae.yaml", "presets/debug.yaml"),
                *logging_args(tmp_path, "test"),
                *fixture_args(fixture_data_dir),
                "--ckpt_path",
                str(log_dir / "checkpoints" / "last.ckpt"),
            ]
        )
        metrics = test.trainer.callback_metrics
        for name in ("test/ppl_iw", "test/ppl_elbo", "test/nll_iw", "test/mi", "test/au"):
            assert math.isfinite(float(metrics[name])), name
        # per-token perplexity: total negative ELBO over total predicted tokens (words + <eos>, not <bos>)
        dataset = test.datamodule.datasets["test"]
        batches = [dataset[i]["x"] for i in range(2)]  # debug preset: 2 test batches
        tokens = sum(int((x[:, 1:] != 0).sum()) for x in batches)
        documents = sum(len(x) for x in batches)
        expected = float(metrics["test/elbo"]) * documents / tokens
        assert math.log(float(metrics["test/ppl_elbo"])) == pytest.approx(expected, rel=1e-4)


@pytest.mark.integration
class TestPresets:
    def test_bf16_mixed_fit(self, tmp_path):
        # small batches: bf16 is emulated, hence slow, on CPUs without native bfloat16 arithmetic
        cli = cli_main(
            [
                "fit",
                *config_args("mnist_skipvae.yaml", "presets/debug.yaml", "presets/bf16.yaml"),
                *logging_args(tmp_path),
                "--samples.every_n_epochs",
                "0",
                "--data.init_args.batch_size",
                "10",
                "--data.init_args.eval_batch_size",
                "10",
            ]
        )
        assert cli.trainer.precision == "bf16-mixed"
        assert math.isfinite(float(cli.trainer.callback_metrics["val/elbo"]))

    @pytest.mark.parametrize("reverse_pass", ["exact", "official"])
    def test_bf16_mixed_savae_fit(self, tmp_path, reverse_pass):
        cli = cli_main(
            [
                "fit",
                *config_args("mnist_skipsavae_mlp.yaml", "presets/debug.yaml", "presets/bf16.yaml"),
                *logging_args(tmp_path),
                *SA_DEBUG,
                "--data.init_args.eval_batch_size",
                "10",
                "--model.init_args.refinement.init_args.hessian_products",
                reverse_pass,
            ]
        )
        metrics = cli.trainer.callback_metrics
        assert cli.trainer.precision == "bf16-mixed"
        assert math.isfinite(float(metrics["val/elbo_svi"])) and math.isfinite(float(metrics["train/loss"]))


class TestBadInput:
    @pytest.mark.integration
    def test_unknown_config_key(self, tmp_path, capsys):
        bad = tmp_path / "bad.yaml"
        bad.write_text("model:\n  init_args:\n    latent_dimm: 3\n")
        result = main_exit(["fit", *config_args(MLP), "--config", str(bad)], capsys)
        assert result.returncode != 0
        assert "latent_dimm" in result.stderr
        assert "Traceback" not in result.stderr

    @pytest.mark.integration
    def test_missing_mnist_folder(self, tmp_path):
        result = run_main(
            [
                "fit",
                *config_args(MLP, "presets/debug.yaml"),
                *logging_args(tmp_path),
                "--data.init_args.data_dir",
                str(tmp_path / "nowhere"),
                "--data.init_args.download",
                "false",
            ]
        )
        assert result.returncode == 1
        message = error_line(result)
        assert message.startswith("error: missing data file")
        assert str(tmp_path / "nowhere" / "mnist") in message and "http" in message

    @pytest.mark.parametrize("real", [pytest.param(True, marks=pytest.mark.real_data), False])
    def test_corrupt_gzip(self, tmp_path, mnist_dir, fixture_data_dir, real):
        """A truncated file: refused by its checksum (the real files) or, unchecked, as a damaged gzip file."""
        target = tmp_path / "data" / "mnist"
        shutil.copytree(mnist_dir if real else fixture_data_dir / "mnist", target)
        broken = target / "t10k-labels-idx1-ubyte.gz"
        broken.chmod(0o644)
        broken.write_bytes(broken.read_bytes()[:30])
        message = "is corrupt or incomplete" if real else "is not a valid gzip file"
        with pytest.raises(DataError, match=f"t10k-labels-idx1-ubyte.gz {message}.*[Dd]ownload it again"):
            fit(
                tmp_path,
                MLP,
                "--data.init_args.data_dir",
                str(tmp_path / "data"),
                "--data.init_args.download",
                "false",
                "--data.init_args.check_file",
                str(real).lower(),
            )

    @pytest.mark.integration
    def test_checkpoint_from_another_model(self, debug_run):
        from models import VAE

        log_dir = debug_run
        with pytest.raises(CheckpointMismatchError, match="model class SkipVAE \\(configured: VAE\\)"):
            VAE.load_from_checkpoint(log_dir / "checkpoints" / "last.ckpt")

    def test_checkpoint_not_from_this_project(self, tmp_path):
        from models import SkipVAE

        path = tmp_path / "other.ckpt"
        torch.save({"state_dict": {}, "hyper_parameters": {}, "pytorch-lightning_version": "2.6.6"}, path)
        with pytest.raises(CheckpointMismatchError, match="not written by a VAE/SkipVAE"):
            SkipVAE.load_from_checkpoint(path)

    @pytest.mark.integration
    def test_nan_loss_stops_with_clear_error(self, tmp_path):
        from runtime.guards import NonFiniteLossError

        with pytest.raises(NonFiniteLossError, match="training loss is not finite at global step"):
            fit(tmp_path, MLP, "--model.init_args.optimizer.init_args.lr", "1e30", "--trainer.limit_train_batches", "4")
