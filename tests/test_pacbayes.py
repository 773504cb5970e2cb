"""PAC-Bayes σ search: σ is a standard deviation, the search finds the exact-CDF σ, invariances."""

import math

import pytest
import torch
from torch import nn

from flatness.pacbayes import (pac_bayes_deviation, pac_bayes_flatness, pac_bayes_perturbation,
                               pac_bayes_sigma)
from invariance_helpers import (alpha_scaled, class_data, neuron_scaled, radially_scaled,
                                relative_change, relu_net, same_function, weight_normed)
from oracles import assert_unperturbed, snapshot

CE, BCE = nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss()


def Phi(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))


@pytest.mark.parametrize("magnitude_aware", [False, True])
def test_the_perturbation_has_standard_deviation_sigma(magnitude_aware):
    n = 20000
    g = torch.Generator().manual_seed(1)
    theta = torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.5
    sigma, eps = 0.3, 0.05
    u = pac_bayes_perturbation(theta, sigma, magnitude_aware=magnitude_aware, epsilon=eps,
                               generator=torch.Generator().manual_seed(2))
    std = torch.sqrt(sigma ** 2 * theta ** 2 + eps ** 2) if magnitude_aware \
        else torch.full_like(theta, sigma)
    xi = u / std  # standard normal if the standard deviation is std (not std**2)
    # the sample standard deviation of n normals has standard error 1/sqrt(2n)
    assert abs(float(xi.std()) - 1.0) <= 5 / math.sqrt(2 * n)
    assert abs(float(xi.mean())) <= 5 / math.sqrt(n)


def independent_units(n=2000, w=1.0):
    """Sample i's logit is theta_i: one draw of u gives n independent errors 1[w + u_i <= 0],
    whose fraction is the empirical CDF of u_i at -w."""
    net = nn.Linear(n, 1, bias=False).double()
    with torch.no_grad():
        net.weight.fill_(w)
    X = torch.eye(n, dtype=torch.float64)
    return net, (X, torch.ones(n, 1, dtype=torch.float64))


@pytest.mark.parametrize("magnitude_aware,w", [(False, 1.0), (True, 2.0)])
def test_sigma_solves_the_exact_error_equation(magnitude_aware, w):
    """Plain: P(error) = Phi(-w/sigma); magnitude-aware (eps=0): Phi(-1/sigma). The search sees
    the empirical CDF of n = 2000 normals, within 0.05 of Phi everywhere with probability
    >= 1 - 2 exp(-2 n 0.05^2) = 1 - 9e-5 (Dvoretzky-Kiefer-Wolfowitz)."""
    t = 0.4
    net, data = independent_units(w=w)
    s = pac_bayes_sigma(net, BCE, data, magnitude_aware=magnitude_aware, epsilon=0.0,
                        target_deviation=t, num_samples=1, tolerance=0.0, max_iter=30)
    scale = 1.0 if magnitude_aware else w
    assert abs(Phi(-scale / s) - t) <= 0.05 + 1e-3
    # a search that passed sigma**2 to torch.normal as its std would return sqrt(sigma*),
    # which violates the same bound (Phi(-1/sqrt(3.95)) = 0.31 for t = 0.4)
    assert abs(Phi(-scale / math.sqrt(s)) - t) > 0.05 + 1e-3
    assert pac_bayes_flatness(net, BCE, data, magnitude_aware=magnitude_aware, epsilon=0.0,
                              target_deviation=t, num_samples=1, tolerance=0.0,
                              max_iter=30) == pytest.approx(1 / s ** 2)


def test_deviation_at_the_returned_sigma_brackets_the_target():
    net, data = relu_net(), class_data()
    kw = dict(target_deviation=0.1, num_samples=5, tolerance=0.0, max_iter=25, seed=4)
    s = pac_bayes_sigma(net, CE, data, **kw)
    dk = dict(num_samples=5, seed=4)
    assert pac_bayes_deviation(net, CE, data, s * (1 - 1e-5), **dk) <= 0.1 + 1e-12 or \
        pac_bayes_deviation(net, CE, data, s * (1 + 1e-5), **dk) >= 0.1 - 1e-12


SYMMETRIES = {"alpha_scale": lambda net: (net, alpha_scaled(net, 2)),
              "neuron_scale": lambda net: (net, neuron_scaled(net, 2)),
              "weight_norm": lambda net: (weight_normed(net), radially_scaled(weight_normed(net), 2))}


@pytest.mark.parametrize("symmetry", sorted(SYMMETRIES))
def test_magnitude_aware_with_zero_floor_is_invariant_plain_is_not(symmetry):
    net, data = relu_net(), class_data()
    base, moved = SYMMETRIES[symmetry](net)
    assert same_function(base, moved, data[0])
    kw = dict(num_samples=4, tolerance=0.0, max_iter=20, seed=1)
    m0 = pac_bayes_sigma(base, CE, data, magnitude_aware=True, epsilon=0.0, **kw)
    m1 = pac_bayes_sigma(moved, CE, data, magnitude_aware=True, epsilon=0.0, **kw)
    assert relative_change(m0, m1) < 1e-9
    # the floor eps breaks it (smooth loss criterion, so the move is not hidden by error steps)
    f0 = pac_bayes_sigma(base, CE, data, magnitude_aware=True, epsilon=0.05, criterion="loss", **kw)
    f1 = pac_bayes_sigma(moved, CE, data, magnitude_aware=True, epsilon=0.05, criterion="loss", **kw)
    assert relative_change(f0, f1) > 1e-4  # far above the 1e-9 of the invariant case
    p0 = pac_bayes_sigma(base, CE, data, **kw)
    p1 = pac_bayes_sigma(moved, CE, data, **kw)
    assert relative_change(p0, p1) > 1e-4


def test_leaves_the_model_unperturbed():
    net, data = relu_net(bias=True), class_data()
    net.train()
    net[0].bias.grad = torch.ones_like(net[0].bias)
    snap = snapshot(net)
    with torch.no_grad():
        pac_bayes_sigma(net, CE, data, num_samples=2, max_iter=3)
        pac_bayes_flatness(net, CE, data, magnitude_aware=True, num_samples=2, max_iter=3,
                           criterion="loss")
    assert_unperturbed(net, snap)


@pytest.mark.parametrize("kwargs,name", [(dict(target_deviation=0.0), "target_deviation"),
                                         (dict(epsilon=-1.0), "epsilon"),
                                         (dict(num_samples=0), "num_samples"),
                                         (dict(criterion="acc"), "criterion"),
                                         (dict(sigma_start=-1.0), "sigma_start"),
                                         (dict(tolerance=-0.1), "tolerance"),
                                         (dict(max_iter=0), "max_iter")])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        pac_bayes_sigma(relu_net(), CE, class_data(), **kwargs)


def test_sigma_argument_of_the_perturbation_is_checked():
    with pytest.raises(ValueError, match="sigma"):
        pac_bayes_perturbation(torch.zeros(3), -1.0)


def test_unreachable_target_is_refused():
    net, data = independent_units(n=10)
    with pytest.raises(ValueError, match="target_deviation"):
        pac_bayes_sigma(net, BCE, data, target_deviation=0.9, num_samples=1)
