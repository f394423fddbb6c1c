"""`make data` (python -m datamodules.fetch) from a local HTTP server on 127.0.0.1: files are checked against their
pinned checksums, a corrupted one is set aside, a pickle is opened only after its checksum and only for arrays."""

import gzip
import pickle
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR

from datamodules.fetch import main
from datamodules.files import DataError
from datamodules.reference_posteriors import convert, read_arrays_pickle


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(folder served, its URL): an HTTP server on 127.0.0.1 for the test's duration."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


class Payload:
    """A pickle that would write a file when loaded (what a malicious posterior file could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def posterior_arrays(n: int = 30, d: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        np.arange(n) % 10,
        rng.standard_normal((n, d)).astype(np.float32),
        rng.standard_normal((n, d)).astype(np.float32),
        rng.standard_normal((n, d)).astype(np.float32),
    ]


@pytest.mark.real_data
def test_fetches_and_checks_the_real_files_from_a_mirror(server, tmp_path, capsys):
    served, url = server
    (served / "mnist").mkdir()
    for path in (DATA_DIR / "mnist").glob("*-ubyte.gz"):
        shutil.copy(path, served / "mnist" / path.name)
    for path in (DATA_DIR / "mnist").glob("binarized_mnist_*.amat.gz"):
        (served / "mnist" / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    data_dir = tmp_path / "data"
    assert main(["--data-dir", str(data_dir), "--dataset", "mnist", "--mirror", url]) == 0
    assert len(list((data_dir / "mnist").iterdir())) == 7
    from datamodules import MNISTDataModule

    for binarization in ("dynamic", "static"):  # what was fetched is what the data module reads
        dm = MNISTDataModule(data_dir=str(data_dir), binarization=binarization, download=False)
        dm.setup("fit")
        assert len(dm.datasets["train"]) == 50_000
    assert main(["--data-dir", str(data_dir), "--dataset", "mnist"]) == 0  # present: checked, not downloaded
    out = capsys.readouterr().out
    assert out.count("(present") == 7 and "7 of 7 files in place and checked" in out


def test_a_corrupted_download_is_refused_and_set_aside(server, tmp_path, capsys):
    served, url = server
    (served / "mnist").mkdir()
    (served / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(100)))
    data_dir = tmp_path / "data"
    assert main(["--data-dir", str(data_dir), "--dataset", "mnist", "--mirror", url]) == 1
    printed = capsys.readouterr()
    out = printed.out
    assert "failed  mnist/t10k-labels-idx1-ubyte.gz: checksum mismatch, set aside as" in out
    assert not (data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert (data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz.rejected").exists()
    assert "404" in out or "Not Found" in out  # the files the mirror does not have are reported too
    # one short line per file, then a summary; each URL once, in the list of what to fetch by hand
    files = [line for line in out.splitlines() if line.startswith(("ok ", "failed "))]
    by_hand = [line for line in printed.err.splitlines() if line.startswith("  http")]
    assert len(files) == len(by_hand) == 7 and max(len(line) for line in files + by_hand) < 160
    assert "0 of 7 files in place and checked" in out and printed.err.count(url) == 7 and out.count(url) == 0


def test_a_pickle_is_refused_by_its_checksum_before_it_is_opened(server, tmp_path, capsys):
    served, url = server
    marker = tmp_path / "payload-ran"
    (served / "reference").mkdir()
    (served / "reference" / "mnist-skip.pkl").write_bytes(pickle.dumps([Payload(marker)]))
    data_dir = tmp_path / "data"
    assert main(["--data-dir", str(data_dir), "--dataset", "reference", "--mirror", url]) == 1
    assert "failed  reference/mnist-skip.pkl: checksum mismatch, set aside as" in capsys.readouterr().out
    assert not marker.exists() and not list((data_dir / "reference").glob("*.npz"))


def test_only_numpy_arrays_are_unpickled(tmp_path):
    marker = tmp_path / "payload-ran"
    with pytest.raises(DataError, match="refused to load pathlib"):
        read_arrays_pickle(pickle.dumps([np.zeros(3), Payload(marker)]))
    assert not marker.exists()
    with pytest.raises(DataError, match="refused to load builtins.eval"):
        read_arrays_pickle(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DataError, match="expected a list of numpy arrays"):
        read_arrays_pickle(pickle.dumps({"labels": 1}))


def test_a_pickle_of_arrays_becomes_the_npz_diagnose_reads(tmp_path):
    arrays = posterior_arrays()
    source = tmp_path / "mnist-skip.pkl"
    for protocol in (2, 3, 5):
        source.write_bytes(pickle.dumps(arrays, protocol=protocol))
        target = convert(source, tmp_path / "reference" / "mnist-skip-latents.npz")
        with np.load(target) as data:
            assert data["labels"].dtype == np.int64 and data["mean"].dtype == np.float32
            for key, array in zip(("labels", "z", "mean", "logvar"), arrays):
                np.testing.assert_array_equal(data[key], array)
    from experiments.diagnose import load_posteriors

    assert load_posteriors(target)["mean"].shape == (30, 4)
    source.write_bytes(pickle.dumps(arrays[:3]))
    with pytest.raises(DataError, match="expected 4 arrays"):
        convert(source, tmp_path / "other.npz")
