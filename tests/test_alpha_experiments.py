"""Tests of flatness.alpha_experiments (Dinh et al.'s T_α) against dense float64 Hessians."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flatness import alpha_experiments, layers
from flatness.symmetries import parameter_scaling

from oracles import oracle_hessian
from test_layers import _state, _unchanged, tiny64  # noqa: F401  (the fixture)


def _bias_free(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 7, bias=False), nn.ReLU(), nn.Linear(7, 3, bias=False)).double()
    X = torch.randn(30, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    return net, nn.CrossEntropyLoss(), (X, y)


def test_alpha_scale_dense_check_holds_to_rounding():
    """∇²L(T_αθ) = D⁻¹∇²L(θ)D⁻¹ exactly for powers of two, to rounding for α = 3; the
    off-diagonal block is unchanged and Tr H(T_αθ) = α⁻²Tr H₁₁ + α²Tr H₂₂."""
    net, loss_fn, data = _bias_free()
    state = _state(net)
    for alpha, tol in ((8.0, 1e-14), (1 / 4, 1e-14), (3.0, 1e-11)):
        c = alpha_experiments.alpha_scale_dense_check(net, loss_fn, data, alpha)
        assert c.identity_error < tol and c.off_diagonal_change < tol and c.trace_error < tol
    assert _unchanged(net, state)
    with pytest.raises(ValueError, match="alpha"):
        alpha_experiments.alpha_scale_dense_check(net, loss_fn, data, 1.0)


def test_block_scaling_check_detects_a_wrong_identity():
    net, loss_fn, data = _bias_free()
    H = oracle_hessian(net, loss_fn, data)
    n1 = net[0].weight.numel()
    blocks, powers = {"1": slice(0, n1), "2": slice(n1, None)}, {"1": 1, "2": -1}
    d = parameter_scaling(net, 2.0)
    c = alpha_experiments.block_scaling_check(H, H, d, blocks, powers, 2.0)    # H is not D⁻¹HD⁻¹
    assert c.identity_error > 0.5
    with pytest.raises(ValueError, match="H, H_scaled"):
        alpha_experiments.block_scaling_check(H, H[:-1, :-1], d, blocks, powers, 2.0)


def test_sharpen_layers_meets_the_theorem(tiny64):
    """K − 1 = 2 eigenvalues above μ/α² ≥ M, the same outputs, the blocks scaled by α_k⁻²."""
    model, loss_fn, data = tiny64
    weights = ["0.weight", "2.weight", "4.weight"]
    state = _state(model)
    res = alpha_experiments.sharpen_layers(model, loss_fn, data, weights, k=4, target_factor=10.0, tol=1e-10,
                                X=data[0])
    assert _unchanged(model, state)
    assert res.logit_change == 0.0
    assert res.alpha == 2.0 ** round(math.log2(res.alpha)) and res.alpha <= math.sqrt(res.mu / res.target)
    H = oracle_hessian(res.model, loss_fn, data)
    eig = torch.linalg.eigvalsh(H).flip(0)
    assert float(eig[1]) >= res.bound * (1 - 1e-9) and res.bound >= res.target
    assert res.top_after.eigenvalues[:2] == pytest.approx(eig[:2].numpy(), rel=1e-6)
    for before, after, f in zip(res.blocks_before, res.blocks_after, res.factors):
        assert after == pytest.approx(before * f ** -2, rel=1e-6)


def test_alpha_scale_family_and_curvature_profile(tiny64):
    model, loss_fn, data = tiny64
    fam = alpha_experiments.alpha_scale_family(model, [0.5, 1.0, 4.0], data[0], data, data)
    assert fam.logit_change == [0.0, 0.0, 0.0]
    assert fam.train_losses[0] == fam.train_losses[2] and fam.norms[0] != fam.norms[2]
    assert "| 2^2 |" in str(fam.table(["2^-1", "2^0", "2^2"]))
    prof = layers.curvature_profile(list(fam.models.values())[1:], loss_fn, data, num_matvecs=8,
                                    epsilons=(1e-3,), subspace_dim=5, tol=1e-10)
    for i, net in enumerate(list(fam.models.values())[1:]):
        lam = float(torch.linalg.eigvalsh(oracle_hessian(net, loss_fn, data))[-1])
        assert prof["lambda_max"][i] == pytest.approx(lam, rel=1e-6)
    assert set(prof) == {"lambda_max", "trace", "fro", ("full", 1e-3), ("subspace", 1e-3)}
    assert str(layers.profile_table(prof, ["a", "b"])).count("\n") == 3


def test_sharpen_layers_reports_weight_and_bias_blocks(tiny64):
    """Each block's spectrum after equals the dense block's top eigenvalues, and a bias block of
    layer 2 is scaled by c₂⁻² = α⁻⁴ (the mechanism apart from the theorem)."""
    model, loss_fn, data = tiny64
    weights = ["0.weight", "2.weight", "4.weight"]
    res = alpha_experiments.sharpen_layers(model, loss_fn, data, weights, k=2, target_factor=10.0, tol=1e-10,
                                           biases=["2.bias"])
    from flatness.params import parameter_slices

    H = oracle_hessian(res.model, loss_fn, data)
    for name, values in res.block_spectra_after.items():
        b = parameter_slices(model)[name]
        assert values == pytest.approx(torch.linalg.eigvalsh(H[b, b]).flip(0)[:2].numpy(), rel=1e-6)
    assert res.bias_after[0] == pytest.approx(res.bias_before[0] * res.alpha ** -4, rel=1e-6)


@pytest.mark.parametrize("alpha", [64.0, 3.0])
def test_subspace_identity_is_exact(tiny64, alpha):
    """T_αθ + Ay = T_α(θ + T_α⁻¹Ay): bit for bit for a power of two, to rounding otherwise; the
    losses agree likewise, and the columns of T_α⁻¹A have the norms of the dense D⁻¹A."""
    model, loss_fn, data = tiny64
    state = _state(model)
    res = alpha_experiments.subspace_identity_check(model, loss_fn, data, alpha, subspace_dim=5, num_points=4)
    assert _unchanged(model, state)
    if alpha == 64.0:
        assert res.vector_error == 0.0 and res.loss_error == 0.0
    else:
        assert res.vector_error < 1e-12 and res.loss_error < 1e-12
    from flatness.params import flat_parameters
    from flatness.sharpness import random_subspace

    A = torch.as_tensor(random_subspace(flat_parameters(model).numel(), 5, seed=0), dtype=torch.float64)
    from flatness.symmetries import alpha_factors

    d = parameter_scaling(model, alpha_factors(3, alpha, (0, 1)))
    assert res.column_norms == pytest.approx((A / d[:, None]).norm(dim=0).numpy(), rel=1e-12)


def test_sharpening_tables_name_the_bias_block(tiny64):
    model, loss_fn, data = tiny64
    res = alpha_experiments.sharpen_layers(model, loss_fn, data, ["0.weight", "2.weight", "4.weight"], k=2,
                                           target_factor=10.0, tol=1e-10, biases=["2.bias"])
    assert res.bias_factors == [pytest.approx(res.alpha ** -4)]
    text = str(res.table())
    assert "2.bias" in text and f"{res.alpha ** -4:g}" in text
    assert f"{res.mu:.3f}" in str(res.summary_table())
