"""TensorBoard after a debug fit and test: the embedding projector, latent traversals and interpolations (images)
or homotopies (text), the HParams entry with the test metrics, no `epoch`/`hp_metric` clutter, and image panels
stamped with the global step."""

import pytest
from conftest import fixture_args
from helpers import config_args, logging_args, read_events
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from experiments import export_views
from main import cli_main

pytestmark = pytest.mark.integration  # every test here trains and tests through main.py


def fit_and_test(tmp_path, config: str, *extra: str):
    cli_main(["fit", *config_args(config, "presets/debug.yaml"), *logging_args(tmp_path, "fit"), *extra])
    fit_dir = tmp_path / "fit" / "version_0"
    cli_main(
        [
            "test",
            *config_args(config, "presets/debug.yaml"),
            *logging_args(tmp_path, "test"),
            *extra,
            "--ckpt_path",
            str(fit_dir / "checkpoints" / "last.ckpt"),
        ]
    )
    return fit_dir, tmp_path / "test" / "version_0"


def hparams_entry(log_dir) -> tuple[dict, list[str]]:
    """The run's hyper-parameters (in the order of its columns) and the metric names of its HParams entry, read from
    the raw event file (the entry's summaries carry plugin data only, which EventAccumulator does not keep)."""
    contents = {}
    for path in log_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    contents[value.tag] = plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content
                    )
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(contents)
    start = contents["_hparams_/session_start_info"].session_start_info
    experiment = contents["_hparams_/experiment"].experiment
    columns = [info.name for info in experiment.hparam_infos]
    assert sorted(start.hparams) == sorted(columns)
    return {name: start.hparams[name] for name in columns}, [m.name.tag for m in experiment.metric_infos]


# The columns a comparison reads first, numbered so that TensorBoard (which orders columns by name) shows them first.
LEADING = ["1 model", "2 encoder", "3 decoder", "4 latent_dim", "5 lr", "6 kl_schedule", "7 remedies"]


def projector_files(log_dir) -> dict[str, str]:
    tensors = list(log_dir.rglob("tensors.tsv"))
    assert len(tensors) == 1 and (log_dir / "projector_config.pbtxt").exists()
    folder = tensors[0].parent
    return {f.name: f for f in folder.iterdir()}


def test_image_run(tmp_path):
    fit_dir, test_dir = fit_and_test(tmp_path, "mnist_skipvae_mlp.yaml")
    fit_events, test_events = read_events(fit_dir), read_events(test_dir)
    for events in (fit_events, test_events):
        assert not {"epoch", "hp_metric"} & set(events.Tags()["scalars"])
    assert [event.step for event in fit_events.Images("val/samples")] == [4]  # the global step after 4 batches
    images = test_events.Tags()["images"]
    assert {"test/latent_traversals", "test/interpolations"} <= set(images)
    traversal = test_events.Images("test/latent_traversals")[-1]
    # debug preset: 2 dimensions x 3 steps of 28 x 28 images, padded by make_grid
    assert (traversal.width, traversal.height) == (3 * 30 + 2, 2 * 30 + 2)
    interpolation = test_events.Images("test/interpolations")[-1]
    assert (interpolation.width, interpolation.height) == (5 * 30 + 2, 30 + 2)
    files = projector_files(test_dir)
    rows = files["tensors.tsv"].read_text().splitlines()
    assert len(rows) == 32 and len(rows[0].split("\t")) == 20  # 2 test batches of 16, latent 20
    assert len(files["metadata.tsv"].read_text().splitlines()) == 32 and "sprite.png" in files
    hparams, metrics = hparams_entry(test_dir)
    assert list(hparams)[: len(LEADING)] == LEADING == sorted(hparams)[: len(LEADING)]
    leading = {name: value.string_value or value.number_value for name, value in hparams.items() if name in LEADING}
    assert leading == {
        "1 model": "SkipVAE",
        "2 encoder": "MLPEncoder",
        "3 decoder": "MLPDecoder",
        "4 latent_dim": "20",  # a whole number as one, not 20.000
        "5 lr": pytest.approx(0.001),
        "6 kl_schedule": "beta 1",
        "7 remedies": "none",
    }
    assert hparams["batch_size"].string_value == "50" and hparams["encoder/init_args/hidden"].string_value == "1024"
    assert not [k for k in hparams if k.startswith("_")]
    assert {"test/elbo", "test/kl", "test/mi", "test/au", "test/nll_iw"} <= set(metrics)
    assert "hp_metric" not in metrics
    fit_hparams, fit_metrics = hparams_entry(fit_dir)  # the fit's row: its last validation metrics
    assert list(fit_hparams)[: len(LEADING)] == LEADING and {"val/elbo", "val/kl", "val/mi", "val/au"} <= set(
        fit_metrics
    )
    written = export_views.export_views(test_dir, ["test/latent_traversals", "test/interpolations"], tmp_path / "png")
    assert [p.name for p in written] == ["latent_traversals.png", "interpolations.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)


def test_text_run(tmp_path, fixture_data_dir, capsys):
    _, test_dir = fit_and_test(tmp_path, "yahoo_skipvae.yaml", *fixture_args(fixture_data_dir))
    events = read_events(test_dir)
    tags = set(events.Tags()["tensors"])
    assert {"test/latent_traversals/text_summary", "test/interpolations/text_summary"} <= tags
    homotopy = events.Tensors("test/interpolations/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert homotopy.count("t = ") == 3 and "*input 0*" in homotopy and "*input 1*" in homotopy
    written = export_views.export_views(test_dir, ["test/interpolations"], tmp_path / "text")
    assert [p.name for p in written] == ["interpolations.md"] and written[0].read_text() == homotopy + "\n"
    capsys.readouterr()
    assert export_views.main([str(test_dir), "test/interpolations", "test/nothing", "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "x").exists()  # nothing written
    files = projector_files(test_dir)
    metadata = files["metadata.tsv"].read_text().splitlines()
    assert len(metadata) == len(files["tensors.tsv"].read_text().splitlines()) and "sprite.png" not in files
    assert all(line.strip() for line in metadata)  # each point labelled with its document
    _, metrics = hparams_entry(test_dir)
    assert {"test/ppl_iw", "test/ppl_elbo", "test/mi"} <= set(metrics)
