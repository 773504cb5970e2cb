"""Tests of flatness.symmetries and flatness.reparametrize: every symmetry against its exact identity, every Jacobian
against autograd, every refusal."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from flatness.curvature import input_hessian_top_eigenvalues
from flatness.models import cnn1d, mlp
from flatness.operators import dense_hessian
from flatness.params import flat_parameters, parameter_slices, unflatten_parameters
from flatness.reparametrize import (
    ExponentialMap,
    InputAffineMap,
    RadialMap,
    WeightNorm,
    input_transform,
    reparametrized_operator,
    reparametrized_top_eigenvalues,
)
from flatness.symmetries import (
    alpha_factors,
    alpha_scale,
    complete_factors,
    parameter_hessian,
    parameter_scaling,
    weight_layers,
)

CE = nn.CrossEntropyLoss()


def _seeded(fn, seed=0):
    torch.manual_seed(seed)
    return fn()


@pytest.fixture
def net64():
    return _seeded(lambda: mlp(4, (5, 3), 3).double())


@pytest.fixture
def data64():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(24, 4, generator=g, dtype=torch.float64)
    return X, torch.randint(0, 3, (24,), generator=g)


@pytest.fixture
def cnn64():
    return _seeded(lambda: cnn1d(channels=(2, 3), kernel_size=3, length=8, num_classes=3).double())


@pytest.fixture
def cnn_data64():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(16, 1, 8, generator=g, dtype=torch.float64)
    return X, torch.randint(0, 3, (16,), generator=g)


# ------------------------------------------------------------------ α-scale: the function

def test_outputs_unchanged_mlp_random_factors(net64, data64):
    X, _ = data64
    factors = complete_factors([3.7, 0.21])
    new = alpha_scale(net64, factors)
    assert torch.allclose(new(X), net64(X), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(flat_parameters(new), flat_parameters(net64))


def test_powers_of_two_are_bitwise_exact():
    net = _seeded(lambda: mlp(40, (100, 100), 10))
    X = torch.randn(64, 40)
    for k in (-6, -1, 3, 6):
        new = alpha_scale(net, alpha_factors(3, 2.0 ** k))
        assert torch.equal(new(X), net(X))
    assert torch.equal(alpha_scale(net, (0.5, 4.0, 0.5))(X), net(X))


def test_outputs_unchanged_cnn1d_with_biases(cnn64, cnn_data64):
    X, _ = cnn_data64
    assert len(weight_layers(cnn64)) == 3
    new = alpha_scale(cnn64, (5.0, 0.1, 2.0))
    assert torch.allclose(new(X), cnn64(X), rtol=1e-12, atol=1e-12)
    assert new[0].bias is not None and torch.allclose(new[2].bias, 0.5 * cnn64[2].bias)


def test_leaky_relu_maxpool_flatten_chain():
    net = _seeded(lambda: nn.Sequential(
        nn.Conv1d(1, 3, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool1d(2),
        nn.Sequential(nn.Conv1d(3, 2, 3), nn.ReLU()),
        nn.Flatten(), nn.Identity(), nn.Linear(2 * 2, 2)).double())
    X = torch.randn(5, 1, 8, dtype=torch.float64)
    new = alpha_scale(net, (0.3, 7.0, 1 / 2.1))
    assert torch.allclose(new(X), net(X), rtol=1e-12, atol=1e-12)


def test_scalar_alpha_two_layers():
    net = _seeded(lambda: mlp(3, (4,), 2).double())
    X = torch.randn(6, 3, dtype=torch.float64)
    new = alpha_scale(net, 10.0)
    assert torch.allclose(new[0].weight, 10 * net[0].weight)
    assert torch.allclose(new[0].bias, 10 * net[0].bias)
    assert torch.allclose(new[2].weight, net[2].weight / 10)
    assert torch.equal(new[2].bias, net[2].bias)
    assert torch.allclose(new(X), net(X), rtol=1e-12, atol=1e-12)


def test_original_untouched_and_mode_kept(net64):
    before = {k: v.clone() for k, v in net64.state_dict().items()}
    net64.train()
    new = alpha_scale(net64, (2.0, 3.0, 1 / 6))
    assert all(torch.equal(before[k], v) for k, v in net64.state_dict().items())
    assert new is not net64 and new.training and net64.training
    net64.eval()
    assert not alpha_scale(net64, (2.0, 0.5, 1.0)).training


def test_parameter_scaling_maps_theta(net64):
    factors = (2.0, 3.0, 1 / 6)
    D = parameter_scaling(net64, factors)
    assert D.dtype == torch.float64 and D.numel() == flat_parameters(net64).numel()
    assert torch.allclose(D * flat_parameters(net64), flat_parameters(alpha_scale(net64, factors)))
    sl = parameter_slices(net64)
    assert torch.all(D[sl["0.bias"]] == 2.0)
    assert torch.allclose(D[sl["2.bias"]], torch.full((3,), 6.0, dtype=torch.float64))
    assert torch.allclose(D[sl["4.bias"]], torch.ones(3, dtype=torch.float64))


# ------------------------------------------------------------------ α-scale: the Hessian

@pytest.mark.parametrize("factors", [(4.0, 0.25, 1.0), (0.3, 2.0, 1 / 0.6)])
def test_dense_hessian_identity_mlp(net64, data64, factors):
    H = dense_hessian(net64, CE, data64)
    new = alpha_scale(net64, factors)
    Hn = dense_hessian(new, CE, data64)
    Dinv = 1.0 / parameter_scaling(net64, factors)
    expected = Dinv[:, None] * H * Dinv[None, :]
    assert torch.allclose(Hn, expected, rtol=1e-8, atol=1e-10 * float(expected.abs().max()))


def test_dense_hessian_identity_cnn1d(cnn64, cnn_data64):
    factors = (0.5, 8.0, 0.25)
    H = dense_hessian(cnn64, CE, cnn_data64)
    Hn = dense_hessian(alpha_scale(cnn64, factors), CE, cnn_data64)
    Dinv = 1.0 / parameter_scaling(cnn64, factors)
    expected = Dinv[:, None] * H * Dinv[None, :]
    assert torch.allclose(Hn, expected, rtol=1e-8, atol=1e-10 * float(expected.abs().max()))


def test_trace_formula_two_layers_without_bias(data64):
    net = _seeded(lambda: mlp(4, (6,), 3, bias=False).double())
    H = dense_hessian(net, CE, data64)
    n1 = net[0].weight.numel()
    t11, t22 = float(torch.trace(H[:n1, :n1])), float(torch.trace(H[n1:, n1:]))
    for alpha in (0.1, 3.0, 40.0):
        Ha = dense_hessian(alpha_scale(net, alpha), CE, data64)
        formula = t11 / alpha ** 2 + alpha ** 2 * t22
        assert math.isclose(float(torch.trace(Ha)), formula, rel_tol=1e-9)
        # off-diagonal block unchanged
        assert torch.allclose(Ha[:n1, n1:], H[:n1, n1:], rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------ α-scale: refusals

@pytest.mark.parametrize("factors,match", [
    ((2.0, 0.0, 1.0), "positive"), ((2.0, -0.5, 1.0), "positive"),
    ((2.0, float("nan"), 0.5), "positive"), ((2.0, float("inf"), 0.5), "positive"),
    ((2.0, 0.5, 1.001), "multiply to one"), ((2.0, 0.5), "one factor per weight layer"),
    ((2.0, 0.5, 1.0, 1.0), "one factor per weight layer"), (2.0, "two weight layers"),
    ((True, 1.0, 1.0), "positive"), ("abc", "positive"),
])
def test_bad_factors_refused(net64, factors, match):
    with pytest.raises(ValueError, match=match):
        alpha_scale(net64, factors)
    with pytest.raises(ValueError, match=match):
        parameter_scaling(net64, factors)


def test_product_tolerance_is_relative(net64):
    alpha_scale(net64, (2.0, 0.5 * (1 + 1e-12), 1.0))
    with pytest.raises(ValueError, match="multiply to one"):
        alpha_scale(net64, (2.0, 0.5 * (1 + 1e-6), 1.0))
    alpha_scale(net64, (2.0, 0.5 * (1 + 1e-6), 1.0), rtol=1e-5)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu"])
def test_non_homogeneous_activation_refused(activation):
    with pytest.raises(ValueError, match="not positively homogeneous"):
        alpha_scale(mlp(3, (4,), 2, activation=activation), 2.0)


@pytest.mark.parametrize("norm", [nn.BatchNorm1d(4), nn.LayerNorm(4), nn.GroupNorm(2, 4)])
def test_normalization_refused(norm):
    net = nn.Sequential(nn.Linear(3, 4), norm, nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="normalization layer"):
        alpha_scale(net, 2.0)


def test_other_modules_refused():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return x + self.b(torch.relu(self.a(x)))

    with pytest.raises(ValueError, match="nn.Sequential chain"):
        alpha_scale(Residual(), 2.0)
    with pytest.raises(ValueError, match="not positively homogeneous"):
        alpha_scale(nn.Sequential(nn.Linear(3, 3), nn.PReLU(), nn.Linear(3, 2)), 2.0)
    with pytest.raises(ValueError, match="not positively homogeneous"):
        alpha_scale(nn.Sequential(nn.Linear(3, 3), nn.Softplus(), nn.Linear(3, 2)), 2.0)
    with pytest.raises(ValueError, match="no weight layer"):
        alpha_scale(nn.Sequential(nn.ReLU()), [])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        alpha_scale("net", 2.0)


def test_factor_helpers():
    assert alpha_factors(2, 5.0) == (5.0, 0.2)
    assert alpha_factors(4, 2.0, layers=(-1, 0)) == (0.5, 1.0, 1.0, 2.0)
    assert complete_factors([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5, 8.0)
    assert math.isclose(math.prod(complete_factors([0.3, 7.0])), 1.0, rel_tol=1e-15)
    for bad in [dict(num_layers=1, alpha=2.0), dict(num_layers=3, alpha=0.0),
                dict(num_layers=3, alpha=2.0, layers=(1, 1)),
                dict(num_layers=3, alpha=2.0, layers=(0, 3))]:
        with pytest.raises(ValueError):
            alpha_factors(**bad)
    with pytest.raises(ValueError, match="at least one"):
        complete_factors([])
    with pytest.raises(ValueError, match="positive"):
        complete_factors([1.0, -2.0])
    with pytest.raises(ValueError, match="layer"):
        complete_factors([1.0], layer=5)


# ------------------------------------------------------------------ the 1-D map of Figure 5

@pytest.mark.parametrize("a,b", [(1.0, 0.2), (-0.4, 0.05), (2.0, 3.0), (0.0, 1.0), (0.5, 0.0)])
def test_radial_map_jacobian_and_inverse(a, b):
    h = RadialMap(center=0.3, a=a, b=b)
    theta = torch.tensor([-2.0, -0.4, 0.1, 0.35, 1.7], dtype=torch.float64)
    J = torch.autograd.functional.jacobian(h.forward, theta)
    assert torch.allclose(h.jacobian(theta), J, rtol=1e-12, atol=1e-12)
    back = h.inverse(h.forward(theta))
    assert torch.allclose(back, theta, rtol=0, atol=1e-12)
    assert bool((h.derivative(theta) > 0).all())


def test_radial_map_curvature_at_center():
    # L(θ) = 1 - cos(θ - 0.3) + 0.1 (θ - 0.3)^3: a minimum at 0.3 with L'' = 1
    L = lambda t: 1 - torch.cos(t - 0.3) + 0.1 * (t - 0.3) ** 3  # noqa: E731
    for a, b in [(1.0, 0.1), (-0.3, 0.01), (1.5, 4.0)]:
        h = RadialMap(center=0.3, a=a, b=b)
        step = 1e-4 * b ** a
        eta = torch.tensor([-step, 0.0, step], dtype=torch.float64)
        vals = L(h.inverse(eta))
        curv = float(vals[0] - 2 * vals[1] + vals[2]) / step ** 2
        assert math.isclose(curv, b ** (-2 * a) * 1.0, rel_tol=1e-5)
        assert math.isclose(h.slope_at_center(), b ** a)


def test_radial_map_refusals():
    for bad in [dict(a=-0.5), dict(a=-1.0), dict(b=-0.1), dict(center=float("nan")), dict(a=True)]:
        with pytest.raises(ValueError):
            RadialMap(**bad)
    with pytest.raises(ValueError, match="finite"):
        RadialMap().inverse(torch.tensor([float("inf")]))
    with pytest.raises(ValueError, match="too large"):
        RadialMap(a=-0.49, b=0.01).inverse(torch.tensor([1e30]))


# ------------------------------------------------------------------ weight-space maps

def test_exponential_map_jacobian():
    theta = torch.tensor([0.3, -1.2, 2.0, -0.01], dtype=torch.float64)
    g, eta = ExponentialMap.from_parameters(theta)
    assert torch.allclose(g.to_weights(eta), theta, rtol=1e-15)
    J = torch.autograd.functional.jacobian(g.to_weights, eta)
    assert torch.allclose(g.jacobian(eta), J, rtol=1e-13)
    v = torch.randn(4, dtype=torch.float64)
    assert torch.allclose(g.jvp(eta, v), J @ v) and torch.allclose(g.vjp(eta, v), J.T @ v)
    with pytest.raises(ValueError, match="zero"):
        ExponentialMap.from_parameters(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="signs"):
        g.from_weights(-theta)
    with pytest.raises(ValueError, match="±1"):
        ExponentialMap(torch.tensor([1.0, 0.5]))


def test_weight_norm_jacobian_and_invariance(cnn64):
    wn = WeightNorm(cnn64)
    theta = flat_parameters(cnn64).double()
    eta = wn.from_weights(theta, radius=2.5)
    assert eta.numel() == theta.numel() + 2 + 3 + 3  # one g per output unit
    assert torch.allclose(wn.to_weights(eta), theta, rtol=1e-12, atol=1e-14)
    J = torch.autograd.functional.jacobian(wn.to_weights, eta)
    assert torch.allclose(wn.jacobian(eta), J, rtol=1e-10, atol=1e-12)
    u = torch.randn(wn.dim, dtype=torch.float64)
    w = torch.randn(wn.theta_dim, dtype=torch.float64)
    assert torch.allclose(wn.jvp(eta, u), J @ u) and torch.allclose(wn.vjp(eta, w), J.T @ w)
    # the function does not see the radius of v
    assert torch.allclose(wn.to_weights(wn.from_weights(theta, radius=0.01)), theta, atol=1e-13)
    with pytest.raises(ValueError, match="flat tensor"):
        wn.to_weights(theta)
    with pytest.raises(ValueError, match="positive"):
        wn.from_weights(theta, radius=0.0)


def _loss_through(net, reparam, data):
    """η ↦ L(g(η)): the cross-entropy of ``net`` with its weights given by ``reparam.to_weights``."""
    from torch.func import functional_call

    X, y = data
    def loss(eta):
        return CE(functional_call(net, unflatten_parameters(net, reparam.to_weights(eta)), (X,)), y)

    return loss


def test_weight_norm_radius_scales_hessian(net64, data64):
    """L(g, cv) = L(g, v) ⇒ ∇²_v L(g, cv) = c⁻² ∇²_v L(g, v), exactly (autograd, float64)."""
    wn = WeightNorm(net64)
    theta = flat_parameters(net64).double()
    loss = _loss_through(net64, wn, data64)

    e1, e2 = wn.from_weights(theta, 1.0), wn.from_weights(theta, 10.0)
    assert math.isclose(float(loss(e1)), float(loss(e2)), rel_tol=1e-12)
    H1 = torch.autograd.functional.hessian(loss, e1)
    H2 = torch.autograd.functional.hessian(loss, e2)
    v = wn.blocks[0][2]  # the first layer's (g, v) segment
    rows = wn.blocks[0][3]
    vv = slice(v.start + rows, v.stop)
    assert torch.allclose(H2[vv, vv], H1[vv, vv] / 100, rtol=1e-8, atol=1e-14)
    gg = slice(v.start, v.start + rows)
    assert torch.allclose(H2[gg, gg], H1[gg, gg], rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("kind", ["exp", "wn"])
def test_reparametrized_operator(net64, data64, kind):
    """The operator is JᵀHJ, and the exact Hessian of L∘g adds Σ ∂ᵢL ∇²gᵢ."""
    theta = flat_parameters(net64).double()
    if kind == "exp":
        g, eta = ExponentialMap.from_parameters(theta)
    else:
        g = WeightNorm(net64)
        eta = g.from_weights(theta, radius=3.0)
    A, Hop = reparametrized_operator(net64, CE, data64, g, eta)
    H = dense_hessian(net64, CE, data64)
    J = g.jacobian(eta)
    JHJ = J.T @ H @ J
    dense_A = torch.as_tensor(A @ np.eye(A.shape[0]))
    assert torch.allclose(dense_A, JHJ, rtol=1e-9, atol=1e-12)
    loss = _loss_through(net64, g, data64)

    exact = torch.autograd.functional.hessian(loss, eta)
    grad = Hop.gradient.double()
    curvature_of_g = torch.autograd.functional.hessian(lambda e: grad @ g.to_weights(e), eta)
    assert torch.allclose(exact, JHJ + curvature_of_g, rtol=1e-8, atol=1e-11)
    top = reparametrized_top_eigenvalues(net64, CE, data64, g, eta, k=2, operator=Hop)
    ref = torch.linalg.eigvalsh((JHJ + JHJ.T) / 2).flip(0)[:2].numpy()
    assert np.allclose(top, ref, rtol=1e-6)
    A_exact, _ = reparametrized_operator(net64, CE, data64, g, eta, exact=True)
    dense_exact = torch.as_tensor(A_exact @ np.eye(A.shape[0]))
    assert torch.allclose(dense_exact, exact, rtol=1e-9, atol=1e-12)
    top_exact = reparametrized_top_eigenvalues(net64, CE, data64, g, eta, k=2, exact=True)
    ref_exact = torch.linalg.eigvalsh((exact + exact.T) / 2).flip(0)[:2].numpy()
    assert np.allclose(top_exact, ref_exact, rtol=1e-6)
    with pytest.raises(ValueError, match="parameter vector"):
        reparametrized_operator(net64, CE, data64, g, eta * 1.1)


# ------------------------------------------------------------------ input space

def test_input_transform_predictions_and_input_hessian(net64, data64):
    X, y = data64
    g = torch.Generator().manual_seed(3)
    M = torch.randn(4, 4, generator=g, dtype=torch.float64) + 3 * torch.eye(4, dtype=torch.float64)
    c = torch.randn(4, generator=g, dtype=torch.float64)
    T = InputAffineMap(M, c)
    J = torch.autograd.functional.jacobian(lambda x: T.apply(x.unsqueeze(0)).squeeze(0), X[0])
    assert torch.allclose(T.jacobian(), J)
    assert torch.allclose(T.invert(T.apply(X)), X, atol=1e-12)
    new = input_transform(net64, T)
    Xp = T.apply(X)
    assert torch.allclose(new(Xp), net64(X), rtol=1e-10, atol=1e-12)
    # per-sample input Hessians: ∇²_{x'} ℓ = M^{-T} ∇²_x ℓ M^{-1}
    Minv = torch.linalg.inv(M)
    for i in range(3):
        Hx = torch.autograd.functional.hessian(lambda x: CE(net64(x[None]), y[i:i + 1]), X[i])
        Hxp = torch.autograd.functional.hessian(lambda x: CE(new(x[None]), y[i:i + 1]), Xp[i])
        assert torch.allclose(Hxp, Minv.T @ Hx @ Minv, rtol=1e-8, atol=1e-12)


def test_input_scaling_divides_input_curvature(net64, data64):
    X, y = data64
    T = InputAffineMap(4.0, dim=4)
    new = input_transform(net64, T)
    before = input_hessian_top_eigenvalues(net64, CE, (X, y))
    after = input_hessian_top_eigenvalues(new, CE, (T.apply(X), y))
    assert torch.allclose(after, before / 16, rtol=1e-8, atol=1e-14)


def test_input_transform_refusals(cnn64):
    with pytest.raises(ValueError, match="invertible"):
        InputAffineMap(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="square"):
        InputAffineMap(torch.ones(3, 2))
    with pytest.raises(ValueError, match="dim"):
        InputAffineMap(2.0)
    with pytest.raises(ValueError, match="nn.Linear"):
        input_transform(cnn64, InputAffineMap(2.0, dim=8))
    with pytest.raises(ValueError, match="dimension"):
        input_transform(mlp(4, (3,), 2), InputAffineMap(2.0, dim=5))
    with pytest.raises(ValueError, match="shift"):
        input_transform(mlp(4, (3,), 2, bias=False), InputAffineMap(2.0, torch.ones(4), dim=4))


# ------------------------------------------------------------------ BatchNorm's scale invariance

def test_batchnorm_scale_invariance():
    """L(cw) = L(w) for the weights before BatchNorm (batch statistics), hence
    ∇²L(cw) = c⁻²∇²L(w)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5, bias=False), nn.BatchNorm1d(5, eps=1e-300), nn.ReLU(),
                        nn.Linear(5, 3)).double()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_()
    g = torch.Generator().manual_seed(4)
    X = torch.randn(32, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    stats = net[1].running_mean.clone()
    H = parameter_hessian(net, CE, (X, y), "0.weight", batch_statistics=True)
    for c in (0.1, 7.0):
        net_c = copy.deepcopy(net)
        with torch.no_grad():
            net_c[0].weight.mul_(c)
        Hc = parameter_hessian(net_c, CE, (X, y), "0.weight", batch_statistics=True)
        assert torch.allclose(Hc, H / c ** 2, rtol=1e-7, atol=1e-12 * float(H.abs().max()))
    assert torch.equal(net[1].running_mean, stats)  # the model's running statistics untouched
    assert net.training  # mode untouched
    # eval mode agrees with the dense Hessian's block
    plain = _seeded(lambda: mlp(4, (3,), 2).double())
    Xs, ys = X[:10], y[:10] % 2
    block = parameter_hessian(plain, CE, (Xs, ys), "2.weight")
    sl = parameter_slices(plain)["2.weight"]
    assert torch.allclose(block, dense_hessian(plain, CE, (Xs, ys))[sl, sl], rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="name"):
        parameter_hessian(plain, CE, (Xs, ys), "nope")


def test_block_top_eigenvalues_against_dense_and_alpha_scale(net64, data64):
    from flatness.curvature import block_top_eigenvalues

    H = dense_hessian(net64, CE, data64)
    sl = parameter_slices(net64)["2.weight"]
    ref = torch.linalg.eigvalsh(H[sl, sl]).flip(0)[:3].numpy()
    vals, vecs = block_top_eigenvalues(net64, CE, data64, sl, k=3, return_eigenvectors=True)
    assert np.allclose(vals, ref, rtol=1e-6) and vecs.shape == (sl.stop - sl.start, 3)
    scaled = alpha_scale(net64, (1.0, 4.0, 0.25))
    assert np.allclose(block_top_eigenvalues(scaled, CE, data64, sl, k=3), ref / 16, rtol=1e-6)
    with pytest.raises(ValueError, match="k:"):
        block_top_eigenvalues(net64, CE, data64, slice(0, 2), k=2)
    with pytest.raises(ValueError, match="slice"):
        block_top_eigenvalues(net64, CE, data64, [0, 1], k=1)


class _SkipSequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x) + x


class _ShiftedReLU(nn.ReLU):
    def forward(self, x):
        return torch.relu(x - 0.5)


def _shared_layer_net():
    torch.manual_seed(0)
    hidden = nn.Linear(4, 4)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), hidden, nn.ReLU(), hidden, nn.ReLU(),
                         nn.Linear(4, 2))


@pytest.mark.parametrize("build,match", [
    (lambda: _SkipSequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)), "subclass of nn.Sequential"),
    (_shared_layer_net, "same object"),
    (lambda: nn.Sequential(nn.Linear(3, 4), _ShiftedReLU(), nn.Linear(4, 2)), "subclass of nn.ReLU"),
])
def test_structures_that_change_the_function_are_refused(build, match):
    """Issue 10 #6: a Sequential subclass with a skip connection (outputs changed by 2.32), a
    layer used twice (0.075) and a ReLU subclass with its own forward (0.57) were accepted."""
    torch.manual_seed(0)
    net = build()
    with pytest.raises(ValueError, match=match):
        alpha_scale(net, alpha_factors(len([m for m in net.modules()
                                            if isinstance(m, nn.Linear)]), 3.0))


def test_tied_parameters_and_hooks_are_refused():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
    net[2].weight = net[0].weight
    with pytest.raises(ValueError, match="shared"):
        alpha_scale(net, (2.0, 0.5))
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
    net[1].register_forward_hook(lambda m, i, o: o + 1.0)
    with pytest.raises(ValueError, match="hooks"):
        alpha_scale(net, (2.0, 0.5))


def test_explicit_probe_batch(net64):
    """An explicit probe is used as given, and refused if the model cannot take it."""
    x = torch.randn(5, net64[0].in_features, dtype=torch.float64)
    assert torch.allclose(alpha_scale(net64, (2.0, 3.0, 1 / 6), probe=x)(x), net64(x))
    bad = copy.deepcopy(net64)
    bad[1] = nn.Identity()  # exact types, homogeneous: accepted and unchanged
    alpha_scale(bad, (2.0, 3.0, 1 / 6))
    with pytest.raises(ValueError, match="probe"):
        alpha_scale(net64, (2.0, 3.0, 1 / 6), probe=torch.randn(5, 99, dtype=torch.float64))


def test_probe_rejects_a_function_change(monkeypatch, net64):
    import flatness.symmetries as sym

    real = sym._layer_scales
    monkeypatch.setattr(sym, "_layer_scales", lambda f: [(a, b * 1.01) for a, b in real(f)])
    with pytest.raises(ValueError, match="differ from the original's"):
        alpha_scale(net64, (2.0, 3.0, 1 / 6))


def test_parameter_hessian_refuses_a_nan_loss(net64, data64):
    """Issue 10 #14: a NaN loss gave an all-NaN Hessian."""
    X, y = data64
    X = X.clone()
    X[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        parameter_hessian(net64, CE, (X, y), "0.weight")
