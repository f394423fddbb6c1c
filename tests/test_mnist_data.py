"""MNIST loading: IDX and .amat files, splits, binarization (generated IDX files; the real ones where marked)."""

import gzip

import numpy as np
import pytest
import torch

from datamodules import MNISTDataModule
from datamodules.files import DataError
from datamodules.mnist import read_amat


def generated(data_dir, **kwargs) -> MNISTDataModule:
    return MNISTDataModule(data_dir=str(data_dir), download=False, check_file=False, **kwargs)


@pytest.fixture(scope="module")
def mnist(fixture_data_dir):
    dm = generated(fixture_data_dir)
    dm.prepare_data()
    dm.setup("fit")
    return dm


class TestDynamicMNIST:
    def test_split_sizes_and_disjointness(self, mnist):
        """Five sixths of the training images train, one sixth validates (600 generated images)."""
        assert (len(mnist.datasets["train"]), len(mnist.datasets["val"]), len(mnist.datasets["test"])) == (
            500,
            100,
            100,
        )
        assert mnist.data_dims == [1, 28, 28]
        label_counts = torch.bincount(torch.cat([mnist.datasets["train"].labels, mnist.datasets["val"].labels]))
        assert label_counts.tolist() == [60] * 10  # every image once

    @pytest.mark.real_data
    def test_real_split(self, mnist_dir):
        dm = MNISTDataModule(data_dir=str(mnist_dir.parent), download=False)
        dm.setup("fit")
        assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (
            50_000,
            10_000,
            10_000,
        )
        label_counts = torch.bincount(torch.cat([dm.datasets["train"].labels, dm.datasets["val"].labels]))
        assert label_counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]

    def test_split_is_fixed_by_seed(self, fixture_data_dir, mnist):
        again = generated(fixture_data_dir)
        again.setup("fit")
        assert torch.equal(again.datasets["val"].x, mnist.datasets["val"].x)
        assert torch.equal(again.datasets["test"].x, mnist.datasets["test"].x)

    def test_eval_sets_are_binary_and_fixed(self, mnist):
        assert set(torch.unique(mnist.datasets["val"].x).tolist()) == {0, 255}
        batch = mnist.on_after_batch_transfer(mnist.datasets["val"].__getitems__([0, 1, 2]), 0)
        assert set(torch.unique(batch["x"]).tolist()) <= {0.0, 1.0}
        assert batch["x"].shape == (3, 1, 28, 28) and batch["index"].tolist() == [0, 1, 2]

    def test_training_batches_are_fresh_bernoulli_draws(self, mnist):
        class Training:
            training = True

        mnist.trainer = Training()
        try:
            raw = mnist.datasets["train"].__getitems__(list(range(200)))
            first = mnist.on_after_batch_transfer(dict(raw), 0)["x"]
            second = mnist.on_after_batch_transfer(dict(raw), 0)["x"]
        finally:
            mnist.trainer = None
        assert set(torch.unique(first).tolist()) == {0.0, 1.0}
        assert not torch.equal(first, second)
        grey = raw["x"].float() / 255
        # The mean of the draws tracks the grey values (2 draws x 156,800 pixels).
        assert abs(((first + second) / 2).mean() - grey.mean()) < 0.005

    def test_loader_yields_dict_batches(self, mnist):
        batch = next(iter(mnist.train_dataloader()))
        assert batch["x"].shape == (50, 1, 28, 28) and batch["x"].dtype == torch.uint8
        assert batch["label"].shape == (50,)


@pytest.mark.real_data
class TestStaticMNIST:
    def test_reads_larochelle_split(self, mnist_dir):
        dm = MNISTDataModule(data_dir=str(mnist_dir.parent), binarization="static", download=False)
        dm.setup("fit")
        assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (
            50_000,
            10_000,
            10_000,
        )
        assert dm.datasets["train"].labels is None
        means = [
            s.x.float().div(255).mean().item() for s in (dm.datasets["train"], dm.datasets["val"], dm.datasets["test"])
        ]
        assert means == pytest.approx([0.1306, 0.1311, 0.1325], abs=5e-4)

    def test_amat_rows_match_a_plain_parser(self, mnist_dir):
        array = read_amat(mnist_dir, "valid", download=False)
        with gzip.open(mnist_dir / "binarized_mnist_valid.amat.gz", "rt") as handle:
            first_rows = [np.array(handle.readline().split(), dtype=np.uint8) for _ in range(3)]
        np.testing.assert_array_equal(array[:3], np.stack(first_rows))


class TestLarochelleFormat:
    def test_wrong_content_is_rejected(self, tmp_path):
        folder = tmp_path / "mnist"
        folder.mkdir()
        (folder / "binarized_mnist_test.amat").write_text("0 1\n")
        with pytest.raises(DataError, match="does not hold Larochelle's binarized MNIST 'test' split"):
            read_amat(folder, "test", download=False)


class TestFiles:
    def test_setup_reads_the_files_once(self, fixture_data_dir, monkeypatch):
        import datamodules.mnist

        dm = generated(fixture_data_dir)
        dm.setup("fit")
        first = dm.datasets
        monkeypatch.setattr(datamodules.mnist, "read_idx", lambda *args: pytest.fail("read again"))
        dm.setup("test")
        assert dm.datasets is first

    def test_a_gzip_that_is_not_idx(self, tmp_path):
        from torchvision.datasets.mnist import read_image_file

        from datamodules.mnist import read_idx

        path = tmp_path / "t10k-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(b"not an IDX file at all"))
        with pytest.raises(DataError, match="is not a valid IDX file"):
            read_idx(path, read_image_file)

    def test_each_file_is_checksummed_once_per_process_unless_it_changes(self, tmp_path, monkeypatch):
        import datamodules.files as files

        path = tmp_path / "a.bin"
        path.write_bytes(b"abc")
        remote = files.RemoteFile("a.bin", ("http://127.0.0.1:9/a.bin",), md5="900150983cd24fb0d6963f7d28e17f72")
        hashed = []
        digest = files.file_digest
        monkeypatch.setattr(files, "file_digest", lambda p, a: hashed.append(p) or digest(p, a))
        files.fetch(tmp_path, remote, download=False)
        files.fetch(tmp_path, remote, download=False)
        assert len(hashed) == 1
        path.write_bytes(b"abcd")  # another size: changed even where file times are coarse
        with pytest.raises(DataError, match="corrupt or incomplete"):
            files.fetch(tmp_path, remote, download=False)

    def test_a_failed_download_is_reported(self, tmp_path):
        from datamodules.files import RemoteFile, fetch

        remote = RemoteFile("a.bin", ("http://127.0.0.1:9/a.bin",))  # nothing listens on port 9 of this machine
        with pytest.raises(
            DataError,
            match=r"missing data file .*a\.bin; downloading failed \(.*refused.*\): download http://127\.0\.0\.1:9/a\.bin",
        ):
            fetch(tmp_path, remote, download=True)
        assert not (tmp_path / "a.bin").exists()
