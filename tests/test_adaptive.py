"""Adaptive sharpness against exact quadratic oracles, and its invariances."""

import pytest
import torch
from torch import nn

from flatness.adaptive import adaptive_sharpness
from invariance_helpers import (alpha_scaled, class_data, neuron_scaled, radially_scaled,
                                relative_change, relu_net, same_function, weight_normed)
from oracles import assert_unperturbed, oracle_hessian, snapshot

MSE, CE = nn.MSELoss(), nn.CrossEntropyLoss()


def least_squares(scales=(3.0, 2.0, 1.0, 0.5), N=16, at_minimum=True, seed=0):
    """A linear model with orthogonal design: L(w) = mean (Xw - y)^2 is exactly quadratic
    with a diagonal Hessian 2 diag(s^2)/N; y = X w* so w* is an exact minimum (L = 0)."""
    g = torch.Generator().manual_seed(seed)
    d = len(scales)
    Q, _ = torch.linalg.qr(torch.randn(N, d, generator=g, dtype=torch.float64))
    X = Q * torch.tensor(scales, dtype=torch.float64)
    w_star = torch.randn(d, generator=g, dtype=torch.float64) + 2.0
    y = (X @ w_star)[:, None]
    net = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(w_star if at_minimum else w_star + 0.3)
    return net, (X, y), w_star


def test_worst_case_linf_equals_box_maximum_of_the_quadratic():
    net, data, w = least_squares()
    H = oracle_hessian(net, MSE, data)
    assert torch.allclose(H, torch.diag(torch.diag(H)), atol=1e-12)
    rho = 0.05
    # at an exact minimum with diagonal H: max over |z_i| <= rho of 1/2 sum c_i^2 H_ii z_i^2
    oracle = 0.5 * rho ** 2 * float((w.abs() ** 2 * torch.diag(H)).sum())
    s = adaptive_sharpness(net, MSE, data, rho, norm="inf", steps=10)
    assert s == pytest.approx(oracle, rel=1e-10)


def test_worst_case_l2_is_a_lower_bound_that_reaches_the_top_eigenvalue():
    net, data, w = least_squares(scales=(3.0, 1.0, 0.8, 0.5))
    H = oracle_hessian(net, MSE, data)
    M = torch.diag(w.abs()) @ H @ torch.diag(w.abs())
    rho = 0.05
    oracle = 0.5 * rho ** 2 * float(torch.linalg.eigvalsh(M)[-1])
    lam = torch.linalg.eigvalsh(M)
    assert lam[-2] < 0.8 * lam[-1]  # a spectral gap, so the power iteration below converges
    s = adaptive_sharpness(net, MSE, data, rho, norm="2", steps=200, step_size=rho)
    assert s <= oracle * (1 + 1e-12)
    # on the sphere each step is z <- (I + M/|Mz|*rho) z normalized: a power iteration on M
    assert s >= oracle * (1 - 1e-6)


def test_average_case_within_five_sigma_of_the_exact_gaussian_mean():
    net, data, w = least_squares(at_minimum=False)
    H = oracle_hessian(net, MSE, data)
    X, y = data
    theta = net.weight.detach()[0]
    g = 2 * X.T @ (X @ theta - y[:, 0]) / X.shape[0]
    rho, m = 0.1, 400
    c = theta.abs()
    # q(eps) = b.eps + eps' A eps with b = rho c*g, A = rho^2 C H C / 2
    b, A = rho * c * g, 0.5 * rho ** 2 * torch.diag(c) @ H @ torch.diag(c)
    mean = float(torch.trace(A))
    var = float(b @ b + 2 * (A * A).sum())
    s = adaptive_sharpness(net, MSE, data, rho, kind="average", num_samples=m, seed=3)
    assert abs(s - mean) <= 5 * (var / m) ** 0.5


SYMMETRIES = {"alpha_scale": lambda net: (net, alpha_scaled(net, 1)),
              "neuron_scale": lambda net: (net, neuron_scaled(net, 1)),
              "weight_norm": lambda net: (weight_normed(net), radially_scaled(weight_normed(net), 1))}


@pytest.mark.parametrize("symmetry", sorted(SYMMETRIES))
@pytest.mark.parametrize("kind,norm", [("worst", "2"), ("worst", "inf"), ("average", "2")])
def test_invariant_with_eta_zero_and_moves_with_eta(symmetry, kind, norm):
    net, data = relu_net(), class_data()
    base, moved = SYMMETRIES[symmetry](net)
    assert same_function(base, moved, data[0])
    kw = dict(norm=norm, kind=kind, steps=5, num_samples=8, seed=2)
    s0 = adaptive_sharpness(base, CE, data, 0.05, **kw)
    s1 = adaptive_sharpness(moved, CE, data, 0.05, **kw)
    assert abs(s0) > 1e-9  # a non-trivial value (the average case may be < 0 off a minimum)
    assert relative_change(s0, s1) < 1e-8
    e0 = adaptive_sharpness(base, CE, data, 0.05, eta=0.1, **kw)
    e1 = adaptive_sharpness(moved, CE, data, 0.05, eta=0.1, **kw)
    assert relative_change(e0, e1) > 1e-2


def test_leaves_the_model_unperturbed_and_works_under_no_grad():
    net, data = relu_net(bias=True), class_data()
    net.train()
    net[0].weight.grad = torch.ones_like(net[0].weight)
    snap = snapshot(net)
    with torch.no_grad():
        adaptive_sharpness(net, CE, data, 0.05, steps=3)
        adaptive_sharpness(net, CE, data, 0.05, kind="average", num_samples=3)
    assert_unperturbed(net, snap)


@pytest.mark.parametrize("kwargs,name", [(dict(rho=0.0), "rho"), (dict(rho=0.1, norm="1"), "norm"),
                                         (dict(rho=0.1, kind="max"), "kind"),
                                         (dict(rho=0.1, eta=-1.0), "eta"),
                                         (dict(rho=0.1, steps=0), "steps"),
                                         (dict(rho=0.1, num_samples=1.5), "num_samples"),
                                         (dict(rho=0.1, step_size=-1.0), "step_size")])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        adaptive_sharpness(relu_net(), CE, class_data(), **kwargs)
