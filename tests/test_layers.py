"""Tests of flatness.layers (curvature of parameter blocks) against dense float64 Hessians
(tests/oracles.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from flatness import layers
from flatness.models import mlp
from flatness.operators import HessianOperator
from flatness.params import parameter_slices

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


def test_block_hutchinson_samples_and_stderr_are_the_probes(tiny64):
    """The per-probe samples average to the estimates, and the standard error is their sample sd
    over √m; the exact one-probe variance of a block (hutchinson_variance of the dense block)
    lies within the sample variance's 5-sigma band — checked via a chi-square-free bound: the
    sample variance of m = 400 probes is within 50 % of the exact one."""
    model, loss_fn, data = tiny64
    H = oracle_hessian(model, loss_fn, data)
    blocks = layers.group_slices(model, GROUPS)
    est = layers.block_hutchinson(H, blocks, num_probes=400, seed=0)
    for g, b in blocks.items():
        assert est.trace_samples[g].mean() == pytest.approx(est.traces[g], rel=1e-12, abs=1e-12)
        var = layers.hutchinson_variance(H[b, b])
        assert est.trace_stderr[g] == pytest.approx(est.trace_samples[g].std(ddof=1) / 20, rel=1e-12)
        if var > 0:
            assert 0.5 * var < est.trace_samples[g].var(ddof=1) < 1.5 * var
    for key, v in est.frobenius_samples.items():
        assert v.mean() == pytest.approx(est.frobenius_sq[key], rel=1e-12, abs=1e-15)


def test_prediction_stderr_from_per_probe_predictions_and_agreement(tiny64):
    """The predicted curve's error bar is the sd of the per-probe predictions over √m; a profile of
    α-scaled copies agrees with the prediction, and its z-scores use both error bars."""
    from flatness import alpha_experiments

    model, loss_fn, data = tiny64
    alphas = np.array([0.5, 1.0, 4.0])
    pred = layers.block_scaling_prediction(model, loss_fn, data, GROUPS, POWERS, alphas, num_probes=50, tol=1e-10)
    est = pred.estimates
    per_probe = sum(alphas[:, None] ** (-2.0 * POWERS[g]) * est.trace_samples[g] for g in GROUPS)
    np.testing.assert_allclose(pred.trace_stderr, per_probe.std(1, ddof=1) / np.sqrt(50), rtol=1e-12)
    fam = alpha_experiments.alpha_scale_family(model, list(alphas), data[0], data, data, layers=(0, 1))
    prof = layers.curvature_profile(list(fam.models.values()), loss_fn, data, num_matvecs=10, epsilons=(),
                                    tol=1e-10, num_repeats=3)
    base = layers.curvature_profile(list(fam.models.values()), loss_fn, data, num_matvecs=10, epsilons=(), tol=1e-10)
    np.testing.assert_array_equal(prof["trace"], base["trace"])        # the seed-0 numbers are unchanged
    assert prof["trace_sd"].shape == (3,) and "trace_sd" not in base
    agree = layers.scaling_agreement(prof, pred, POWERS, alphas)
    np.testing.assert_allclose(agree["trace_pred"], layers.scaled_block_trace(est.traces, POWERS, alphas), rtol=1e-12)
    z = (prof["trace"] - agree["trace_pred"]) / np.sqrt(prof["trace_sd"] ** 2 + agree["trace_pred_se"] ** 2)
    np.testing.assert_allclose(agree["trace_z"], z, rtol=1e-12)
    assert "±" in str(layers.agreement_table(prof, agree, ["a", "b", "c"]))
    from scipy.stats import t as student_t

    # Bonferroni over 2 × 3 comparisons, Student's t with R − 1 = 2 degrees of freedom
    assert agree["z_threshold"] == pytest.approx(student_t.ppf(1 - 0.05 / 12, 2), rel=1e-12)
    with pytest.raises(ValueError, match="num_repeats"):
        layers.scaling_agreement(base, pred, POWERS, alphas)
