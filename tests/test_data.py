import pickle
import struct

import numpy as np
import pytest
import torch

from flatness import data


def test_mnist1d_is_local_deterministic_and_leaves_global_rng_alone():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    a = data.mnist1d()
    assert np.array_equal(np.random.get_state()[1], state)
    b = data.mnist1d()
    assert a.X_train.shape == (4000, 40) and a.X_test.shape == (1000, 40)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert a.X_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert set(a.y_train.tolist()) == set(range(10))
    c = data.mnist1d(channels=True, n_train=500, n_test=100)
    assert c.X_train.shape == (500, 1, 40) and c.X_test.shape == (100, 1, 40)


def test_mnist1d_never_downloads(monkeypatch):
    import mnist1d.data as m

    monkeypatch.setattr(m, "get_dataset", lambda *a, **k: pytest.fail("download path used"))
    data._mnist1d_arrays.cache_clear()
    data.mnist1d(num_samples=200, seed=7)


def test_digits_binary_split():
    s = data.digits(classes=(0, 1), seed=0)
    assert s.num_classes == 2 and set(s.y_train.tolist()) == {0, 1}
    assert abs(float(s.X_train.mean())) < 1e-5


@pytest.mark.parametrize("kwargs,match", [({"classes": (3,)}, "classes"), ({"classes": (1, 12)}, "classes")])
def test_digits_bad_classes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.digits(**kwargs)


def test_subset_bad_n():
    with pytest.raises(ValueError, match="n: expected"):
        data.subset((torch.zeros(3, 1), torch.zeros(3)), 5)


def _write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with open(path, "wb") as fh:
        fh.write(header + array.tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_idx_format(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    split = data.torchvision_dataset(name, tmp_path)
    assert split.X_train.shape == (12, 1, 28, 28) and split.X_test.shape == (5, 1, 28, 28)
    assert 0.0 <= float(split.X_train.min()) and float(split.X_train.max()) <= 1.0
    flat = data.torchvision_dataset(name, tmp_path, flatten=True, n_train=4)
    assert flat.X_train.shape == (4, 784)


def test_torchvision_cifar_format(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    # The tiny files cannot match the real archives' checksums: skip only the checksum.
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: __import__("os").path.exists(path))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for fname in names:
        batch = {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [1, 2, 3]}
        with open(folder / fname, "wb") as fh:
            pickle.dump(batch, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    split = data.torchvision_dataset("CIFAR10", tmp_path)
    assert split.X_train.shape == (15, 3, 32, 32) and split.y_test.tolist() == [1, 2, 3]


def test_torchvision_missing_files_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.torchvision_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="name: expected"):
        data.torchvision_dataset("imagenet", tmp_path)


def test_from_spec():
    assert data.from_spec({"name": "mnist1d", "n_train": 100}).X_train.shape == (100, 40)
    with pytest.raises(ValueError, match="spec"):
        data.from_spec({"name": "nope"})
