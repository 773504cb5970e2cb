import numpy as np
import pytest
import torch
from torch import nn

from flatness.models import mlp
from flatness.sharpness import keskar_sharpness, random_subspace


class Quadratic(nn.Module):
    """A "model" whose parameters are x; with QuadLoss the loss is ½ Σ h_i (x_i − c_i)²."""

    def __init__(self, x0):
        super().__init__()
        self.x = nn.Parameter(torch.as_tensor(x0, dtype=torch.float32))

    def forward(self, X):
        return self.x.expand(X.shape[0], -1)


class QuadLoss(nn.Module):
    reduction = "mean"

    def __init__(self, h, c):
        super().__init__()
        self.h, self.c = torch.as_tensor(h), torch.as_tensor(c)

    def forward(self, out, y):
        return 0.5 * ((out - self.c.to(out.dtype)) ** 2 * self.h.to(out.dtype)).sum(1).mean()


@pytest.mark.parametrize("eps", [1e-3, 5e-4, 0.05])
def test_quadratic_box_maximum_is_the_corner(eps):
    h = np.array([3.0, 1.0, 0.5, 10.0])
    c = np.array([0.5, -2.0, 0.0, 1.5])  # the minimum, where the model sits
    model, loss = Quadratic(c), QuadLoss(h, c)
    data = (torch.zeros(4, 1), torch.zeros(4))
    expected = 100 * 0.5 * np.sum(h * (eps * (np.abs(c) + 1)) ** 2)  # f(x) = 0 at the minimum
    assert keskar_sharpness(model, loss, data, eps=eps) == pytest.approx(expected, rel=1e-4)


def test_quadratic_subspace_matches_projected_corner():
    h = np.array([3.0, 1.0, 0.5, 10.0, 2.0])
    c = np.array([0.5, -2.0, 0.0, 1.5, 1.0])
    model, loss = Quadratic(c), QuadLoss(h, c)
    data = (torch.zeros(2, 1), torch.zeros(2))
    eps, p = 0.01, 2
    A = random_subspace(5, p, seed=3)
    half = eps * (np.abs(A.T @ c) + 1)
    # brute force over the corners of the p-dimensional box: the maximum of a convex quadratic
    corners = [np.array([s1, s2]) * half for s1 in (-1, 1) for s2 in (-1, 1)]
    best = max(0.5 * np.sum(h * (A @ z) ** 2) for z in corners)
    got = keskar_sharpness(model, loss, data, eps=eps, subspace_dim=p, seed=3)
    assert got == pytest.approx(100 * best, rel=1e-4)


def test_random_subspace_is_orthonormal():
    A = random_subspace(50, 7, seed=0)
    np.testing.assert_allclose(A.T @ A, np.eye(7), atol=1e-12)


def test_start_off_centre_finds_curvature_at_exact_minimum():
    # At an exact minimum the gradient is zero: a start at the centre would return 0.
    model, loss = Quadratic([1.0, 2.0]), QuadLoss([1.0, 1.0], [1.0, 2.0])
    assert keskar_sharpness(model, loss, (torch.zeros(1, 1), torch.zeros(1)), eps=1e-2) > 0


def test_network_model_untouched_and_reproducible():
    torch.manual_seed(0)
    net = mlp(4, (5,), 3)
    X, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    before = [p.detach().clone() for p in net.parameters()]
    a = keskar_sharpness(net, nn.CrossEntropyLoss(), (X, y), eps=1e-3, seed=1)
    b = keskar_sharpness(net, nn.CrossEntropyLoss(), (X, y), eps=1e-3, seed=1)
    assert a == b and a > 0
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters()))
    assert all(p.dtype == torch.float32 for p in net.parameters())


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": 0.0}, "eps"), ({"eps": -1e-3}, "eps"),
    ({"subspace_dim": 10_000}, "subspace_dim"), ({"subspace_dim": 0}, "subspace_dim"),
    ({"maxiter": 0}, "maxiter"),
])
def test_bad_arguments(kwargs, match):
    net = mlp(4, (5,), 3)
    X, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with pytest.raises(ValueError, match=match):
        keskar_sharpness(net, nn.CrossEntropyLoss(), (X, y), **kwargs)


def test_nan_loss_refused():
    net = mlp(4, (5,), 3)
    X, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    X[2, 1] = float("inf")
    with pytest.raises(ValueError, match="loss"):
        keskar_sharpness(net, nn.CrossEntropyLoss(), (X, y))


def test_dropout_in_train_mode_refused():
    net = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.2), nn.ReLU(), nn.Linear(5, 3))
    X, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with pytest.raises(ValueError, match="Dropout"):
        keskar_sharpness(net, nn.CrossEntropyLoss(), (X, y))
