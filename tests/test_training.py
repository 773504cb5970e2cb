
import pytest
import torch

from flatness import training
from flatness.cache import cache_path, load_or_train
from flatness.models import mlp
from flatness.training import TrainConfig

SMALL = TrainConfig(model={"name": "mlp", "input_dim": 40, "widths": [16], "num_classes": 10},
                    data={"name": "mnist1d", "n_train": 300, "n_test": 100},
                    lr=0.05, momentum=0.9, batch_size=32, epochs=3, seed=1)


def test_cache_round_trip(cache):
    model, hist = load_or_train(SMALL)
    path = cache_path(SMALL)
    assert path.exists() and hist["epochs"] == 3 and len(hist["train_acc"]) == 3
    stamp = path.stat().st_mtime_ns
    again, hist2 = load_or_train(SMALL)
    assert path.stat().st_mtime_ns == stamp  # not retrained
    assert hist2 == hist
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert not list(cache.glob("*.tmp"))


def test_training_is_reproducible(cache, tmp_path):
    a, _ = load_or_train(SMALL)
    b, _ = load_or_train(SMALL, directory=tmp_path / "other")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_key_depends_on_every_field():
    assert SMALL.key() != SMALL.replace(lr=0.051).key()
    assert SMALL.key() != SMALL.replace(data={**SMALL.data, "seed": 1}).key()
    assert SMALL.key() != SMALL.replace(init=SMALL).key()
    assert SMALL.key() == TrainConfig(**{f: getattr(SMALL, f) for f in SMALL.__dataclass_fields__}).key()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_cache_is_retrained(cache, damage):
    load_or_train(SMALL)
    path = cache_path(SMALL)
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[: len(blob) // 2], "garbage": b"not a torch file",
                      "empty": b""}[damage])
    with pytest.warns(RuntimeWarning, match="retraining"):
        model, hist = load_or_train(SMALL)
    assert hist["epochs"] == 3
    torch.load(path, weights_only=True)  # rewritten, valid


def test_target_accuracy_and_warm_start(cache):
    cfg = SMALL.replace(epochs=None, target_train_acc=0.5, max_epochs=50)
    _, hist = load_or_train(cfg)
    assert hist["reached_target"] and hist["train_acc"][-1] >= 0.5
    warm = SMALL.replace(init=SMALL.replace(epochs=1), epochs=1, batch_size=300)
    model, hist = load_or_train(warm)
    assert hist["total_steps"] == 1


def test_schedule_and_sharpness_tracking(cache):
    cfg = SMALL.replace(epochs=4, milestones=(2,), lr_factor=0.2, batch_factor=2,
                        track_sharpness_every=2)  # the cache drives curvature.SharpnessTracker
    _, hist = load_or_train(cfg)
    assert hist["batch_size"] == [32, 32, 64, 64]
    assert hist["lr"][2] == pytest.approx(0.01)
    assert [e for e, _ in hist["lambda_max"]] == [0, 2, 4]


def test_augmentation_is_seeded():
    X = torch.randn(6, 1, 40)
    a = training.augment_signals(X, torch.Generator().manual_seed(0), shift=3, scale=0.1, noise=0.1)
    b = training.augment_signals(X, torch.Generator().manual_seed(0), shift=3, scale=0.1, noise=0.1)
    assert torch.equal(a, b) and a.shape == X.shape
    shifted = training.augment_signals(X, torch.Generator().manual_seed(0), shift=2)
    assert torch.allclose(shifted.norm(dim=-1), X.norm(dim=-1))  # a circular shift keeps energy


def test_divergence_is_a_clear_error():
    torch.manual_seed(0)
    net = mlp(40, (16,), 10)
    X, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    with pytest.raises(ValueError, match="diverged"):
        training.train(net, (X, y), lr=1e6, epochs=20, progress=False)


@pytest.mark.parametrize("kwargs,match", [
    ({"epochs": 2, "target_train_acc": 0.9}, "exactly one"), ({}, "exactly one"),
    ({"epochs": 1, "optimizer": "rmsprop"}, "optimizer"), ({"epochs": 1, "lr": 0}, "lr"),
    ({"epochs": 1, "batch_size": 0}, "batch_size"),
])
def test_bad_train_options(kwargs, match):
    net = mlp(40, (4,), 10)
    with pytest.raises(ValueError, match=match):
        training.train(net, (torch.randn(8, 40), torch.randint(0, 10, (8,))), progress=False, **kwargs)


def test_labels_out_of_range():
    net = mlp(40, (4,), 10)
    with pytest.raises(ValueError, match="labels"):
        training.train(net, (torch.randn(8, 40), torch.full((8,), 10)), epochs=1, progress=False)


def test_evaluate_restores_mode():
    net = mlp(40, (4,), 10)
    net.train()
    loss, acc = training.evaluate(net, (torch.randn(8, 40), torch.randint(0, 10, (8,))))
    assert net.training and loss > 0 and 0 <= acc <= 1
