"""OmniglotDataModule on a generated chardata.mat: orientation, splits, binarization, labels and bad files."""

import numpy as np
import pytest
import torch
from fixtures import GLYPH, write_chardata

from datamodules import OmniglotDataModule
from datamodules.files import DataError
from datamodules.omniglot import read_chardata


def make_datamodule(tmp_path, **kwargs) -> OmniglotDataModule:
    dm = OmniglotDataModule(data_dir=str(tmp_path), check_file=False, download=False, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot_data")
    (root / "omniglot").mkdir()
    write_chardata(root / "omniglot" / "chardata.mat")
    return root


class TestReading:
    def test_glyph_comes_back_upright(self, data_dir):
        arrays = read_chardata(data_dir / "omniglot" / "chardata.mat")
        for split in ("train", "test"):
            np.testing.assert_array_equal(arrays[split][0], GLYPH.astype(np.float32))
            # the bar is on the left and the foot at the bottom: not transposed, not flipped
            assert arrays[split][0][10, 7] == 1 and arrays[split][0][22, 15] == 1 and arrays[split][0][7, 22] == 0

    def test_shapes_labels_and_splits(self, data_dir):
        dm = make_datamodule(data_dir)
        assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (100, 2000, 60)
        assert dm.data_dims == [1, 28, 28]
        assert dm.datasets["train"].x.shape == (100, 1, 28, 28) and dm.datasets["train"].x.dtype == torch.float32
        assert dm.datasets["train"].labels.shape == (100,) and int(dm.datasets["train"].labels.max()) < 50
        # the validation images are training images chosen by the seeded permutation, disjoint from training
        order = torch.randperm(2100, generator=torch.Generator().manual_seed(0))
        raw = torch.from_numpy(read_chardata(data_dir / "omniglot" / "chardata.mat")["train"]).unsqueeze(1)
        torch.testing.assert_close(dm.datasets["train"].x, raw[order[2000:]])

    def test_binarization_fixed_for_evaluation_dynamic_for_training(self, data_dir):
        dm1, dm2 = make_datamodule(data_dir), make_datamodule(data_dir)
        assert set(dm1.datasets["test"].x.unique().tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(dm1.datasets["test"].x, dm2.datasets["test"].x)  # same seed, same binarization
        batch = dm1.datasets["train"].__getitems__(list(range(50)))

        class Training:
            training = True

        dm1.trainer = Training()
        draws = [dm1.on_after_batch_transfer(dict(batch), 0)["x"] for _ in range(2)]
        assert set(draws[0].unique().tolist()) <= {0.0, 1.0} and not torch.equal(draws[0], draws[1])
        # each pixel is a Bernoulli draw of its grey value: the mean over many draws approaches it
        mean = torch.stack([dm1.on_after_batch_transfer(dict(batch), 0)["x"] for _ in range(400)]).mean(0)
        assert (mean - batch["x"]).abs().max() < 0.12


class TestBadFiles:
    def test_missing_file_names_url_and_folder(self, tmp_path):
        dm = OmniglotDataModule(data_dir=str(tmp_path), download=False)
        with pytest.raises(DataError, match=r"chardata\.mat.*https://.*iwae.*omniglot"):
            dm.prepare_data()

    def test_checksum_mismatch(self, data_dir):
        dm = OmniglotDataModule(data_dir=str(data_dir), download=False)
        with pytest.raises(DataError, match="corrupt or incomplete: its git_sha1"):
            dm.prepare_data()

    def test_corrupt_mat(self, tmp_path):
        (tmp_path / "omniglot").mkdir()
        (tmp_path / "omniglot" / "chardata.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(50))
        with pytest.raises(DataError, match="not a readable MATLAB file"):
            make_datamodule(tmp_path)

    def test_wrong_shape(self, tmp_path):
        from scipy.io import savemat

        (tmp_path / "omniglot").mkdir()
        savemat(
            str(tmp_path / "omniglot" / "chardata.mat"), {"data": np.zeros((28, 28)), "testdata": np.zeros((784, 3))}
        )
        with pytest.raises(DataError, match="'data' has shape"):
            make_datamodule(tmp_path)

    def test_values_out_of_range(self, tmp_path):
        from scipy.io import savemat

        (tmp_path / "omniglot").mkdir()
        savemat(
            str(tmp_path / "omniglot" / "chardata.mat"),
            {"data": np.full((784, 2100), 255.0), "testdata": np.zeros((784, 3))},
        )
        with pytest.raises(DataError, match="outside \\[0, 1\\]"):
            make_datamodule(tmp_path)
