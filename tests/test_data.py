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


def _write_cifar(folder, rng, n=3, parts=("train", "test")):
    folder.mkdir(parents=True, exist_ok=True)
    names = ([f"data_batch_{i}" for i in range(1, 6)] if "train" in parts else []) + \
        (["test_batch"] if "test" in parts else [])
    for fname in names:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / fname, "wb") as fh:
            pickle.dump(batch, fh)


def test_torchvision_cifar_format(tmp_path):
    rng = np.random.default_rng(0)
    _write_cifar(tmp_path / "cifar-10-batches-py", rng)
    split = data.torchvision_dataset("CIFAR10", tmp_path, verify=False)
    assert split.X_train.shape == (15, 3, 32, 32) and split.X_test.shape == (3, 3, 32, 32)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as fh:
        batch = pickle.load(fh)
    assert split.y_test.tolist() == batch["labels"]
    # pixel (channel 1, row 0, column 2) of test image 0 is byte 1024 + 2 of its row
    assert float(split.X_test[0, 1, 0, 2]) == pytest.approx(batch["data"][0, 1026] / 255.0)
    with pytest.raises(ValueError, match="checksum"):  # tiny files are not CIFAR-10's
        data.torchvision_dataset("cifar10", tmp_path)


def test_torchvision_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.torchvision_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="name: expected"):
        data.torchvision_dataset("imagenet", tmp_path)


def _mnist_files(root, n_train=40, n_test=10, parts=("train", "t10k")):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        if prefix in parts:
            _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
            _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_training_files_alone_with_a_held_out_part(tmp_path):
    _mnist_files(tmp_path, n_train=50, parts=("train",))
    with pytest.raises(FileNotFoundError, match="test_fraction"):
        data.torchvision_dataset("mnist", tmp_path)
    s = data.torchvision_dataset("mnist", tmp_path, test_fraction=0.2, seed=3)
    assert len(s.y_train) == 40 and len(s.y_test) == 10
    assert sorted(s.y_test.tolist()) == list(range(10))  # stratified: one of each class
    again = data.torchvision_dataset("mnist", tmp_path, test_fraction=0.2, seed=3)
    assert torch.equal(s.X_test, again.X_test)


def test_normalization_uses_the_training_statistics(tmp_path):
    _mnist_files(tmp_path)
    raw = data.torchvision_dataset("mnist", tmp_path)
    s = data.torchvision_dataset("mnist", tmp_path, normalize=True)
    mean, std = raw.X_train.mean(), raw.X_train.std()
    assert float(s.X_train.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(s.X_train.std()) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(s.X_test, (raw.X_test - mean) / std, atol=1e-5)


def test_a_cached_training_run_on_mnist_files(tmp_path, monkeypatch):
    from flatness.cache import load_or_train
    from flatness.training import TrainConfig

    _mnist_files(tmp_path / "data", n_train=30, n_test=10)
    monkeypatch.setenv("FLATNESS_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(model={"name": "mlp", "input_dim": 784, "widths": [8], "num_classes": 10},
                      data={"name": "mnist", "root": str(tmp_path / "data"), "flatten": True},
                      lr=0.05, batch_size=10, epochs=2)
    model, hist = load_or_train(cfg, progress=False)
    assert hist["epochs"] == 2 and len(list((tmp_path / "cache").glob("*.pt"))) == 1
    again, _ = load_or_train(cfg, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))


def test_a_cached_training_run_on_cifar_files(tmp_path, monkeypatch):
    from flatness.cache import load_or_train
    from flatness.training import TrainConfig

    _write_cifar(tmp_path / "data" / "cifar-10-batches-py", np.random.default_rng(2), n=4)
    monkeypatch.setenv("FLATNESS_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(model={"name": "mlp", "input_dim": 3072, "widths": [8], "num_classes": 10},
                      data={"name": "cifar10", "root": str(tmp_path / "data"), "flatten": True,
                            "normalize": True, "verify": False},
                      lr=0.05, batch_size=10, epochs=1)
    _, hist = load_or_train(cfg, progress=False)
    assert hist["epochs"] == 1 and len(hist["train_acc"]) == 1


def test_from_spec(tmp_path):
    assert data.from_spec({"name": "mnist1d", "n_train": 100}).X_train.shape == (100, 40)
    with pytest.raises(ValueError, match="spec"):
        data.from_spec({"name": "nope"})
    _mnist_files(tmp_path)
    s = data.from_spec({"name": "mnist", "root": str(tmp_path), "n_train": 5})
    assert s.X_train.shape == (5, 1, 28, 28)
