
import numpy as np
import pytest
import torch

from flatness import training
from flatness.models import mlp

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


def _data(N=8, d=40, C=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, d, generator=g), torch.randint(0, C, (N,), generator=g)


def test_train_inside_no_grad_trains():
    """Issue 10 #10: train() inside torch.no_grad() failed at backward."""
    torch.manual_seed(0)
    net = mlp(40, (4,), 10)
    before = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        training.train(net, _data(), epochs=1, progress=False)
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_numpy_scalars_are_options():
    """Issue 10 #11: np.float32 learning rates and np.int64 counts were refused."""
    torch.manual_seed(0)
    a, b = mlp(40, (4,), 10), mlp(40, (4,), 10)
    b.load_state_dict(a.state_dict())
    ha = training.train(a, _data(), lr=0.05, epochs=2, batch_size=4, milestones=(1,),
                        lr_factor=0.5, batch_factor=2, progress=False)
    hb = training.train(b, _data(), lr=np.float32(0.05), epochs=np.int64(2),
                        batch_size=np.int64(4), milestones=(np.int64(1),),
                        lr_factor=np.float64(0.5), batch_factor=np.int32(2), progress=False)
    assert ha["batch_size"] == hb["batch_size"] == [4, 8] and hb["total_steps"] == 3
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("case,error,match", [
    ("float64 model", TypeError, "dtype torch.float32 but the model's parameters are torch.float64"),
    ("integer X", TypeError, "X has dtype torch.int64"),
    ("float y", TypeError, "integer class labels"),
    ("y of shape (N, 1)", ValueError, r"shape \(8,\)"),
    ("meta model", ValueError, "meta device"),
    ("model None", TypeError, "model: expected a torch.nn.Module, got NoneType"),
    ("DataLoader", TypeError, r"train needs an \(X, y\) pair of tensors"),
    ("NaN in X", ValueError, "NaN or infinite"),
])
def test_bad_model_or_data_named(case, error, match):
    """Issue 10 #12/#13: raw torch errors, or 'diverged — lower lr' for NaN inputs."""
    net = mlp(40, (4,), 10)
    X, y = _data()
    data = (X, y)
    if case == "float64 model":
        net = net.double()
    elif case == "integer X":
        data = (X.long(), y)
    elif case == "float y":
        data = (X, y.float())
    elif case == "y of shape (N, 1)":
        data = (X, y[:, None])
    elif case == "meta model":
        net = net.to("meta")
    elif case == "model None":
        net = None
    elif case == "DataLoader":
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=4)
    elif case == "NaN in X":
        X = X.clone()
        X[3, 5] = float("nan")
        data = (X, y)
    with pytest.raises(error, match=match):
        training.train(net, data, epochs=1, progress=False)


def test_bad_test_data_is_reported_before_training():
    """Issue 10 #13: bad test_data was found only after one epoch of in-place training."""
    net = mlp(40, (4,), 10)
    before = [p.detach().clone() for p in net.parameters()]
    X, y = _data()
    with pytest.raises(ValueError, match="test_data: labels"):
        training.train(net, (X, y), test_data=(X, torch.full((8,), 10)), epochs=1,
                       progress=False)
    with pytest.raises(ValueError, match="test_data: X and y have different lengths"):
        training.train(net, (X, y), test_data=(X, y[:3]), epochs=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_submodule_modes_are_restored():
    """Issue 10 #13: a BatchNorm the caller had put in eval mode was left in train mode."""
    net = torch.nn.Sequential(torch.nn.Linear(40, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                              torch.nn.Dropout(0.1), torch.nn.Linear(6, 10))
    net.train()
    net[1].eval()
    modes = [m.training for m in net.modules()]
    training.train(net, _data(), epochs=1, batch_size=4, progress=False)
    assert [m.training for m in net.modules()] == modes


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_factor": 0}, "batch_factor"), ({"lr_factor": -0.5}, "lr_factor"),
    ({"lr_factor": 0.0}, "lr_factor"), ({"lr": float("nan")}, "lr"),
    ({"momentum": -0.1}, "momentum"), ({"weight_decay": -1.0}, "weight_decay"),
    ({"batch_size": 2.5}, "batch_size"), ({"epochs": 1.0}, "epochs"),
    ({"milestones": 3}, "milestones"), ({"max_epochs": 0, "target_train_acc": 0.5,
                                         "epochs": None}, "max_epochs"),
])
def test_bad_schedule_options(kwargs, match):
    net = mlp(40, (4,), 10)
    options = {"epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        training.train(net, _data(), progress=False, milestones=options.pop("milestones", (1,)),
                       **options)
