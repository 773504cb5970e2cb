import numpy as np
import pytest
import torch
from oracles import oracle_hessian

from flatness import curvature, operators
from flatness.krylov import (
    EigenResult,
    krylov_trace,
    lanczos,
    lanczos_decomposition,
    random_vector,
    ritz_error_estimates,
    slq_quadrature,
)


def _symmetric(n=60, seed=0, outliers=(9.0, 7.0, 5.0, 4.5, 4.0)):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    bulk = 0.3 * torch.randn(n - len(outliers), generator=g, dtype=torch.float64)
    evals = torch.cat([torch.tensor(outliers, dtype=torch.float64), bulk])
    return (Q * evals) @ Q.T, torch.sort(evals, descending=True).values


def _hutchinson_variance(A):
    """Exact variance of one Rademacher probe vᵀAv: 2(‖A‖²_F − Σ A_ii²)."""
    return 2 * float((A ** 2).sum() - (torch.diagonal(A) ** 2).sum())


# ------------------------------------------------------------------ the Lanczos routine

def test_decomposition_is_an_orthonormal_projection():
    A, evals = _symmetric(30)
    dec = lanczos_decomposition(A, 30)
    Q = dec.basis
    assert dec.size == 30 and dec.products == 30
    torch.testing.assert_close(Q.T @ Q, torch.eye(30, dtype=torch.float64), atol=1e-12, rtol=0)
    np.testing.assert_allclose(dec.projected_matrix(), (Q.T @ A @ Q).numpy(), atol=1e-11)
    np.testing.assert_allclose(np.linalg.eigvalsh(dec.tridiagonal()), np.sort(evals.numpy()),
                               atol=1e-11)


def test_decomposition_breakdown_stop_and_restart_with_exact_multiplicities():
    d = torch.tensor([3.0] * 4 + [2.0] * 4 + [1.0] * 4, dtype=torch.float64)
    A = torch.diag(d)
    stop = lanczos_decomposition(A, 12, breakdown="stop")
    assert stop.size == 3 and stop.invariant and not stop.restarts  # 3 distinct eigenvalues
    np.testing.assert_allclose(np.linalg.eigvalsh(stop.tridiagonal()), [1.0, 2.0, 3.0],
                               atol=1e-12)
    full = lanczos_decomposition(A, 12, breakdown="restart")
    assert full.size == 12 and full.restarts == [3, 6, 9]
    assert np.all(full.betas[[2, 5, 8]] == 0)
    torch.testing.assert_close(full.basis.T @ full.basis, torch.eye(12, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    np.testing.assert_allclose(np.linalg.eigvalsh(full.projected_matrix()),
                               np.sort(d.numpy()), atol=1e-12)


def test_requested_restart_keeps_the_projection_exact():
    A, _ = _symmetric(40, seed=2)
    dec = lanczos_decomposition(A, 20, callback=lambda s: "restart" if s.size in (6, 13) else None)
    assert dec.restarts == [6, 13] and dec.betas[5] == 0 and dec.betas[12] == 0
    Q = dec.basis
    T = dec.projected_matrix()
    np.testing.assert_allclose(T, (Q.T @ A @ Q).numpy(), atol=1e-11)
    R, cols = dec.residual_matrix()
    full = A @ Q - Q @ torch.from_numpy(T)
    torch.testing.assert_close(full[:, cols], R, atol=1e-11, rtol=0)
    others = [j for j in range(20) if j not in cols]
    assert float(full[:, others].abs().max()) < 1e-11


def test_one_start_vector_convention():
    g = torch.Generator().manual_seed(5)
    torch.testing.assert_close(random_vector(7, 5), torch.randn(7, generator=g, dtype=torch.float64))
    r = random_vector(1000, 1, "rademacher")
    assert r.dtype == torch.float64 and set(r.unique().tolist()) == {-1.0, 1.0}
    A, _ = _symmetric(30)
    a = lanczos_decomposition(A, 5, seed=3)
    b = lanczos_decomposition(A, 5, v0=random_vector(30, 3))
    torch.testing.assert_close(a.basis, b.basis)
    with pytest.raises(ValueError, match="distribution"):
        random_vector(3, 0, "uniform")
    with pytest.raises(ValueError, match="breakdown"):
        lanczos_decomposition(A, 5, breakdown="ignore")


# ------------------------------------------------------------------ the eigensolver

@pytest.mark.parametrize("k", [1, 3, 5])
def test_lanczos_matches_dense_eigenvalues(k):
    A, evals = _symmetric()
    res = lanczos(lambda v: A @ v, A.shape[0], k=k, tol=1e-10, return_eigenvectors=True)
    assert isinstance(res, EigenResult) and res.converged
    np.testing.assert_allclose(res.eigenvalues, evals[:k].numpy(), rtol=1e-8)
    V = torch.from_numpy(res.eigenvectors)
    torch.testing.assert_close(A @ V, V * torch.from_numpy(res.eigenvalues), atol=1e-4, rtol=0)
    torch.testing.assert_close(V.T @ V, torch.eye(k, dtype=torch.float64), atol=1e-10, rtol=0)


def test_lanczos_finds_repeated_eigenvalues():
    """Issue 10: the old solver returned [5, 4.7] (converged) for a double eigenvalue 5."""
    d = torch.cat([torch.tensor([5.0, 5.0]), torch.ones(50), 0.1 * torch.arange(48)]).double()
    exact = np.sort(d.numpy())[::-1]
    for k in (2, 3, 4):
        res = lanczos(lambda v: d * v, 100, k=k, tol=1e-6)
        assert res.converged
        np.testing.assert_allclose(res.eigenvalues, exact[:k], rtol=1e-6)
    A = torch.diag(torch.tensor([2.0] * 3 + [1.0] * 7, dtype=torch.float64))
    res = lanczos(A, k=3, tol=1e-8)  # the Krylov space is invariant after two steps
    assert res.converged and np.allclose(res.eigenvalues, [2.0, 2.0, 2.0], rtol=1e-10)


def test_lanczos_does_not_report_convergence_a_restart_would_change():
    d = torch.cat([torch.tensor([5.0, 5.0]), torch.ones(50), 0.1 * torch.arange(48)]).double()
    budget = 35  # the first Krylov space has converged to [5, 4.7] here, the check has not ended
    res = lanczos(lambda v: d * v, 100, k=2, tol=1e-6, max_products=budget)
    assert not res.converged


def test_lanczos_requested_accuracy_costs_fewer_products():
    A, evals = _symmetric(200)
    loose = lanczos(lambda v: A @ v, 200, tol=1e-3)
    tight = lanczos(lambda v: A @ v, 200, tol=1e-10)
    assert loose.converged and tight.converged and loose.products < tight.products
    assert abs(loose.eigenvalues[0] - evals[0]) <= 1e-3 * evals[0]
    assert loose.error_estimates[0] <= 1e-3 * abs(loose.eigenvalues[0])


def test_lanczos_smallest_and_largest_magnitude():
    A, evals = _symmetric()
    A = -A  # most negative eigenvalue now has the largest magnitude
    sa = lanczos(lambda v: A @ v, 60, k=2, tol=1e-10, which="SA")
    lm = lanczos(lambda v: A @ v, 60, k=2, tol=1e-10, which="LM")
    np.testing.assert_allclose(sa.eigenvalues, -evals[:2].numpy(), rtol=1e-8)
    np.testing.assert_allclose(lm.eigenvalues, -evals[:2].numpy(), rtol=1e-8)


def test_lanczos_survives_an_invariant_start_subspace():
    A = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    v0 = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # an eigenvector, not the top one
    for k in (1, 2):
        res = lanczos(lambda v: A @ v, 4, k=k, tol=1e-12, v0=v0)  # restarts after one step
        assert res.converged
        np.testing.assert_allclose(res.eigenvalues, [3.0, 2.0][:k], rtol=1e-10)


def test_lanczos_budget_exhausted_is_reported():
    A, _ = _symmetric(200)
    res = lanczos(lambda v: A @ v, 200, k=5, tol=1e-14, max_products=6)
    assert not res.converged and res.products == 6


def test_error_estimates_against_the_dense_eigenvalues():
    """Residuals bound the distance to the spectrum; Kato–Temple with the true gap bounds the
    error; the estimates (with estimated gaps) cover the true error."""
    A, evals = _symmetric(80, seed=3)
    ev = evals.numpy()
    for tol in (1e-2, 1e-4):
        res = lanczos(lambda v: A @ v, 80, k=3, tol=tol, return_eigenvectors=True)
        V = torch.from_numpy(res.eigenvectors)
        true_res = torch.linalg.vector_norm(A @ V - V * torch.from_numpy(res.eigenvalues), dim=0)
        np.testing.assert_allclose(res.residuals, true_res.numpy(), rtol=1e-6, atol=1e-12)
        for i, theta in enumerate(res.eigenvalues):
            dist = np.abs(ev - theta)
            j = int(np.argmin(dist))
            gap = np.delete(dist, j).min()  # the true distance to the rest of the spectrum
            r = res.residuals[i]
            assert dist[j] <= r + 1e-14
            assert dist[j] <= r ** 2 / gap + 1e-14
            assert dist[j] <= res.error_estimates[i] + 1e-14
            assert res.error_estimates[i] <= r
    assert ritz_error_estimates(np.array([2.0]), np.array([0.05])).tolist() == [0.05]


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 0}, "dim"), ({"k": 0}, "k"), ({"tol": 0.0}, "tol"), ({"which": "BE"}, "which"),
    ({"max_products": 0}, "max_products"), ({"v0": torch.zeros(10)}, "v0"),
    ({"v0": torch.ones(3)}, "v0")])
def test_lanczos_refusals(kwargs, match):
    args = {"dim": 10, **kwargs}
    dim = args.pop("dim")
    with pytest.raises(ValueError, match=match):
        lanczos(lambda v: v, dim, **args)


def test_lambda_max_of_an_empty_result_is_refused():
    res = EigenResult(np.array([]), None, np.array([]), np.array([]), 3, False)
    with pytest.raises(ValueError, match="eigenvalues"):
        res.lambda_max


# ------------------------------------------------------------------ operators in

def test_every_operator_form_gives_the_same_result():
    A, evals = _symmetric(40)

    class Foreign:  # anything with .shape and @ on torch tensors (a curvlinops operator)
        shape = (40, 40)
        dtype = torch.float64
        device = torch.device("cpu")

        def __matmul__(self, X):
            return A @ X

    ref = lanczos(A, k=2, tol=1e-10).eigenvalues
    for op in (A.numpy(), operators.as_operator(lambda v: A @ v, 40), Foreign(),
               operators.MatrixOperator(A)):
        np.testing.assert_allclose(lanczos(op, k=2, tol=1e-10).eigenvalues, ref, rtol=1e-12)
    with pytest.raises(ValueError, match="dim"):
        operators.as_operator(lambda v: v)
    with pytest.raises(ValueError, match="square"):
        operators.as_operator(torch.ones(2, 3))
    with pytest.raises(TypeError, match="operator"):
        operators.as_operator("matrix")


# ------------------------------------------------------------------ trace and quadrature

def test_krylov_trace_is_unbiased_within_its_variance_bound():
    A, evals = _symmetric(300, outliers=(20.0, 16.0, 12.0, 8.0, 4.0))
    exact = float(evals.sum())
    R, m = 40, 30
    hutch = np.array([krylov_trace(A, num_matvecs=m, krylov_fraction=0.0, seed=s)
                      for s in range(R)])
    assert abs(hutch.mean() - exact) <= 5 * np.sqrt(_hutchinson_variance(A) / (m * R))
    est = np.array([krylov_trace(A, num_matvecs=m, seed=s) for s in range(R)])
    m2 = m - int(np.ceil(0.3 * m))
    # given Q the remainder is Hutchinson on B = PAP, variance ≤ 2‖B‖²_F/m2 ≤ 2‖A‖²_F/m2
    bound = 2 * float((A ** 2).sum()) / m2
    assert abs(est.mean() - exact) <= 5 * np.sqrt(bound / R)
    assert np.mean((est - exact) ** 2) < 0.25 * np.mean((hutch - exact) ** 2)


def test_krylov_trace_exact_at_full_budget_and_refusals():
    A, evals = _symmetric(30)
    assert krylov_trace(lambda v: A @ v, 30, 30) == pytest.approx(float(evals.sum()), rel=1e-12)
    for kwargs, match in (({"num_matvecs": 0}, "num_matvecs"), ({"num_matvecs": 1}, "num_matvecs"),
                          ({"num_matvecs": 5, "krylov_fraction": 1.0}, "krylov_fraction")):
        with pytest.raises(ValueError, match=match):
            krylov_trace(lambda v: A @ v, 30, **kwargs)


def test_slq_quadrature_identities():
    A, evals = _symmetric(50)
    nodes, weights, norms2, products = slq_quadrature(A, 50, 3, seed=4)
    assert products == 150
    gen = torch.Generator().manual_seed(4)
    w_, V = torch.linalg.eigh(A)
    expA = (V * torch.exp(w_ / 9)) @ V.T
    for t, w, p in zip(nodes, weights, norms2):
        v = random_vector(50, gen, "rademacher")
        assert p == 50 and w.sum() == pytest.approx(1.0, abs=1e-12)
        # a full basis: the quadrature is exact for every f
        assert p * float(np.sum(w * np.exp(t / 9))) == pytest.approx(float(v @ expA @ v), rel=1e-9)
    # the first moment is vᵀAv/‖v‖² for any number of steps: Hutchinson, k-σ from its exact variance
    R = 200
    nodes, weights, norms2, _ = slq_quadrature(A, 3, R, seed=0)
    moments = np.array([p * float(np.sum(w * t)) for t, w, p in zip(nodes, weights, norms2)])
    assert abs(moments.mean() - float(evals.sum())) <= 5 * np.sqrt(_hutchinson_variance(A) / R)


# ------------------------------------------------------------------ on a network (dense oracle)

def test_top_eigenvalues_lanczos_and_eigsh_agree_with_dense(tiny):
    model, loss, data = tiny
    evals = torch.linalg.eigvalsh(oracle_hessian(model, loss, data)).numpy()[::-1]
    op = operators.HessianOperator(model, loss, data, dtype=torch.float64)
    for method in ("lanczos", "eigsh"):
        res = curvature.top_eigenvalues(model, loss, data, k=3, tol=1e-8, method=method,
                                        operator=op, return_eigenvectors=True)
        assert res.converged and res.method == method
        np.testing.assert_allclose(res.eigenvalues, evals[:3], rtol=1e-6)
        assert res.eigenvectors.shape == (evals.size, 3)
        assert np.all(np.abs(res.eigenvalues - evals[:3]) <= res.residuals + 1e-12)
    loose = curvature.top_eigenvalues(model, loss, data, k=1, tol=1e-3, operator=op)
    tight = curvature.top_eigenvalues(model, loss, data, k=1, tol=1e-10, operator=op)
    assert abs(loose.lambda_max - evals[0]) <= 1e-3 * evals[0]
    assert loose.products < tight.products
    for kwargs in ({"method": "power"}, {"which": "BE"}):
        with pytest.raises(ValueError, match=list(kwargs)[0]):
            curvature.top_eigenvalues(model, loss, data, operator=op, **kwargs)


def test_eigsh_with_a_tiny_maxiter_is_a_clear_error(tiny):
    model, loss, data = tiny
    op = operators.HessianOperator(model, loss, data, dtype=torch.float64)
    with pytest.raises(ValueError, match="maxiter"):
        curvature.top_eigenvalues(model, loss, data, k=5, tol=1e-14, method="eigsh", maxiter=1,
                                  ncv=11, operator=op)


def test_hessian_trace_krylov_against_dense(tiny):
    model, loss, data = tiny
    H = oracle_hessian(model, loss, data)
    exact = float(torch.trace(H))
    op = operators.HessianOperator(model, loss, data, dtype=torch.float64)
    R, m = 20, 20
    est = np.array([curvature.hessian_trace(model, loss, data, num_matvecs=m, seed=s, operator=op)
                    for s in range(R)])
    m2 = m - int(np.ceil(0.3 * m))
    assert abs(est.mean() - exact) <= 5 * np.sqrt(2 * float((H ** 2).sum()) / m2 / R)
    assert op.products == R * m


def test_batched_products_match_dense(tiny):
    model, loss, data = tiny
    op = operators.HessianOperator(model, loss, data, dtype=torch.float64)
    H = oracle_hessian(model, loss, data)
    V = torch.randn(H.shape[0], 7, dtype=torch.float64)
    torch.testing.assert_close(op @ V, H @ V, rtol=1e-10, atol=1e-12)
    assert op.products == 7


def test_piecewise_linear_trace_is_exact_on_dense_oracles(tiny):
    from flatness.exact_trace import piecewise_linear_trace
    from flatness.models import cnn1d

    model, loss, data = tiny
    exact = float(torch.trace(oracle_hessian(model, loss, data)))
    assert piecewise_linear_trace(model, loss, data, dtype=torch.float64) == pytest.approx(exact, rel=1e-10)
    assert curvature.hessian_trace(model, loss, data, method="exact",
                                   dtype=torch.float64) == pytest.approx(exact, rel=1e-10)
    torch.manual_seed(1)
    cnn = cnn1d(channels=(2,), kernel_size=3, length=8, num_classes=3)
    X, y = torch.randn(12, 1, 8), torch.randint(0, 3, (12,))
    exact = float(torch.trace(oracle_hessian(cnn, loss, (X, y))))
    assert piecewise_linear_trace(cnn, loss, (X, y), chunk=5,
                                  dtype=torch.float64) == pytest.approx(exact, rel=1e-10)


def test_piecewise_linear_trace_refusals(tiny):
    from flatness.exact_trace import piecewise_linear_trace
    from flatness.models import mlp

    model, loss, data = tiny
    with pytest.raises(ValueError, match="piecewise linear"):
        piecewise_linear_trace(mlp(5, (6,), 3, activation="tanh"), loss, data)
    with pytest.raises(ValueError, match="loss_fn"):
        piecewise_linear_trace(model, torch.nn.MSELoss(), data)
    with pytest.raises(ValueError, match="chunk"):
        piecewise_linear_trace(model, loss, data, chunk=0)
