"""Tests of flatness.prior_sweep: λ-sweeps of MAP fits and Laplace evidence."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from flatness import evidence, prior_sweep
from flatness.operators import dense_hessian


def _task(N=60, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=g, dtype=torch.float64)
    w = torch.tensor([1.5, -1.0, 0.5, 0.0], dtype=torch.float64)[:d]
    y = (X @ w + 0.5 * torch.randn(N, generator=g, dtype=torch.float64) > 0).double()
    return (X[:40], y[:40]), (X[40:], y[40:])


LOSS = nn.BCEWithLogitsLoss()


def test_binary_metrics_exact():
    net = nn.Sequential(nn.Linear(1, 1), nn.Flatten(0)).double()
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[0].bias.zero_()
    X, y = torch.tensor([[1.0], [-1.0], [0.5]]), torch.tensor([1.0, 1.0, 0.0])
    acc, loss = prior_sweep.binary_metrics(net, (X, y))
    logits = torch.tensor([2.0, -2.0, 1.0], dtype=torch.float64)
    assert acc == pytest.approx(1 / 3)
    assert loss == pytest.approx(float(LOSS(logits, y.double())))


def test_lambda_sweep_equals_cold_start_fits():
    """The objective is strictly convex, so the warm-started MAP point is the cold-started one:
    every row's evidence equals a fit from zero at that λ; the ratio to guessing adds N ln 2."""
    train, test = _task()
    lambdas = [0.1, 10.0, 1.0]
    rows = prior_sweep.lambda_sweep(train, test, lambdas, LOSS)
    assert [r["lam"] for r in rows] == sorted(lambdas)
    for r in rows:
        net = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
        nn.init.zeros_(net[0].weight)
        nn.init.zeros_(net[0].bias)
        fit = evidence.fit_map(net, LOSS, train, r["lam"])
        ev = evidence.laplace_log_evidence(fit.model, LOSS, train, r["lam"], method="exact")
        assert r["log_ev"] == pytest.approx(ev.log_evidence, abs=1e-6)
        assert r["ratio"] == pytest.approx(r["log_ev"] + 40 * math.log(2), rel=1e-12)
        assert r["fit"] == pytest.approx(-ev.objective, abs=1e-6)
        assert r["test_acc"] == prior_sweep.binary_metrics(fit.model, test)[0]
    with pytest.raises(ValueError, match="lambdas"):
        prior_sweep.lambda_sweep(train, test, [1.0, -1.0])


def test_sweep_summary_against_scipy():
    rows = [dict(lam=lam, ratio=r, test_ce=c) for lam, r, c in
            [(0.01, -3.0, 0.9), (0.1, 2.0, 0.5), (1.0, 4.0, 0.45), (10.0, 1.0, 0.6)]]
    S = prior_sweep.sweep_summary(rows)
    assert S["rho"] == pytest.approx(spearmanr([-3, 2, 4, 1], [-0.9, -0.5, -0.45, -0.6]).statistic)
    assert (S["lam_ev"], S["lam_ce"], S["max_ratio"], S["min_ratio"]) == (1.0, 1.0, 4.0, -3.0)
    with pytest.raises(ValueError, match="rows"):
        prior_sweep.sweep_summary(rows[:1])


def test_evidence_or_spectrum_refuses_a_saddle_with_the_dense_spectrum():
    """A deep linear network at zero is a saddle of C: N∇²L + λI has a negative eigenvalue for a
    small λ; the reported spectrum is that of the dense float64 Hessian."""
    train, _ = _task()
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 1, bias=False), nn.Flatten(0)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net[1].weight.fill_(0.3)
    lam = 1e-3
    state = [p.detach().clone() for p in net.parameters()]
    row = prior_sweep.evidence_or_spectrum(net, LOSS, train, lam, grad_tol=1e6)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), state))
    H = dense_hessian(net, LOSS, train) * 40
    eig = torch.linalg.eigvalsh(H + lam * torch.eye(len(H), dtype=H.dtype))
    assert row["status"] == "refused" and math.isnan(row["ratio"])
    assert row["min_eig"] == pytest.approx(float(eig[0]), rel=1e-10)
    assert row["negative"] == int((eig <= 0).sum()) > 0


def test_evidence_or_spectrum_accepts_a_map_point():
    train, _ = _task()
    fit = evidence.fit_map(nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)), LOSS, train, 1.0)
    row = prior_sweep.evidence_or_spectrum(fit.model, LOSS, train, 1.0)
    ev = evidence.laplace_log_evidence(fit.model, LOSS, train, 1.0)
    assert row["status"] == "accepted" and row["negative"] == 0
    assert row["ratio"] == pytest.approx(ev.log_ratio_to_null(2), rel=1e-12)
    assert row["near_prior"] == int((ev.eigenvalues < 2.0).sum())


def test_fit_and_evidence_reports_the_fit():
    train, test = _task()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 1), nn.Flatten(0))
    start = copy.deepcopy(net)
    row = prior_sweep.fit_and_evidence(net, LOSS, train, test, 1.0, max_iter=200, grad_tol=1e6)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), start.parameters()))
    with torch.no_grad():
        assert row["hinge"] == float(row["model"][0](train[0]).abs().min())
    assert row["test_acc"] == prior_sweep.binary_metrics(row["model"], test)[0]
    assert row["status"] in ("accepted", "refused")
    table = str(prior_sweep.refusal_table([dict(row, labels="x")]))
    assert table.count("\n") == 2 and "min \\|pre-activation\\|" in table


def test_carried_prior_leaves_the_evidence_unchanged():
    """Rescaling feature j by d_j with the prior precision λ d_j² is a reparametrization: the
    evidence is invariant and ln|∇∇C| moves by +2 Σ ln d_j; with the isotropic λ it changes."""
    train, _ = _task()
    lam = 1.0
    fit = evidence.fit_map(nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)), LOSS, train, lam)
    base = evidence.laplace_log_evidence(fit.model, LOSS, train, lam)
    d = torch.tensor([0.2, 3.0, 1.0, 7.0], dtype=torch.float64)
    carried, iso = prior_sweep.rescaled_features_evidence(train, d, lam, LOSS)
    assert carried.log_evidence == pytest.approx(base.log_evidence, abs=1e-6)
    logdet = lambda ev: float(np.sum(np.log(ev.eigenvalues)))  # noqa: E731
    assert logdet(carried) - logdet(base) == pytest.approx(2 * float(torch.log(d).sum()), abs=1e-5)
    assert abs(iso.log_evidence - base.log_evidence) > 1e-3
    table = str(prior_sweep.evidence_table({"a": base, "b": carried}))
    assert table.count("\n") == 3 and "ln \\|∇∇C(ω₀)\\|" in table
    with pytest.raises(ValueError, match="scale"):
        prior_sweep.rescaled_features_evidence(train, d[:2], lam)


def test_sweep_and_summary_tables():
    train, test = _task()
    rows = prior_sweep.lambda_sweep(train, test, [0.1, 1.0], LOSS)
    assert str(prior_sweep.sweep_table(rows)).count("\n") == 3
    t = str(prior_sweep.summary_table(rows, {1: rows, 2: rows}))
    assert t.count("\n") == 7 and "λ = 1e-01" in t


def test_rescaled_evidence_moves_the_log_determinant_by_twice_the_log_scales():
    """ω = Dη over every parameter, the bias included (the old function refused a bias factor):
    with the prior carried along ln|∇∇C| moves by exactly 2 Σ ln d_j and the evidence not at all;
    with the isotropic λ it is another model."""
    train, _ = _task()
    net = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
    base = evidence.laplace_log_evidence(evidence.fit_map(net, LOSS, train, 1.0).model, LOSS, train, 1.0)
    d = torch.tensor([10.0, 0.5, 3.0, 10.0, 7.0], dtype=torch.float64)
    carried, iso = prior_sweep.rescaled_evidence(train, d, 1.0, LOSS)
    moved = prior_sweep.log_determinant(carried) - prior_sweep.log_determinant(base)
    assert moved == pytest.approx(2 * float(torch.log(d).sum()), abs=1e-6)
    # the fits stop at ‖∇C‖ ≤ 1e-6: ln|∇∇C| is first order in the offset δω ≈ H⁻¹∇C
    assert carried.log_evidence == pytest.approx(base.log_evidence, abs=1e-5)
    assert abs(iso.log_evidence - base.log_evidence) > 1e-3
    text = prior_sweep.invariance_sentence(base, carried, iso, 2 * float(torch.log(d).sum()))
    assert f"{moved:+,.2f}" in text and "a different model" in text
    with pytest.raises(ValueError, match="scale"):
        prior_sweep.rescaled_evidence(train, d[:4], 1.0, LOSS)


def test_linear_log_joint_integrates_to_the_laplace_evidence_at_its_mode():
    """The log joint is the integrand of the evidence: at the MAP point it equals −C(ω₀) plus the
    prior's normalization, C from flatness.evidence.map_objective."""
    train, _ = _task()
    fit = evidence.fit_map(nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)), LOSS, train, 2.0)
    w = torch.cat([fit.model[0].weight.detach().reshape(-1), fit.model[0].bias.detach()])
    f = prior_sweep.linear_log_joint(train, 2.0)
    C = evidence.map_objective(fit.model, LOSS, train, 2.0)
    assert float(f(w)) == pytest.approx(-C + 2.5 * math.log(2.0 / (2 * math.pi)), rel=1e-12)
    assert f(torch.stack([w, w])).shape == (2,)


def test_reparametrization_check_exact_invariant_laplace_not():
    """Two weights: the quadrature evidence is the same in ω and η = h⁻¹(ω) (change of variables),
    the Laplace evidence in ω is the library's, and in η it differs (nonlinear map)."""
    train, _ = _task(d=1)
    r = prior_sweep.reparametrization_check(train, 1.0)
    assert r["exact_eta"] == pytest.approx(r["exact"], abs=1e-6)
    fit = evidence.fit_map(nn.Sequential(nn.Linear(1, 1), nn.Flatten(0)), LOSS, train, 1.0, grad_tol=1e-10)
    assert r["laplace"] == pytest.approx(evidence.laplace_log_evidence(fit.model, LOSS, train, 1.0).log_evidence, abs=1e-6)
    assert abs(r["laplace_eta"] - r["laplace"]) > 1e-3
    with pytest.raises(ValueError, match="one feature"):
        prior_sweep.reparametrization_check(_task()[0], 1.0)


def test_evidence_check_ais_within_four_sigma_of_quadrature():
    """With one feature the AIS estimate of evidence_check can be checked against quadrature."""
    train, _ = _task(d=1)
    r = prior_sweep.evidence_check(train, 1.0, num_chains=100, num_temperatures=100)
    exact = prior_sweep.reparametrization_check(train, 1.0)["exact"]
    assert abs(r["ais"].log_evidence - exact) < 4 * r["ais"].stderr
    assert r["p"] == 2


def test_fit_and_evidence_reports_the_gauss_newton_evidence():
    """The GGN column equals laplace_ggn_log_evidence at the fitted point; the false-positive
    sentence names exactly the accepted random-label rows with a positive ratio."""
    train, test = _task()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1), nn.Flatten(0))
    row = prior_sweep.fit_and_evidence(net, LOSS, train, test, 1.0, max_iter=300, grad_tol=1e6)
    ggn = evidence.laplace_ggn_log_evidence(row["model"], LOSS, train, 1.0, grad_tol=1e6)
    assert row["ggn_ratio"] == pytest.approx(ggn.log_ratio_to_null(2), rel=1e-12)
    rows = [dict(labels="random", status="accepted", ratio=2.2, lam=100.0, ggn_ratio=-1.0),
            dict(labels="random", status="refused", ratio=math.nan, lam=10.0, ggn_ratio=0.5),
            dict(labels="informative", status="accepted", ratio=30.0, lam=1.0, ggn_ratio=30.0)]
    text = prior_sweep.false_positive_sentence(rows)
    assert "λ = 100 get +2.2 nats, a false positive" in text and "1 of the 2 random-label fits" in text
    assert "Gauss–Newton" in str(prior_sweep.refusal_table([dict(row, labels="informative")]))


def test_slq_table_exact_row_is_the_sweep_row():
    train, test = _task()
    row = prior_sweep.lambda_sweep(train, test, [1.0], LOSS)[0]
    table = str(prior_sweep.slq_table(row, LOSS, train, [(4, 4)]))
    assert f"{row['log_ev']:.2f}" in table and "SLQ, 4 probes × 4 steps" in table
