"""The Fashion-MNIST loader on IDX files written here, and on the real files."""

import gzip
import hashlib

import numpy as np
import pytest

from lenet_sweep import data


def write_idx(path, array: np.ndarray) -> str:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw))
    return hashlib.sha256(raw).hexdigest()


@pytest.fixture
def tiny_dir(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (50, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(50) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(20) % 10,
    }
    sums = {name: write_idx(tmp_path / name, a) for name, a in arrays.items()}
    return tmp_path, arrays, sums


def test_reads_idx_files_and_checks_them(tiny_dir):
    folder, arrays, sums = tiny_dir
    (x, y), (xt, yt) = data.load_arrays(folder, sums)
    assert x.shape == (50, 28, 28) and xt.shape == (20, 28, 28)
    np.testing.assert_array_equal(x, arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(yt, arrays["t10k-labels-idx1-ubyte.gz"])


def test_corrupt_file_names_path_and_expected_checksum(tiny_dir):
    folder, arrays, sums = tiny_dir
    labels = arrays["train-labels-idx1-ubyte.gz"].copy()
    labels[0] = 9
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(data.DataError) as err:
        data.load_arrays(folder, sums)
    msg = str(err.value)
    assert str(folder / "train-labels-idx1-ubyte.gz") in msg
    assert sums["train-labels-idx1-ubyte.gz"] in msg and "dataset-fashion-mnist" in msg
    assert "\n" not in msg


def test_truncated_gzip_is_a_clear_error(tiny_dir):
    folder, _, sums = tiny_dir
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte.gz: cannot read it as gzip"):
        data.load_arrays(folder, sums)


def test_published_checksums_reject_other_files(tiny_dir):
    folder, _, _ = tiny_dir
    with pytest.raises(data.DataError, match="is corrupt.*expected c59f468a"):
        data.load_arrays(folder)


def test_configured_dir_is_the_only_place_looked(tmp_path):
    with pytest.raises(data.DataError, match=f"data.dir={tmp_path}: train-images-idx3-ubyte.gz not found"):
        data.find_dir(str(tmp_path))


def test_nothing_found_lists_where_it_looked(tmp_path):
    with pytest.raises(data.DataError, match="Fashion-MNIST not found .*apt-get install dataset-fashion-mnist"):
        data.find_dir(None, candidates=[tmp_path / "a", tmp_path / "b"], download=False)


def test_split_takes_the_last_fraction_for_validation_like_keras():
    x = np.arange(100 * 28 * 28).reshape(100, 28, 28) % 256
    y = np.arange(100) % 10
    s = data.split((x, y), (x[:10], y[:10]), validation_split=0.1, train_limit=50, normalize=True)
    assert len(s.x_train) == 45 and len(s.x_val) == 5
    np.testing.assert_array_equal(s.y_val, y[45:50])
    assert s.x_train.shape[1:] == (28, 28, 1) and s.x_train.max() <= 1.0


def test_real_files_verify_and_load():
    folder = data.find_dir(None, download=False)
    (x, y), (xt, yt) = data.load_arrays(folder)
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert sorted(set(y.tolist())) == list(range(10)) and len(yt) == 10000
