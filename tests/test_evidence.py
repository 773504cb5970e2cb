"""Tests of flatness.evidence: the Laplace evidence against closed forms and dense oracles."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from flatness import data, evidence, krylov
from flatness.data import Split
from oracles import assert_unperturbed, snapshot


def _regression(N=25, d=4, sigma=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    y = X @ w + sigma * torch.randn(N, generator=g, dtype=torch.float64)
    return X, y


def _linear(d, bias=False):
    return nn.Sequential(nn.Linear(d, 1, bias=bias), nn.Flatten(0)).double()


def _closed_form_log_evidence(X, y, sigma, lam):
    """ln N(y; 0, σ²I + XXᵀ/λ): the exact marginal likelihood of Bayesian linear regression."""
    N = X.shape[0]
    S = sigma ** 2 * torch.eye(N, dtype=torch.float64) + X @ X.T / lam
    return float(torch.distributions.MultivariateNormal(torch.zeros(N, dtype=torch.float64),
                                                        covariance_matrix=S).log_prob(y))


def _logistic(N=40, d=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=g)
    y = (X[:, 0] + 0.5 * torch.randn(N, generator=g) > 0).float()
    return X, y


@pytest.mark.parametrize("lam", [0.1, 1.0, 10.0])
def test_linear_regression_evidence_matches_closed_form(lam):
    sigma = 0.5
    X, y = _regression(sigma=sigma)
    loss = evidence.GaussianNLLLoss(sigma)
    fit = evidence.fit_map(_linear(X.shape[1]), loss, (X, y), lam)
    assert fit.converged
    ev = evidence.laplace_log_evidence(fit.model, loss, (X, y), lam, method="exact")
    assert ev.method == "exact" and ev.stderr == 0.0
    assert ev.log_evidence == pytest.approx(_closed_form_log_evidence(X, y, sigma, lam), abs=1e-8)
    # the decomposition: ln evidence = −C(ω₀) + ln Occam, C = NLL + penalty
    assert ev.log_evidence == pytest.approx(-ev.objective + ev.log_occam_factor, abs=1e-12)
    assert ev.objective == pytest.approx(ev.neg_log_likelihood + ev.penalty, abs=1e-12)
    assert ev.num_parameters == X.shape[1] and ev.num_samples == X.shape[0]


def test_map_matches_ridge_solution_and_objective():
    sigma, lam = 0.5, 2.0
    X, y = _regression(sigma=sigma)
    loss = evidence.GaussianNLLLoss(sigma)
    fit = evidence.fit_map(_linear(X.shape[1]), loss, (X, y), lam)
    A = X.T @ X / sigma ** 2 + lam * torch.eye(X.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(A, X.T @ y / sigma ** 2)
    assert torch.allclose(fit.model[0].weight.detach().reshape(-1), w, atol=1e-8)
    r = y - X @ w
    C = float((r ** 2).sum() / (2 * sigma ** 2)
              + X.shape[0] * 0.5 * math.log(2 * math.pi * sigma ** 2)
              + lam / 2 * (w ** 2).sum())
    assert fit.objective == pytest.approx(C, abs=1e-9)
    assert evidence.map_objective(fit.model, loss, (X, y), lam) == pytest.approx(C, abs=1e-9)


def test_hessian_is_summed_loss_hessian_plus_prior():
    """The eigenvalues of ∇∇C equal those of Xᵀ W X + λI for logistic regression."""
    X, y = _logistic()
    lam = 0.5
    loss = nn.BCEWithLogitsLoss()
    net = nn.Sequential(nn.Linear(3, 1, bias=False), nn.Flatten(0))
    fit = evidence.fit_map(net, loss, (X, y), lam)
    ev = evidence.laplace_log_evidence(fit.model, loss, (X, y), lam, method="exact")
    Xd = X.double()
    p = torch.sigmoid(Xd @ fit.model[0].weight.detach().reshape(-1))
    H = Xd.T @ (Xd * (p * (1 - p))[:, None]) + lam * torch.eye(3, dtype=torch.float64)
    assert np.allclose(ev.eigenvalues, torch.linalg.eigvalsh(H).numpy(), atol=1e-10)
    assert ev.log_occam_factor == pytest.approx(
        -0.5 * float(torch.logdet(H)) + 1.5 * math.log(lam), abs=1e-10)


def test_model_and_inputs_are_not_changed():
    X, y = _logistic()
    net = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    fit = evidence.fit_map(net, nn.BCEWithLogitsLoss(), (X, y), 1.0)
    evidence.laplace_log_evidence(fit.model, nn.BCEWithLogitsLoss(), (X, y), 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert net.training and next(net.parameters()).dtype == torch.float32
    assert fit.model is not net and not fit.model.training


def _spd(P=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
    ev = torch.logspace(-2, 3, P, dtype=torch.float64)
    return Q @ torch.diag(ev) @ Q.T, Q, ev


def test_slq_quadrature_is_exact_with_a_full_lanczos_basis():
    """With as many Lanczos steps as dimensions, each probe's value is P·qᵀ ln(A) q exactly."""
    A, Q, ev = _spd()
    logA = Q @ torch.diag(ev.log()) @ Q.T
    starts = []

    def matvec(v):
        if not starts or len(starts[-1]) == 60:
            starts.append([])
        starts[-1].append(v.clone())
        return A @ v

    est = krylov.stochastic_logdet(matvec, dim=60, num_probes=3, num_lanczos=60, seed=0)
    for value, vs in zip(est.per_probe, starts):
        q = vs[0]
        assert value == pytest.approx(60 * float(q @ logA @ q), rel=1e-8)
    # a diagonal matrix: every Rademacher probe gives the exact log-determinant
    D = torch.diag(ev)
    assert krylov.stochastic_logdet(D, num_probes=2, num_lanczos=60).value == pytest.approx(
        float(ev.log().sum()), abs=1e-8)


def test_slq_logdet_against_slogdet():
    A, _, _ = _spd()
    exact = float(torch.linalg.slogdet(A).logabsdet)
    est = krylov.stochastic_logdet(A, num_probes=40, num_lanczos=25, seed=1)
    assert abs(est.value - exact) < 4 * est.stderr
    assert est.stderr < 0.1 * abs(exact)
    assert est.products == 40 * 25
    assert est.ritz_min >= 0.01 - 1e-9 and est.ritz_max <= 1000 + 1e-6
    # a callable operator and an array give the same numbers
    same = krylov.stochastic_logdet(lambda v: A @ v, dim=60, num_probes=40, num_lanczos=25, seed=1)
    assert same.value == pytest.approx(est.value, rel=1e-12)
    arr = krylov.stochastic_logdet(A.numpy(), num_probes=40, num_lanczos=25, seed=1)
    assert arr.value == pytest.approx(est.value, rel=1e-12)


def test_slq_evidence_against_exact_on_a_small_net():
    torch.manual_seed(0)
    X, y = _logistic(N=40, d=3)
    # tanh, not ReLU: a smooth objective, so L-BFGS reaches a true minimum
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Flatten(0))
    loss = nn.BCEWithLogitsLoss()
    fit = evidence.fit_map(net, loss, (X, y), 1.0)
    exact = evidence.laplace_log_evidence(fit.model, loss, (X, y), 1.0, method="exact")
    est = evidence.laplace_log_evidence(fit.model, loss, (X, y), 1.0, method="slq", num_probes=30,
                                     num_lanczos=15, seed=3)
    assert est.method == "slq" and est.stderr > 0
    assert abs(est.log_evidence - exact.log_evidence) < 4 * est.stderr
    assert est.objective == pytest.approx(exact.objective, rel=1e-12)
    assert est.min_eigenvalue >= exact.min_eigenvalue - 1e-9


def test_linear_reparametrization_with_carried_prior_is_exact():
    """ω = Dη: the model on inputs X·D with prior precision λD² on η is the same Bayesian model
    as the model on X with precision λ on ω; both Laplace values equal the closed form."""
    sigma, lam = 0.5, 1.0
    X, y = _regression(sigma=sigma, d=3)
    D = torch.tensor([0.1, 1.0, 20.0], dtype=torch.float64)
    loss = evidence.GaussianNLLLoss(sigma)
    base = evidence.laplace_log_evidence(evidence.fit_map(_linear(3), loss, (X, y), lam).model, loss,
                                      (X, y), lam)
    prior = lam * D ** 2
    moved = evidence.laplace_log_evidence(evidence.fit_map(_linear(3), loss, (X * D, y), prior).model,
                                       loss, (X * D, y), prior)
    assert moved.log_evidence == pytest.approx(base.log_evidence, abs=1e-8)
    assert base.log_evidence == pytest.approx(_closed_form_log_evidence(X, y, sigma, lam), abs=1e-8)
    # an isotropic prior on η is a different prior on ω: a different evidence
    other = evidence.laplace_log_evidence(evidence.fit_map(_linear(3), loss, (X * D, y), lam).model,
                                       loss, (X * D, y), lam)
    assert abs(other.log_evidence - base.log_evidence) > 0.1


def test_null_and_occam_helpers():
    assert evidence.null_log_evidence(10, 2) == pytest.approx(10 * math.log(0.5))
    assert evidence.log_occam_factor([2.0, 2.0], 2.0) == 0.0
    with pytest.raises(ValueError, match="num_classes"):
        evidence.null_log_evidence(10, 1)
    with pytest.raises(ValueError, match="num_samples"):
        evidence.null_log_evidence(0, 2)
    with pytest.raises(ValueError, match="not positive"):
        evidence.log_occam_factor([1.0, -1e-3], 1.0)


def test_refuses_a_point_that_is_not_a_minimum():
    X, y = _logistic()
    net = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    with pytest.raises(ValueError, match="not a minimum"):
        evidence.laplace_log_evidence(net, nn.BCEWithLogitsLoss(), (X, y), 1.0)


def test_refuses_non_positive_curvature():
    """At a saddle (zero gradient, negative curvature) both methods refuse."""
    class Saddle(nn.Module):
        # output (a·b + 0.3 a²)·x₀ + c·x₁: with y = 1, x₀ = 1 and Σx₁ = 0 the point a = b = c = 0
        # has zero gradient and ∇∇C = −N [[0.6, 1, 0], [1, 0, 0], [0, 0, 0]] + diag(0, 0, Σx₁²)
        # + λI, with an eigenvalue 1 − 1.344 N < 0 (eigenvectors that no ±1 probe aligns with).
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3, dtype=torch.float64))

        def forward(self, x):
            a, b, c = self.w
            return (a * b + 0.3 * a * a) * x[:, 0] + c * x[:, 1]

    x1 = torch.linspace(-1, 1, 10, dtype=torch.float64)
    X = torch.stack([torch.ones(10, dtype=torch.float64), x1], 1)
    y = torch.ones(10, dtype=torch.float64)
    loss = evidence.GaussianNLLLoss(1.0)
    with pytest.raises(ValueError, match="non-positive eigenvalue"):
        evidence.laplace_log_evidence(Saddle(), loss, (X, y), 1.0, method="exact")
    with pytest.raises(ValueError, match="not positive definite"):
        evidence.laplace_log_evidence(Saddle(), loss, (X, y), 1.0, method="slq", num_lanczos=3,
                                   num_probes=2)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), True, "1"])
def test_refuses_bad_prior_precision(bad):
    X, y = _logistic()
    net = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    with pytest.raises(ValueError, match="prior_precision"):
        evidence.laplace_log_evidence(net, nn.BCEWithLogitsLoss(), (X, y), bad)
    with pytest.raises(ValueError, match="prior_precision"):
        evidence.fit_map(net, nn.BCEWithLogitsLoss(), (X, y), bad)


def test_refuses_bad_options():
    X, y = _logistic()
    net = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    with pytest.raises(ValueError, match="method"):
        evidence.laplace_log_evidence(net, nn.BCEWithLogitsLoss(), (X, y), 1.0, method="dense")
    with pytest.raises(ValueError, match="reduction"):
        evidence.laplace_log_evidence(net, nn.BCEWithLogitsLoss(reduction="sum"), (X, y), 1.0)
    with pytest.raises(ValueError, match="num_probes"):
        krylov.stochastic_logdet(torch.eye(3), num_probes=0)
    with pytest.raises(ValueError, match="dim"):  # the other operator checks: as_operator (test_krylov)
        krylov.stochastic_logdet(lambda v: v)
    with pytest.raises(ValueError, match="sigma"):
        evidence.GaussianNLLLoss(0.0)
    with pytest.raises(ValueError, match="Ritz"):
        krylov.stochastic_logdet(torch.diag(torch.tensor([1.0, -1.0])), num_lanczos=2)


def test_two_class_split_and_random_features():
    s = Split(torch.randn(40, 5), torch.arange(40) % 4, torch.randn(20, 5), torch.arange(20) % 4, 4)
    b = data.two_class_split(s, (3, 1))
    assert len(b.y_train) == 20 and set(b.y_train.tolist()) == {0.0, 1.0}
    assert b.y_train.dtype == torch.float32 and b.num_classes == 2
    r1 = data.two_class_split(s, (3, 1), random_labels=True, seed=5)
    r2 = data.two_class_split(s, (3, 1), random_labels=True, seed=5)
    assert torch.equal(r1.y_train, r2.y_train) and torch.equal(r1.X_train, b.X_train)
    assert torch.equal(r1.y_test, r2.y_test)
    f = data.random_relu_features(b, 7, seed=2)
    assert f.input_shape == (7,) and len(f.X_test) == len(b.X_test)
    assert torch.allclose(f.X_train.mean(0), torch.zeros(7), atol=1e-5)
    assert torch.equal(f.X_train, data.random_relu_features(b, 7, seed=2).X_train)
    with pytest.raises(ValueError, match="classes"):
        data.two_class_split(s, (1, 1))
    with pytest.raises(ValueError, match="classes"):
        data.two_class_split(s, (0, 4))
    with pytest.raises(TypeError, match="split"):
        data.two_class_split((s.X_train, s.y_train), (0, 1))
    with pytest.raises(ValueError, match="width"):
        data.random_relu_features(b, 0)


def test_gaussian_nll_matches_torch():
    out, tgt = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    ref = nn.GaussianNLLLoss(full=True)(out, tgt, torch.full((7,), 0.3 ** 2, dtype=torch.float64))
    assert float(evidence.GaussianNLLLoss(0.3)(out, tgt)) == pytest.approx(float(ref), rel=1e-12)
    with pytest.raises(ValueError, match="shapes"):
        evidence.GaussianNLLLoss(1.0)(torch.zeros(3), torch.zeros(3, 1))


def test_alpha_scale_with_carried_prior_leaves_evidence_unchanged():
    """Dinh et al.'s α-scale (layer 1 × α, layer 2 ÷ α) changes the Hessian's determinant, but
    with the prior carried along (precision ÷ α² on layer 1, × α² on layer 2) the Laplace
    evidence is unchanged to rounding.

    The identity is algebraic (a linear change of parameters), so it is checked on a smooth
    two-layer net with one linear hidden unit: the MAP point of a ReLU net usually lies on a
    kink, where the gradient does not vanish and ∇∇C is indefinite (see the chapter)."""
    torch.manual_seed(0)
    X, y = _logistic(N=50, d=3)
    net = nn.Sequential(nn.Linear(3, 1), nn.Linear(1, 1), nn.Flatten(0))
    loss = nn.BCEWithLogitsLoss()
    lam, alpha = 1.0, 4.0
    fit = evidence.fit_map(net, loss, (X, y), lam)
    assert fit.converged
    base = evidence.laplace_log_evidence(fit.model, loss, (X, y), lam, method="exact")
    scaled = copy.deepcopy(fit.model)
    with torch.no_grad():
        scaled[0].weight.mul_(alpha)
        scaled[0].bias.mul_(alpha)
        scaled[1].weight.div_(alpha)
    prior = evidence.per_parameter_precision(
        scaled, lam, {"0.weight": alpha ** -2, "0.bias": alpha ** -2, "1.weight": alpha ** 2})
    moved = evidence.laplace_log_evidence(scaled, loss, (X, y), prior, method="exact")
    assert moved.log_evidence == pytest.approx(base.log_evidence, abs=1e-8)
    assert moved.log_occam_factor == pytest.approx(base.log_occam_factor, abs=1e-8)
    # ... while the log-determinant of ∇∇C moved by ln|det D⁻²| = −2 (4 − 1) ln α
    logdet = lambda e: float(np.sum(np.log(e.eigenvalues)))  # noqa: E731
    assert logdet(moved) - logdet(base) == pytest.approx(-2 * (4 - 1) * math.log(alpha), abs=1e-8)
    # with the isotropic prior the scaled point is not a minimum, and is refused
    with pytest.raises(ValueError, match="not a minimum"):
        evidence.laplace_log_evidence(scaled, loss, (X, y), lam)
    assert isinstance(moved.prior_precision, np.ndarray) and base.prior_precision == lam


def test_relu_map_point_on_a_kink_is_reported():
    """fit_map reports non-convergence honestly when the minimum sits on a ReLU kink."""
    torch.manual_seed(0)
    X, y = _logistic(N=50, d=3)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1), nn.Flatten(0))
    lam = 1.0
    fit = evidence.fit_map(net, nn.BCEWithLogitsLoss(), (X, y), lam, max_iter=40)
    # the reported gradient norm is that of C at the returned point, recomputed independently
    assert fit.gradient_norm == pytest.approx(_gradient_norm_of_C(fit.model, X, y, lam), rel=1e-9)
    assert fit.converged == (_gradient_norm_of_C(fit.model, X, y, lam) <= 1e-6)
    assert np.isfinite(fit.objective) and fit.iterations <= 40 * 5


def _gradient_norm_of_C(model, X, y, lam):
    """‖∇C‖ for C(ω) = Σᵢ BCE(f(xᵢ), yᵢ) + λ/2 ‖ω‖², by torch.func on a float64 copy."""
    net = copy.deepcopy(model).double()
    names = [n for n, _ in net.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    shapes = [p.shape for p in net.parameters()]

    def C(v):
        parts, i = {}, 0
        for n, shape in zip(names, shapes):
            k = int(np.prod(shape))
            parts[n] = v[i:i + k].reshape(shape)
            i += k
        out = torch.func.functional_call(net, parts, (X.double(),))
        nll = nn.functional.binary_cross_entropy_with_logits(out, y.double(), reduction="sum")
        return nll + 0.5 * lam * (v * v).sum()

    return float(torch.func.grad(C)(flat).norm())


@pytest.mark.parametrize("lam", [0.3, 3.0])
def test_converged_means_the_ridge_minimum(lam):
    """Convergence means the point is the minimum: for the linear-Gaussian model the returned
    weights are within ‖g‖/λ_min(A) of the ridge solution (C is λ_min(A)-strongly convex), the
    independently recomputed gradient is below grad_tol, and the evidence is the closed form."""
    sigma = 0.5
    X, y = _regression(sigma=sigma)
    loss = evidence.GaussianNLLLoss(sigma)
    fit = evidence.fit_map(_linear(X.shape[1]), loss, (X, y), lam, grad_tol=1e-6)
    assert fit.converged
    A = X.T @ X / sigma ** 2 + lam * torch.eye(X.shape[1], dtype=torch.float64)
    w_star = torch.linalg.solve(A, X.T @ y / sigma ** 2)
    w = fit.model[0].weight.detach().reshape(-1)
    g = A @ w - X.T @ y / sigma ** 2  # ∇C(w), independently of fit_map
    assert float(g.norm()) <= 1e-6
    assert fit.gradient_norm == pytest.approx(float(g.norm()), rel=1e-6, abs=1e-12)
    assert float((w - w_star).norm()) <= float(g.norm()) / float(torch.linalg.eigvalsh(A)[0]) + 1e-15
    ev = evidence.laplace_log_evidence(fit.model, loss, (X, y), lam, method="exact")
    assert ev.log_evidence == pytest.approx(_closed_form_log_evidence(X, y, sigma, lam), abs=1e-8)


@pytest.mark.parametrize("labels", [[2.0], [-1.0], [0.5]])
def test_binary_labels_must_be_zero_or_one(labels):
    """Issue 10 #5: labels 2 or −1 with BCEWithLogitsLoss gave log evidences of +574 and +905
    nats, impossible for the log-probability of discrete labels."""
    X, y = _logistic()
    y = y.clone()
    y[:5] = torch.tensor(labels)
    net = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    with pytest.raises(ValueError, match="must be 0 or 1"):
        evidence.laplace_log_evidence(net, nn.BCEWithLogitsLoss(), (X, y), 1.0, grad_tol=1e9)


@pytest.mark.parametrize("bad", [-7, -100, 3])
def test_class_labels_must_be_scored(bad):
    """A label of −7 (next to an ignored −100), an ignored label, or a class out of range."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(20, 2, generator=g), torch.randint(0, 3, (20,), generator=g)
    y[0], y[1] = -100, bad
    net = nn.Linear(2, 3)
    with pytest.raises(ValueError, match="ignore_index|labels must lie"):
        evidence.laplace_log_evidence(net, nn.CrossEntropyLoss(), (X, y), 1.0, grad_tol=1e9)
    with pytest.raises(ValueError, match="class weights"):
        evidence.laplace_log_evidence(net, nn.CrossEntropyLoss(weight=torch.ones(3)),
                                      (X, y.clamp(0)), 1.0, grad_tol=1e9)


def test_numpy_scalar_prior_precision():
    """Issue 10 #11: np.float32 prior precisions were refused."""
    X, y = _logistic()
    net = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    fit = evidence.fit_map(net, nn.BCEWithLogitsLoss(), (X, y), 0.5)
    ref = evidence.laplace_log_evidence(fit.model, nn.BCEWithLogitsLoss(), (X, y), 0.5)
    for lam in (np.float32(0.5), np.float64(0.5)):
        ev = evidence.laplace_log_evidence(fit.model, nn.BCEWithLogitsLoss(), (X, y), lam)
        assert ev.log_evidence == ref.log_evidence
    assert evidence.per_parameter_precision(net, np.float32(2.0), {"0.bias": np.int64(3)}
                                            ).tolist() == [2.0, 2.0, 2.0, 6.0]


def test_precisions_are_built_on_the_model_device():
    """Issue 10 #15: λ and the identity were built on the CPU whatever the model's device."""
    meta = nn.Linear(2, 1).to("meta")
    lam = evidence.per_parameter_precision(meta, 2.0)
    assert lam.device.type == "meta" and lam.dtype == torch.float64 and lam.shape == (3,)
    v = evidence._precision_vector(0.5, 3, device="meta")
    assert v.device.type == "meta" and v.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_evidence_on_gpu_equals_cpu():
    X, y = _logistic()
    net = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    fit = evidence.fit_map(net, nn.BCEWithLogitsLoss(), (X, y), 1.0)
    ref = evidence.laplace_log_evidence(fit.model, nn.BCEWithLogitsLoss(), (X, y), 1.0)
    ev = evidence.laplace_log_evidence(fit.model.cuda(), nn.BCEWithLogitsLoss(),
                                       (X.cuda(), y.cuda()), 1.0)
    assert ev.log_evidence == pytest.approx(ref.log_evidence, abs=1e-9)


def test_per_parameter_precision_refusals():
    net = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="unknown parameter"):
        evidence.per_parameter_precision(net, 1.0, {"weights": 2.0})
    X, y = torch.randn(5, 2), torch.randn(5, 1)
    with pytest.raises(ValueError, match="vector of 3"):
        evidence.map_objective(net, evidence.GaussianNLLLoss(), (X, y), [1.0, 2.0])
    with pytest.raises(ValueError, match="positive finite"):
        evidence.map_objective(net, evidence.GaussianNLLLoss(), (X, y), [1.0, 2.0, 0.0])


# --- Gauss–Newton Laplace evidence, Laplace integrals, importance / annealed sampling ---------------------


def _logistic_problem(N=30, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.3 * torch.randn(N, generator=g, dtype=torch.float64) > 0).double()
    return X, y


def _oracle_ggn(model, X):
    """J^T diag(σ(1−σ)) J of the summed BCE loss, from torch.func Jacobians (float64)."""
    from torch.func import functional_call, jacrev

    params = {k: v.detach() for k, v in model.named_parameters()}
    f = lambda p: functional_call(model, p, (X,))  # noqa: E731
    J = jacrev(f)(params)
    J = torch.cat([J[k].reshape(len(X), -1) for k in params], 1)
    s = torch.sigmoid(f(params))
    return J.T @ (J * (s * (1 - s))[:, None])


def test_ggn_evidence_against_dense_oracle_on_a_relu_net():
    """Eigenvalues of N·G + λI equal those of the oracle J^T Λ J + λI, and the evidence is
    −C(ω₀) − ½ Σ ln(g_i/λ) with them."""
    X, y = _logistic_problem()
    loss = nn.BCEWithLogitsLoss()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1), nn.Flatten(0)).double()
    fit = evidence.fit_map(net, loss, (X, y), 1.0, max_iter=200)
    snap = snapshot(fit.model)
    ev = evidence.laplace_ggn_log_evidence(fit.model, loss, (X, y), 1.0, grad_tol=1e3)
    assert_unperturbed(fit.model, snap)
    G = _oracle_ggn(fit.model, X) + torch.eye(21, dtype=torch.float64)
    eig = torch.linalg.eigvalsh(G).numpy()
    np.testing.assert_allclose(ev.eigenvalues, eig, rtol=1e-10, atol=1e-12)
    C = evidence.map_objective(fit.model, loss, (X, y), 1.0)
    assert ev.log_evidence == pytest.approx(-C - 0.5 * np.log(eig).sum(), rel=1e-12)
    assert ev.method == "ggn"


def test_ggn_equals_hessian_evidence_for_logistic_regression():
    """For a model linear in its parameters the dropped term is zero: GGN = Hessian exactly."""
    X, y = _logistic_problem()
    loss = nn.BCEWithLogitsLoss()
    net = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)).double()
    fit = evidence.fit_map(net, loss, (X, y), 0.5)
    a = evidence.laplace_log_evidence(fit.model, loss, (X, y), 0.5)
    b = evidence.laplace_ggn_log_evidence(fit.model, loss, (X, y), 0.5)
    assert b.log_evidence == pytest.approx(a.log_evidence, abs=1e-10)
    with pytest.raises(ValueError, match="not a minimum"):
        evidence.laplace_ggn_log_evidence(net, loss, (X, y), 0.5)


def _log_joint(X, y, lam):
    Xb = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], 1)
    p = Xb.shape[1]

    def f(w):
        z = w @ Xb.T
        ll = -(nn.functional.softplus(-z) * y + nn.functional.softplus(z) * (1 - y)).sum(-1)
        return ll + 0.5 * p * math.log(lam / (2 * math.pi)) - 0.5 * lam * (w * w).sum(-1)
    return f


def test_laplace_log_integral_equals_laplace_log_evidence():
    """The generic Laplace integral of the log joint is the library's Laplace evidence."""
    X, y = _logistic_problem()
    loss = nn.BCEWithLogitsLoss()
    fit = evidence.fit_map(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), loss, (X, y), 2.0, grad_tol=1e-10)
    ev = evidence.laplace_log_evidence(fit.model, loss, (X, y), 2.0)
    li = evidence.laplace_log_integral(_log_joint(X, y, 2.0), torch.zeros(4, dtype=torch.float64))
    assert li.log_integral == pytest.approx(ev.log_evidence, abs=1e-8)
    # exact for a Gaussian density
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    r = evidence.laplace_log_integral(lambda x: -0.5 * x @ A @ x + 3.0, torch.ones(2, dtype=torch.float64))
    assert r.log_integral == pytest.approx(3.0 + math.log(2 * math.pi) - 0.5 * math.log(float(torch.det(A))), abs=1e-10)
    with pytest.raises(ValueError, match="x0"):
        evidence.laplace_log_integral(lambda x: -x.sum(), torch.ones(2, 2))


def test_grid_integral_is_exact_for_gaussians_and_change_of_variables_holds():
    """Trapezoid rule on a Gaussian (1-D and 2-D) to 1e-9, and the same integral in nonlinear
    coordinates ω = h(η) with the Jacobian carried along, to quadrature accuracy."""
    from flatness.reparametrize import RadialMap

    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    f = lambda x: -0.5 * ((x @ A) * x).sum(1)  # noqa: E731
    exact = math.log(2 * math.pi) - 0.5 * math.log(float(torch.det(A)))
    assert evidence.grid_log_integral(f, [-12, -12], [12, 12], 601) == pytest.approx(exact, abs=1e-9)
    X, y = _logistic_problem(N=15, d=1)
    g = _log_joint(X, y, 1.0)
    h = RadialMap(center=0.0, a=1.0, b=0.25)
    g_eta = evidence.reparametrized_log_density(g, h.forward, lambda e: torch.log(h.derivative(e)).sum(-1))
    z_omega = evidence.grid_log_integral(g, [-10, -10], [10, 10], 1201)
    z_eta = evidence.grid_log_integral(g_eta, [-3, -3], [3, 3], 1201)
    assert z_eta == pytest.approx(z_omega, abs=1e-5)
    with pytest.raises(ValueError, match="low, high"):
        evidence.grid_log_integral(f, [1.0], [0.0])


def _quadrature_2d(X, y, lam):
    return evidence.grid_log_integral(_log_joint(X, y, lam), [-12, -12], [12, 12], 1201)


@pytest.mark.parametrize("df", [5.0, math.inf])
def test_importance_sampling_within_four_sigma_of_quadrature(df):
    """Two-parameter logistic regression: IS from the Laplace Gaussian (or t) agrees with a dense
    quadrature within 4 standard errors (its own delta-method error)."""
    X, y = _logistic_problem(N=15, d=1)
    f = _log_joint(X, y, 1.0)
    li = evidence.laplace_log_integral(f, torch.zeros(2, dtype=torch.float64))
    cov = torch.linalg.inv(-torch.autograd.functional.hessian(f, li.mode))
    est = evidence.importance_log_evidence(f, li.mode, cov, num_samples=40_000, df=df, seed=1)
    assert abs(est.log_evidence - _quadrature_2d(X, y, 1.0)) < 4 * est.stderr
    assert est.ess > 1000
    with pytest.raises(ValueError, match="covariance"):
        evidence.importance_log_evidence(f, li.mode, -cov)


def test_annealed_importance_sampling_within_four_sigma_of_quadrature():
    """AIS (elliptical slice steps) from a deliberately poor reference — the prior — agrees with
    quadrature within 4 standard errors on a separable problem with a weak prior."""
    X = torch.tensor([[-2.0], [-1.0], [-0.5], [0.5], [1.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.float64)
    lam = 0.05
    f = _log_joint(X, y, lam)
    exact = evidence.grid_log_integral(f, [-40, -40], [40, 40], 1601)
    est = evidence.annealed_log_evidence(f, torch.zeros(2, dtype=torch.float64),
                                         torch.eye(2, dtype=torch.float64) / lam, num_chains=200,
                                         num_temperatures=200, seed=0)
    assert abs(est.log_evidence - exact) < 4 * est.stderr
    with pytest.raises(ValueError, match="min_temperature"):
        evidence.annealed_log_evidence(f, torch.zeros(2), torch.eye(2), min_temperature=1.5)


@pytest.mark.parametrize("kind", ["bce", "ce"])
def test_dense_ggn_equals_curvlinops_ggn(kind):
    """The per-sample-Jacobian GGN equals curvlinops' GGNLinearOperator applied to the identity,
    for a one-logit and a three-class ReLU network."""
    import warnings

    from curvlinops import GGNLinearOperator

    X, y = _logistic_problem()
    out, loss = (1, nn.BCEWithLogitsLoss()) if kind == "bce" else (3, nn.CrossEntropyLoss())
    y = y if kind == "bce" else (X[:, 1] > 0).long() + (X[:, 2] > 0).long()
    torch.manual_seed(1)
    layers = [nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, out)] + ([nn.Flatten(0)] if kind == "bce" else [])
    net = nn.Sequential(*layers).double()
    G = evidence._dense_ggn_of_mean_loss(net, loss, [(X[:17], y[:17]), (X[17:], y[17:])], None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = GGNLinearOperator(net, loss, list(net.parameters()), [(X, y)], check_deterministic=False)
        ref = op @ torch.eye(G.shape[0], dtype=torch.float64)
    torch.testing.assert_close(G, (ref + ref.T) / 2, rtol=1e-10, atol=1e-12)
