import numpy as np
import pytest
import torch
from oracles import assert_unperturbed, snapshot
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

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
    # At an exact minimum the gradient is zero: a start at the centre would return 0. The
    # maximum of ½ Σ h_i (x_i − c_i)² over the box is at a corner: 100 · ½ Σ h_i (ε(|c_i|+1))².
    model, loss = Quadratic([1.0, 2.0]), QuadLoss([1.0, 1.0], [1.0, 2.0])
    expected = 100 * 0.5 * ((1e-2 * 2) ** 2 + (1e-2 * 3) ** 2)
    got = keskar_sharpness(model, loss, (torch.zeros(1, 1), torch.zeros(1)), eps=1e-2)
    assert got == pytest.approx(expected, rel=1e-6)


def _least_squares_problem():
    """A linear model y = w·x + b under the mean squared error, away from its minimum."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(24, 3, generator=g, dtype=torch.float64)
    t = torch.randn(24, 1, generator=g, dtype=torch.float64)
    net = nn.Linear(3, 1).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.5, -2.0, 0.7]]))
        net.bias.fill_(3.0)
    return net, X, t


def test_least_squares_maximum_is_the_gradient_sign_corner():
    # f(θ) = |Zθ − t|²/N with Z = [X, 1] is a convex quadratic; its maximum over the box is at a
    # corner. Where |∇f_i| > Σ_j |H_ij| half_j for every i, f is monotone in every coordinate
    # over the whole box, so the maximum is the corner θ + sign(∇f)·half, in closed form.
    net, X, t = _least_squares_problem()
    eps = 1e-3
    Z = np.hstack([X.numpy(), np.ones((24, 1))])
    theta = np.array([1.5, -2.0, 0.7, 3.0])

    def f(th):
        return float(np.mean((Z @ th - t.numpy()[:, 0]) ** 2))

    grad = 2 * Z.T @ (Z @ theta - t.numpy()[:, 0]) / 24
    H = 2 * Z.T @ Z / 24
    half = eps * (np.abs(theta) + 1)
    assert np.all(np.abs(grad) > np.abs(H) @ half)  # the monotonicity condition holds
    corners = [theta + (2 * np.array(s) - 1) * half for s in np.ndindex(2, 2, 2, 2)]
    best = max(f(c) for c in corners)
    assert best == f(theta + np.sign(grad) * half)
    expected = 100 * (best - f(theta)) / (1 + f(theta))
    got = keskar_sharpness(net, nn.MSELoss(), (X, t), eps=eps)
    assert got == pytest.approx(expected, rel=1e-9)
    # the same data as a DataLoader of uneven batches gives the same full-data loss
    loader = DataLoader(TensorDataset(X, t), batch_size=7)
    assert keskar_sharpness(net, nn.MSELoss(), loader, eps=eps) == pytest.approx(expected, rel=1e-9)


def test_network_model_untouched_and_reproducible():
    torch.manual_seed(0)
    net = mlp(4, (5,), 3)
    net[0].bias.requires_grad_(False)  # a frozen parameter stays frozen and out of the box
    net[2].weight.grad = torch.ones_like(net[2].weight)  # an existing gradient is kept
    net.train()
    X, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    snap = snapshot(net)
    a = keskar_sharpness(net, nn.CrossEntropyLoss(), (X, y), eps=1e-3, seed=1)
    b = keskar_sharpness(net, nn.CrossEntropyLoss(), (X, y), eps=1e-3, seed=1)
    assert a == b and a > 0
    assert_unperturbed(net, snap)


def test_inside_no_grad_gives_the_same_number():
    torch.manual_seed(0)
    net = mlp(4, (5,), 3)
    X, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    expected = keskar_sharpness(net, nn.CrossEntropyLoss(), (X, y), eps=1e-3, seed=1)
    with torch.no_grad():
        assert keskar_sharpness(net, nn.CrossEntropyLoss(), (X, y), eps=1e-3, seed=1) == expected


def test_every_batch_labels_checked():
    net = mlp(4, (5,), 3)
    X, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    y[10] = 7  # in the second batch only
    with pytest.raises(ValueError, match="labels"):
        keskar_sharpness(net, nn.CrossEntropyLoss(), DataLoader(TensorDataset(X, y), batch_size=8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_matches_cpu():
    torch.manual_seed(0)
    net = mlp(4, (5,), 3)
    X, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    cpu = keskar_sharpness(net, nn.CrossEntropyLoss(), (X, y), eps=1e-2, subspace_dim=5, seed=1)
    gpu = keskar_sharpness(net.cuda(), nn.CrossEntropyLoss(), (X.cuda(), y.cuda()), eps=1e-2,
                           subspace_dim=5, seed=1)
    assert gpu == pytest.approx(cpu, rel=1e-6)
    assert all(p.is_cuda and p.dtype == torch.float32 for p in net.parameters())


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": 0.0}, "eps"), ({"eps": -1e-3}, "eps"),
    ({"subspace_dim": 10_000}, "subspace_dim"), ({"subspace_dim": 0}, "subspace_dim"),
    ({"maxiter": 0}, "maxiter"), ({"subspace_dim": True}, "subspace_dim"),
    ({"subspace_dim": 2.0}, "subspace_dim"),
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


class Linear(nn.Module):
    """A "model" whose parameters are x; with LinLoss the loss is gᵀx + f0, exactly linear."""

    def __init__(self, x0):
        super().__init__()
        self.x = nn.Parameter(torch.as_tensor(x0, dtype=torch.float32))

    def forward(self, X):
        return self.x.expand(X.shape[0], -1)


class LinLoss(nn.Module):
    reduction = "mean"

    def __init__(self, g, f0=0.5):
        super().__init__()
        self.g, self.f0 = torch.as_tensor(g), f0

    def forward(self, out, y):
        return (out * self.g.to(out.dtype)).sum(1).mean() + self.f0


@pytest.mark.parametrize("p", [None, 3])
def test_first_order_part_equals_the_sharpness_of_a_linear_loss(p):
    from flatness.sharpness import keskar_first_order

    x0, g = np.array([0.5, -2.0, 0.1, 1.5, 3.0]), np.array([1.0, -0.5, 2.0, 0.0, 0.3])
    model, loss = Linear(x0), LinLoss(g)
    data = (torch.zeros(2, 1), torch.zeros(2))
    f0 = float(g @ x0.astype(np.float32)) + 0.5
    eps = 0.01
    if p is None:
        half, slope = eps * (np.abs(x0) + 1), np.abs(g)
    else:
        A = random_subspace(5, p, seed=0)
        half, slope = eps * (np.abs(A.T @ x0) + 1), np.abs(A.T @ g)
    expected = 100 * np.sum(half * slope) / (1 + f0)  # the corner y = h·sign(Aᵀg) is the maximum
    snap = snapshot(model)
    out = keskar_first_order(model, loss, data, eps=eps, subspace_dim=p)
    assert_unperturbed(model, snap)
    assert out["first_order"] == pytest.approx(expected, rel=1e-5)
    assert out["gradient_norm"] == pytest.approx(np.linalg.norm(g), rel=1e-6)
    assert out["loss"] == pytest.approx(f0, rel=1e-6)
    # for a linear loss L-BFGS-B reaches that corner: the sharpness is its first-order part
    assert keskar_sharpness(model, loss, data, eps=eps, subspace_dim=p) == pytest.approx(expected, rel=1e-5)


def test_first_order_part_is_zero_at_an_exact_minimum_and_quadratic_ratio_is_four():
    from flatness.sharpness import keskar_first_order

    h, c = np.array([3.0, 1.0, 0.5]), np.array([0.5, -2.0, 0.0])
    model, loss = Quadratic(c), QuadLoss(h, c)
    data = (torch.zeros(2, 1), torch.zeros(2))
    assert keskar_first_order(model, loss, data, eps=1e-3)["first_order"] == pytest.approx(0.0, abs=1e-12)
    ratio = keskar_sharpness(model, loss, data, eps=1e-3) / keskar_sharpness(model, loss, data, eps=5e-4)
    assert ratio == pytest.approx(4.0, rel=1e-3)  # φ ∝ ε² for a quadratic at its minimum


def test_box_radius_is_the_corner_norm():
    from flatness.sharpness import keskar_box_radius

    x0 = np.array([0.5, -2.0, 0.1, 1.5, 3.0])
    model = Linear(x0)
    x = x0.astype(np.float32).astype(np.float64)
    assert keskar_box_radius(model, eps=1e-3) == pytest.approx(1e-3 * np.linalg.norm(np.abs(x) + 1), rel=1e-12)
    A = random_subspace(5, 2, seed=4)
    assert keskar_box_radius(model, eps=1e-3, subspace_dim=2, seed=4) == pytest.approx(
        1e-3 * np.linalg.norm(np.abs(A.T @ x) + 1), rel=1e-12)
    with pytest.raises(ValueError, match="subspace_dim"):
        keskar_box_radius(model, subspace_dim=6)
    with pytest.raises(ValueError, match="eps"):
        keskar_box_radius(model, eps=0.0)
