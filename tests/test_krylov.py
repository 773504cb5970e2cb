import numpy as np
import pytest
import torch
from oracles import oracle_hessian

from flatness import curvature, operators
from flatness.krylov import krylov_trace, lanczos, ritz_error_bounds
from flatness.models import cnn1d, mlp


def _symmetric(n=60, seed=0, outliers=(9.0, 7.0, 5.0, 4.5, 4.0)):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    bulk = 0.3 * torch.randn(n - len(outliers), generator=g, dtype=torch.float64)
    evals = torch.cat([torch.tensor(outliers, dtype=torch.float64), bulk])
    return (Q * evals) @ Q.T, torch.sort(evals, descending=True).values


@pytest.mark.parametrize("k", [1, 3, 5])
def test_lanczos_matches_dense_eigenvalues(k):
    A, evals = _symmetric()
    res = lanczos(lambda v: A @ v, A.shape[0], k=k, tol=1e-10, return_eigenvectors=True)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, evals[:k].numpy(), rtol=1e-8)
    V = torch.from_numpy(res.eigenvectors)
    torch.testing.assert_close(A @ V, V * torch.from_numpy(res.eigenvalues), atol=1e-4, rtol=0)
    torch.testing.assert_close(V.T @ V, torch.eye(k, dtype=torch.float64), atol=1e-10, rtol=0)


def test_lanczos_requested_accuracy_costs_fewer_products():
    A, evals = _symmetric(200)
    loose = lanczos(lambda v: A @ v, 200, tol=1e-3)
    tight = lanczos(lambda v: A @ v, 200, tol=1e-10)
    assert loose.converged and tight.converged and loose.products < tight.products
    assert abs(loose.eigenvalues[0] - evals[0]) <= 1e-3 * evals[0]
    assert loose.error_bounds[0] <= 1e-3 * abs(loose.eigenvalues[0])


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
    res = lanczos(lambda v: A @ v, 4, k=2, tol=1e-12, v0=v0)  # restarts after one step
    np.testing.assert_allclose(res.eigenvalues, [3.0, 2.0], rtol=1e-10)


def test_lanczos_budget_exhausted_is_reported():
    A, _ = _symmetric(200)
    res = lanczos(lambda v: A @ v, 200, k=5, tol=1e-14, max_products=6)
    assert not res.converged and res.products == 6


def test_ritz_error_bounds_are_bounds_on_dense():
    A, evals = _symmetric(80, seed=3)
    res = lanczos(lambda v: A @ v, 80, k=3, tol=1e-4)
    true = np.abs(res.eigenvalues - evals[:3].numpy())
    assert np.all(true <= res.residuals + 1e-12)
    assert ritz_error_bounds(np.array([2.0]), np.array([0.5]), 0.1).tolist() == [0.05]


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 0}, "dim"), ({"k": 0}, "k"), ({"tol": 0.0}, "tol"), ({"which": "BE"}, "which"),
    ({"max_products": 0}, "max_products"), ({"v0": torch.zeros(10)}, "v0"),
    ({"v0": torch.ones(3)}, "v0")])
def test_lanczos_refusals(kwargs, match):
    args = {"dim": 10, **kwargs}
    dim = args.pop("dim")
    with pytest.raises(ValueError, match=match):
        lanczos(lambda v: v, dim, **args)


def test_krylov_trace_is_unbiased_and_beats_hutchinson_on_outliers():
    A, evals = _symmetric(300, outliers=(20.0, 16.0, 12.0, 8.0, 4.0))
    exact = float(evals.sum())
    est = np.array([krylov_trace(lambda v: A @ v, 300, 30, seed=s) for s in range(40)])
    hutch = np.array([krylov_trace(lambda v: A @ v, 300, 30, krylov_fraction=0.0, seed=s)
                      for s in range(40)])
    assert abs(est.mean() - exact) < 3 * est.std() / np.sqrt(40) + 1e-9
    assert np.sqrt(np.mean((est - exact) ** 2)) < 0.5 * np.sqrt(np.mean((hutch - exact) ** 2))


def test_krylov_trace_exact_at_full_budget_and_refusals():
    A, evals = _symmetric(30)
    assert krylov_trace(lambda v: A @ v, 30, 30) == pytest.approx(float(evals.sum()), rel=1e-12)
    for kwargs, match in (({"num_matvecs": 0}, "num_matvecs"), ({"num_matvecs": 1}, "num_matvecs"),
                          ({"num_matvecs": 5, "krylov_fraction": 1.0}, "krylov_fraction")):
        with pytest.raises(ValueError, match=match):
            krylov_trace(lambda v: A @ v, 30, **kwargs)


def test_top_eigenvalues_lanczos_and_eigsh_agree_with_dense(tiny):
    model, loss, data = tiny
    evals = torch.linalg.eigvalsh(oracle_hessian(model, loss, data)).numpy()[::-1]
    op = operators.HessianOperator(model, loss, data, dtype=torch.float64)
    for method in ("lanczos", "eigsh"):
        res = curvature.top_eigenvalues(model, loss, data, k=3, tol=1e-8, method=method,
                                        operator=op, return_eigenvectors=True)
        assert res.converged
        np.testing.assert_allclose(res.eigenvalues, evals[:3], rtol=1e-6)
        assert res.eigenvectors.shape == (evals.size, 3)
    loose = curvature.top_eigenvalues(model, loss, data, k=1, tol=1e-3, operator=op)
    tight = curvature.top_eigenvalues(model, loss, data, k=1, tol=1e-10, operator=op)
    assert abs(loose.lambda_max - evals[0]) <= 1e-3 * evals[0]
    assert loose.products < tight.products
    for kwargs in ({"method": "power"}, {"which": "BE"}):
        with pytest.raises(ValueError, match=list(kwargs)[0]):
            curvature.top_eigenvalues(model, loss, data, operator=op, **kwargs)


def test_hessian_trace_krylov_against_dense(tiny):
    model, loss, data = tiny
    exact = float(torch.trace(oracle_hessian(model, loss, data)))
    op = operators.HessianOperator(model, loss, data, dtype=torch.float64)
    est = [curvature.hessian_trace(model, loss, data, num_matvecs=20, seed=s, operator=op)
           for s in range(20)]
    assert np.mean(est) == pytest.approx(exact, rel=0.1)
    assert op.products == 400


def test_batched_products_match_dense(tiny):
    model, loss, data = tiny
    op = operators.HessianOperator(model, loss, data, dtype=torch.float64)
    H = oracle_hessian(model, loss, data)
    V = torch.randn(H.shape[0], 7, dtype=torch.float64)
    torch.testing.assert_close(op @ V, H @ V, rtol=1e-10, atol=1e-12)
    assert op.products == 7


def test_piecewise_linear_trace_is_exact_on_dense_oracles(tiny):
    from flatness.exact_trace import piecewise_linear_trace

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

    model, loss, data = tiny
    with pytest.raises(ValueError, match="piecewise linear"):
        piecewise_linear_trace(mlp(5, (6,), 3, activation="tanh"), loss, data)
    with pytest.raises(ValueError, match="loss_fn"):
        piecewise_linear_trace(model, torch.nn.MSELoss(), data)
    with pytest.raises(ValueError, match="chunk"):
        piecewise_linear_trace(model, loss, data, chunk=0)
