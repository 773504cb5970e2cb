"""Tests of flatness.reparam_experiments: same function, other curvature."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from flatness import params, reparam_experiments
from flatness.params import flat_parameters
from flatness.reparametrize import InputAffineMap, RadialMap

from test_layers import _state, _unchanged, tiny64  # noqa: F401  (the fixture)


def test_scaled_parameters_and_flat_vectors(tiny64):
    model, loss_fn, data = tiny64
    state = _state(model)
    factors = {"0.weight": 2.0, "2.bias": -0.5}
    net = reparam_experiments.scale_parameters(model, factors)
    with torch.no_grad():
        direct = float(loss_fn(net(data[0]), data[1]))
    assert reparam_experiments.scaled_parameters_loss(model, loss_fn, data, factors) == direct
    assert torch.equal(net[0].weight, 2.0 * model[0].weight)
    assert _unchanged(model, state)
    with pytest.raises(ValueError, match="factors"):
        reparam_experiments.scale_parameters(model, {"nope": 1.0})
    copy_ = params.with_flat_parameters(model, flat_parameters(net))
    assert torch.equal(flat_parameters(copy_), flat_parameters(net))
    with pytest.raises(ValueError, match="vector"):
        params.with_flat_parameters(model, torch.zeros(3))
    same = reparam_experiments.compare_functions({"copy": copy.deepcopy(model), "scaled": net}, model, data)
    assert same.logit_change["copy"] == 0.0 and same.logit_change["scaled"] > 0
    assert same.accuracy["copy"] == same.reference_accuracy


def test_scale_invariance_under_batch_norm():
    """With BatchNorm (ε → 0) L(cw) = L(w), so c²∇²L(cw) = ∇²L(w) and λ_max ∝ c⁻²."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4, eps=1e-12), nn.ReLU(),
                        nn.Linear(4, 3)).double()
    X, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    state = _state(net)
    chk = reparam_experiments.scale_invariance_check(net, nn.CrossEntropyLoss(), (X, y), "0.weight", [0.5, 1.0, 4.0])
    assert _unchanged(net, state)
    assert max(chk.loss_gaps) < 1e-10 and max(chk.hessian_errors) < 1e-8
    assert chk.lambda_slope == pytest.approx(-2.0, abs=1e-6)
    assert str(chk.table(chk, "again")).count("|") == 7 * 5


def test_input_map_profile_scales_the_input_curvature(tiny64):
    """x ↦ σx absorbed by the first layer: same outputs, input λ_max multiplied by σ⁻²."""
    model, loss_fn, data = tiny64
    maps = {"σ = 1": InputAffineMap(1.0, dim=5), "σ = 4": InputAffineMap(4.0, dim=5)}
    prof = reparam_experiments.input_map_profile(model, loss_fn, maps, data, data, data, tol=1e-8)
    assert max(prof.logit_change.values()) < 1e-12 and min(prof.agreement.values()) == 1.0
    assert max(prof.scaling_errors({"σ = 1": 1.0, "σ = 4": 4.0}, "σ = 1").values()) < 1e-8
    lo, hi, rho = prof.rank_change("σ = 1", "σ = 4")
    assert lo == pytest.approx(1 / 16, rel=1e-8) and hi == pytest.approx(1 / 16, rel=1e-8) and rho == 1.0


class _Affine:
    """h(θ) = 2θ + 1 with the interface of flatness.reparametrize.RadialMap."""

    def forward(self, t):
        return 2 * torch.as_tensor(t, dtype=torch.float64) + 1

    def derivative(self, t):
        return torch.full_like(torch.as_tensor(t, dtype=torch.float64), 2.0)

    def inverse(self, e):
        return (torch.as_tensor(e, dtype=torch.float64) - 1) / 2


def test_coordinate_curvature_1d():
    """(L∘h⁻¹)'' = L''/h'² (h affine, any θ; and any h at a minimum of L)."""
    quadratic = lambda t: 3.0 * (t - 0.2) ** 2  # noqa: E731
    assert reparam_experiments.coordinate_curvature_1d(quadratic, _Affine(), 1.3) == pytest.approx(6.0 / 4, rel=1e-6)
    h = RadialMap(center=0.0, a=1.0, b=0.25)
    cosine = lambda t: 1 - np.cos(t)  # noqa: E731   minimum at 0, L''(0) = 1
    theta = 0.0
    expected = 1.0 / float(h.derivative(torch.tensor(theta))) ** 2
    assert reparam_experiments.coordinate_curvature_1d(cosine, h, theta) == pytest.approx(expected, rel=1e-5)


def test_with_flat_parameters_sets_the_trainable_parameters_only():
    """The copy gets the vector in ParameterLayout order; frozen parameters and buffers are kept,
    and the model itself is not changed."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 1)).eval()
    net[1].running_mean.fill_(0.5)
    net[0].bias.requires_grad_(False)
    state = _state(net)
    layout = params.ParameterLayout(net)
    vector = torch.arange(layout.numel, dtype=torch.float64)
    new = params.with_flat_parameters(net, vector)
    assert _unchanged(net, state)
    assert torch.equal(new[0].bias, net[0].bias) and torch.equal(new[1].running_mean, net[1].running_mean)
    assert torch.equal(layout.to_vector(new), vector.float()) and new[0].weight.dtype == torch.float32
    with pytest.raises(ValueError, match="vector"):
        params.with_flat_parameters(net, torch.zeros(layout.numel + 1))


def test_scaled_parameters_loss_refuses_batch_statistics():
    """The loss is that of loss_at: eval mode on purpose, so BatchNorm in train mode is refused."""
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 1)).train()
    data = (torch.randn(8, 3), torch.randn(8, 1))
    with pytest.raises(ValueError, match="train mode"):
        reparam_experiments.scaled_parameters_loss(net, nn.MSELoss(), data, {"0.weight": 2.0})
    net.eval()
    scaled = reparam_experiments.scale_parameters(net, {"0.weight": 2.0})
    with torch.no_grad():
        direct = float(nn.MSELoss()(scaled(data[0]), data[1]))
    assert reparam_experiments.scaled_parameters_loss(net, nn.MSELoss(), data, {"0.weight": 2.0}) == direct
