"""Tests of flatness.layers against dense float64 Hessians (tests/oracles.py)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from torch import nn

from flatness import layers
from flatness.models import mlp
from flatness.operators import HessianOperator
from flatness.params import flat_parameters, parameter_slices
from flatness.reparametrize import InputAffineMap, RadialMap
from flatness.symmetries import parameter_scaling

from oracles import oracle_hessian


@pytest.fixture
def tiny64():
    """A 5-6-4-3 ReLU MLP in float64 with 40 signals: three weight layers, 87 parameters."""
    torch.manual_seed(0)
    model = mlp(5, (6, 4), 3).double()
    X = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    return model, nn.CrossEntropyLoss(), (X, y)


def _state(model):
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(model, state):
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), state))


GROUPS = {"A": ["0.weight", "0.bias"], "B": ["2.weight"], "C": ["2.bias", "4.weight", "4.bias"]}
POWERS = {"A": 1, "B": -1, "C": 0}


def test_group_slices_cover_the_named_parameters(tiny64):
    model, _, _ = tiny64
    s = parameter_slices(model)
    g = layers.group_slices(model, GROUPS)
    assert g["A"] == slice(s["0.weight"].start, s["0.bias"].stop)
    assert g["B"] == slice(s["2.weight"].start, s["2.weight"].stop)
    assert g["C"].stop == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="groups"):
        layers.group_slices(model, {"x": ["0.weight", "2.weight"]})      # not adjacent
    with pytest.raises(ValueError, match="groups"):
        layers.group_slices(model, {"x": ["nope"]})


def test_block_hutchinson_within_five_sigma_of_the_dense_blocks(tiny64):
    """Each block trace and squared Frobenius norm lies within 5σ of the dense value, σ² the exact
    variance 2(‖A‖_F² − Σ A_ii²)/m of the Rademacher estimator of Tr A (A = H_bb, or
    H_gh^T H_gh for ‖H_gh‖_F²)."""
    model, loss_fn, data = tiny64
    H = oracle_hessian(model, loss_fn, data)
    blocks = layers.group_slices(model, GROUPS)
    m = 400
    state = _state(model)
    est = layers.block_hutchinson(HessianOperator(model, loss_fn, data), blocks, num_probes=m, seed=3)
    assert _unchanged(model, state)
    for g, bg in blocks.items():
        A = H[bg, bg]
        sigma = math.sqrt(layers.hutchinson_variance(A) / m)
        assert abs(est.traces[g] - float(A.trace())) <= 5 * sigma + 1e-10
        for h, bh in blocks.items():
            B = H[bg, bh].T @ H[bg, bh]
            sigma = math.sqrt(layers.hutchinson_variance(B) / m)
            assert abs(est.frobenius_sq[(g, h)] - float(B.trace())) <= 5 * sigma + 1e-10
    # the dense matrix works as the operator, and the same seed gives the same probes
    again = layers.block_hutchinson(H, blocks, num_probes=m, seed=3)
    assert again.traces == pytest.approx(est.traces, rel=1e-8)


def test_hutchinson_variance_is_the_exact_variance():
    """Enumerate all 2^n Rademacher vectors for a 4 × 4 matrix."""
    A = torch.tensor([[2.0, 1.0, -0.5, 0.3], [1.0, 0.0, 0.7, 0.2], [-0.5, 0.7, 1.5, -1.0],
                      [0.3, 0.2, -1.0, -2.0]], dtype=torch.float64)
    values = []
    for bits in range(16):
        v = torch.tensor([1.0 if bits >> i & 1 else -1.0 for i in range(4)], dtype=torch.float64)
        values.append(float(v @ A @ v))
    assert np.mean(values) == pytest.approx(float(A.trace()))
    assert np.var(values) == pytest.approx(layers.hutchinson_variance(A))


def test_scaled_block_formulas_are_exact_for_dense_blocks(tiny64):
    """With the exact block traces and Frobenius norms, the formulas give Tr and ‖·‖_F of
    D⁻¹HD⁻¹ for D = diag(α^{p_g})."""
    model, loss_fn, data = tiny64
    H = oracle_hessian(model, loss_fn, data)
    blocks = layers.group_slices(model, GROUPS)
    traces = {g: float(H[b, b].trace()) for g, b in blocks.items()}
    fro2 = {(g, h): float(H[bg, bh].pow(2).sum()) for g, bg in blocks.items() for h, bh in blocks.items()}
    for alpha in (0.25, 3.0):
        d = torch.ones(H.shape[0], dtype=torch.float64)
        for g, b in blocks.items():
            d[b] = alpha ** POWERS[g]
        HD = H / d[:, None] / d[None, :]
        assert layers.scaled_block_trace(traces, POWERS, alpha) == pytest.approx(float(HD.trace()), rel=1e-12)
        assert float(layers.scaled_block_frobenius(fro2, POWERS, alpha)) == pytest.approx(
            float(HD.norm()), rel=1e-12)
    with pytest.raises(ValueError, match="powers"):
        layers.scaled_block_trace(traces, {"A": 1}, 2.0)


def test_block_eigenvalues_and_gram_against_dense_blocks(tiny64):
    model, loss_fn, data = tiny64
    H = oracle_hessian(model, loss_fn, data)
    s = parameter_slices(model)
    weights = [s["0.weight"], s["2.weight"]]
    lams = layers.layer_top_eigenvalues(model, loss_fn, data, weights, tol=1e-12)
    dense = [float(torch.linalg.eigvalsh(H[b, b])[-1]) for b in weights]
    assert lams == pytest.approx(dense, rel=1e-8)
    C, mu = layers.block_gram(model, loss_fn, data, weights, tol=1e-12)
    U = torch.zeros(H.shape[0], 2, dtype=torch.float64)
    for col, b in enumerate(weights):
        U[b, col] = torch.linalg.eigh(H[b, b]).eigenvectors[:, -1]
    C_dense = U.T @ H @ U
    assert torch.diagonal(C).numpy() == pytest.approx(dense, rel=1e-8)
    # the eigenvectors' signs are arbitrary; the spectrum of C is not
    assert mu == pytest.approx(float(torch.linalg.eigvalsh(C_dense)[0]), rel=1e-6, abs=1e-10)
    assert abs(float(C[0, 1])) == pytest.approx(abs(float(C_dense[0, 1])), rel=1e-6, abs=1e-10)


def test_block_prediction_matches_its_parts(tiny64):
    model, loss_fn, data = tiny64
    grid = np.array([0.5, 2.0])
    pred = layers.block_scaling_prediction(model, loss_fn, data, GROUPS, POWERS, grid, num_probes=8,
                                           seed=1, tol=1e-10)
    est = layers.block_hutchinson(HessianOperator(model, loss_fn, data), pred.blocks, 8, seed=1)
    assert pred.estimates.traces == est.traces
    assert np.array_equal(pred.trace, layers.scaled_block_trace(est.traces, POWERS, grid))
    assert np.array_equal(pred.frobenius, layers.scaled_block_frobenius(est.frobenius_sq, POWERS, grid))


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
        c = layers.alpha_scale_dense_check(net, loss_fn, data, alpha)
        assert c.identity_error < tol and c.off_diagonal_change < tol and c.trace_error < tol
    assert _unchanged(net, state)
    with pytest.raises(ValueError, match="alpha"):
        layers.alpha_scale_dense_check(net, loss_fn, data, 1.0)


def test_block_scaling_check_detects_a_wrong_identity():
    net, loss_fn, data = _bias_free()
    H = oracle_hessian(net, loss_fn, data)
    n1 = net[0].weight.numel()
    blocks, powers = {"1": slice(0, n1), "2": slice(n1, None)}, {"1": 1, "2": -1}
    d = parameter_scaling(net, 2.0)
    c = layers.block_scaling_check(H, H, d, blocks, powers, 2.0)    # H is not D⁻¹HD⁻¹
    assert c.identity_error > 0.5
    with pytest.raises(ValueError, match="H, H_scaled"):
        layers.block_scaling_check(H, H[:-1, :-1], d, blocks, powers, 2.0)


def test_sharpen_layers_meets_the_theorem(tiny64):
    """K − 1 = 2 eigenvalues above μ/α² ≥ M, the same outputs, the blocks scaled by α_k⁻²."""
    model, loss_fn, data = tiny64
    weights = ["0.weight", "2.weight", "4.weight"]
    state = _state(model)
    res = layers.sharpen_layers(model, loss_fn, data, weights, k=4, target_factor=10.0, tol=1e-10,
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
    fam = layers.alpha_scale_family(model, [0.5, 1.0, 4.0], data[0], data, data)
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


def test_scaled_parameters_and_flat_vectors(tiny64):
    model, loss_fn, data = tiny64
    state = _state(model)
    factors = {"0.weight": 2.0, "2.bias": -0.5}
    net = layers.scale_parameters(model, factors)
    with torch.no_grad():
        direct = float(loss_fn(net(data[0]), data[1]))
    assert layers.scaled_parameters_loss(model, loss_fn, data, factors) == direct
    assert torch.equal(net[0].weight, 2.0 * model[0].weight)
    assert _unchanged(model, state)
    with pytest.raises(ValueError, match="factors"):
        layers.scale_parameters(model, {"nope": 1.0})
    copy_ = layers.with_flat_parameters(model, flat_parameters(net))
    assert torch.equal(flat_parameters(copy_), flat_parameters(net))
    with pytest.raises(ValueError, match="vector"):
        layers.with_flat_parameters(model, torch.zeros(3))
    same = layers.compare_functions({"copy": copy.deepcopy(model), "scaled": net}, model, data)
    assert same.logit_change["copy"] == 0.0 and same.logit_change["scaled"] > 0
    assert same.accuracy["copy"] == same.reference_accuracy


def test_scale_invariance_under_batch_norm():
    """With BatchNorm (ε → 0) L(cw) = L(w), so c²∇²L(cw) = ∇²L(w) and λ_max ∝ c⁻²."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4, eps=1e-12), nn.ReLU(),
                        nn.Linear(4, 3)).double()
    X, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    state = _state(net)
    chk = layers.scale_invariance_check(net, nn.CrossEntropyLoss(), (X, y), "0.weight", [0.5, 1.0, 4.0])
    assert _unchanged(net, state)
    assert max(chk.loss_gaps) < 1e-10 and max(chk.hessian_errors) < 1e-8
    assert chk.lambda_slope == pytest.approx(-2.0, abs=1e-6)
    assert str(chk.table(chk, "again")).count("|") == 7 * 5


def test_input_map_profile_scales_the_input_curvature(tiny64):
    """x ↦ σx absorbed by the first layer: same outputs, input λ_max multiplied by σ⁻²."""
    model, loss_fn, data = tiny64
    maps = {"σ = 1": InputAffineMap(1.0, dim=5), "σ = 4": InputAffineMap(4.0, dim=5)}
    prof = layers.input_map_profile(model, loss_fn, maps, data, data, data, tol=1e-8)
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
    assert layers.coordinate_curvature_1d(quadratic, _Affine(), 1.3) == pytest.approx(6.0 / 4, rel=1e-6)
    h = RadialMap(center=0.0, a=1.0, b=0.25)
    cosine = lambda t: 1 - np.cos(t)  # noqa: E731   minimum at 0, L''(0) = 1
    theta = 0.0
    expected = 1.0 / float(h.derivative(torch.tensor(theta))) ** 2
    assert layers.coordinate_curvature_1d(cosine, h, theta) == pytest.approx(expected, rel=1e-5)


def test_log_bisect_and_band_geometry():
    assert layers.log_bisect(lambda x: x < 3.0, 1.0, 100.0) == pytest.approx(3.0, rel=1e-12)
    assert layers.log_bisect(lambda x: x > 0.2, 1.0, 1e-3) == pytest.approx(0.2, rel=1e-12)
    p_lo, p_hi, R = 0.5, 2.0, 4.0
    numeric = quad(lambda s: max(0.0, min(p_hi / s, R) - min(p_lo / s, R)), 0.0, R,
                   points=[p_lo / R, p_hi / R], limit=200)[0]
    assert layers.hyperbolic_band_area(p_lo, p_hi, R) == pytest.approx(numeric, rel=1e-8)
    with pytest.raises(ValueError, match="R"):
        layers.hyperbolic_band_area(p_lo, p_hi, 1.0)


def test_log_box_area_within_five_sigma_of_the_exact_area():
    """The estimator ℓ²·mean(w) is unbiased; its exact variance is ℓ⁴(E w² − (E w)²)/n with
    E w² = ℓ⁻² ∬_band st ds dt."""
    p_lo, p_hi, R, floor, n = 0.5, 2.0, 8.0, 1e-2, 4000
    inside = lambda s, t: p_lo < s * t < p_hi  # noqa: E731
    area, stderr, share = layers.log_box_area(inside, R, n, np.random.default_rng(0), floor=floor)
    ell = math.log(R) - math.log(floor / R)
    exact = layers.hyperbolic_band_area(p_lo, p_hi, R)
    second = quad(lambda s: s * (min(p_hi / s, R) ** 2 - min(p_lo / s, R) ** 2) / 2, p_lo / R, R,
                  points=[p_hi / R], limit=200)[0] / ell ** 2
    sigma = math.sqrt(ell ** 4 * (second - (exact / ell ** 2) ** 2) / n)
    assert abs(area - exact) < 5 * sigma
    assert 0 < share < 1 and stderr > 0


def test_plane_band_on_a_function_of_st():
    """L(s, t) = (ln st)²: the band is |ln st| < √ε."""
    eps = 0.09
    band = layers.plane_band(lambda s, t: math.log(s * t) ** 2, eps, [-1.0, 0.0, 1.0], [4.0, 8.0], 200)
    assert band.p_lo == pytest.approx(math.exp(-0.3), rel=1e-9)
    assert band.p_hi == pytest.approx(math.exp(0.3), rel=1e-9)
    assert band.surface.shape == (3, 3) and band.surface[1, 1] == 0.0
    assert band.exact_areas == [layers.hyperbolic_band_area(band.p_lo, band.p_hi, R) for R in (4.0, 8.0)]
    assert str(band.table()).count("\n") == 3
