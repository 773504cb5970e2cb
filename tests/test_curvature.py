import copy

import numpy as np
import pytest
import torch
from oracles import oracle_hessian
from torch.utils.data import DataLoader, TensorDataset

from flatness import curvature, operators
from flatness.models import cnn1d, mlp


def test_dense_hessian_matches_oracle(tiny):
    model, loss, data = tiny
    H = operators.dense_hessian(model, loss, data)
    assert H.dtype == torch.float64
    torch.testing.assert_close(H, oracle_hessian(model, loss, data), rtol=1e-10, atol=1e-12)


def test_dense_hessian_cnn_matches_oracle():
    torch.manual_seed(1)
    model = cnn1d(channels=(2,), kernel_size=3, length=8, num_classes=3)
    X, y = torch.randn(12, 1, 8), torch.randint(0, 3, (12,))
    loss = torch.nn.CrossEntropyLoss()
    torch.testing.assert_close(operators.dense_hessian(model, loss, (X, y)),
                               oracle_hessian(model, loss, (X, y)), rtol=1e-10, atol=1e-12)


def test_batched_loader_is_weighted_by_batch_size(tiny):
    model, loss, (X, y) = tiny
    loader = DataLoader(TensorDataset(X, y), batch_size=15)  # 15, 15, 10: unequal batches
    H = operators.dense_hessian(model, loss, loader)
    torch.testing.assert_close(H, oracle_hessian(model, loss, (X, y)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("retain", [True, False])
def test_operator_products(tiny, retain):
    model, loss, data = tiny
    op = operators.HessianOperator(model, loss, data, dtype=torch.float64, retain=retain)
    H = oracle_hessian(model, loss, data)
    V = torch.randn(H.shape[0], 3, dtype=torch.float64)
    torch.testing.assert_close(op @ V, H @ V, rtol=1e-10, atol=1e-12)
    assert op.products == 3


def test_top_eigenvalues_match_dense(tiny):
    model, loss, data = tiny
    evals = torch.linalg.eigvalsh(oracle_hessian(model, loss, data)).numpy()[::-1]
    res = curvature.top_eigenvalues(model, loss, data, k=4, dtype=torch.float64,
                                    return_eigenvectors=True)
    assert res.converged and res.products > 0
    np.testing.assert_allclose(res.eigenvalues, evals[:4], rtol=1e-6, atol=1e-9)
    assert np.all(np.diff(res.eigenvalues) <= 0)
    assert res.eigenvectors.shape == (evals.size, 4)


def _probe_variance(A):
    """Exact variance of one Rademacher probe vᵀAv: 2(‖A‖²_F − Σ A_ii²)."""
    return 2 * float((A ** 2).sum() - (torch.diagonal(A) ** 2).sum())


def test_trace_estimators_against_dense(tiny):
    model, loss, data = tiny
    H = oracle_hessian(model, loss, data)
    exact = float(torch.trace(H))
    P = H.shape[0]
    # with as many products as dimensions the trace is exact
    assert curvature.hessian_trace(model, loss, data, num_matvecs=P, dtype=torch.float64) == pytest.approx(exact, rel=1e-9)
    op = operators.HessianOperator(model, loss, data, dtype=torch.float64)
    R, m = 20, 30
    fro2 = float((H ** 2).sum())
    # per call: Hutchinson's exact variance over m probes; Hutch++ given Q is Hutchinson on
    # (I-QQᵀ)H(I-QQᵀ) with m/3 probes (≤ 2‖H‖²_F/(m/3)); XTrace averages such terms (≤ 2‖H‖²_F)
    variance = {"hutchinson": _probe_variance(H) / m, "hutch++": 2 * fro2 / (m // 3),
                "xtrace": 2 * fro2}
    for method, var in variance.items():
        est = np.array([curvature.hessian_trace(model, loss, data, num_matvecs=m, method=method,
                                                seed=s, operator=op) for s in range(R)])
        assert abs(est.mean() - exact) <= 5 * np.sqrt(var / R), method


def test_frobenius_against_dense(tiny):
    model, loss, data = tiny
    H = oracle_hessian(model, loss, data)
    exact = float(torch.linalg.matrix_norm(H))
    assert curvature.hessian_frobenius(model, loss, data, num_matvecs=H.shape[0],
                                       dtype=torch.float64) == pytest.approx(exact, rel=1e-9)
    R, m = 10, 40
    est = np.array([curvature.hessian_frobenius(model, loss, data, num_matvecs=m, seed=s,
                                                dtype=torch.float64) ** 2 for s in range(R)])
    # ‖Hv‖² = vᵀH²v: Hutchinson on H², exact variance
    assert abs(est.mean() - exact ** 2) <= 5 * np.sqrt(_probe_variance(H @ H) / (m * R))


def test_spectral_density_is_a_density_covering_the_spectrum(tiny):
    from scipy.stats import norm

    from flatness.krylov import slq_quadrature

    model, loss, data = tiny
    H = oracle_hessian(model, loss, data)
    evals = torch.linalg.eigvalsh(H).numpy()
    P, m, R = H.shape[0], 30, 3
    grid, density = curvature.spectral_density(model, loss, data, num_lanczos=m, num_repeats=R,
                                               dtype=torch.float64, seed=2)
    nodes, weights, _, _ = slq_quadrature(H, m, R, seed=2, distribution="gaussian")
    assert grid.min() <= evals.min() and grid.max() >= evals.max()
    # the Gaussians (width σ on [-1, 1]) lose at most their tails beyond the padded grid
    sigma = 2 / (m - 1) / np.sqrt(8 * np.log(3.0))
    pad = 0.05 / 1.1  # the padding in normalized units
    tails = 2 * norm.sf(pad / sigma)
    assert 1 - tails - 1e-4 <= np.trapezoid(density, grid) <= 1 + 1e-4
    # its mean is the mean of qᵀHq over uniform unit vectors q, unbiased for tr H / P, with
    # Var(qᵀHq) = (tr² + 2‖H‖²_F)/(P(P+2)) − tr²/P²
    tr, fro2 = float(torch.trace(H)), float((H ** 2).sum())
    var = (tr ** 2 + 2 * fro2) / (P * (P + 2)) - tr ** 2 / P ** 2
    mean = np.mean([float(np.sum(w * t)) for t, w in zip(nodes, weights)])
    assert abs(mean - tr / P) <= 5 * np.sqrt(var / R)
    first = np.trapezoid(grid * density, grid)
    assert abs(first - mean) <= (tails + 1e-4) * np.abs(grid).max()


@pytest.mark.parametrize("kwargs, match", [
    ({"kappa": 0.0}, "kappa"), ({"kappa": 1.0}, "kappa"), ({"kappa": -2.0}, "kappa"),
    ({"num_points": 0}, "num_points"), ({"num_points": 1}, "num_points"),
    ({"margin": -0.1}, "margin"), ({"num_lanczos": 0}, "num_lanczos")])
def test_spectral_density_refusals(tiny, kwargs, match):
    model, loss, data = tiny
    with pytest.raises(ValueError, match=match):
        curvature.spectral_density(model, loss, data, **kwargs)


def test_repeated_eigenvalues_of_a_bias_free_linear_model():
    """Issue 10: MSE on nn.Linear(d, 3, bias=False): every eigenvalue has multiplicity 3."""
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3, bias=False)
    X, Y = torch.randn(30, 5), torch.randn(30, 3)
    loss = torch.nn.MSELoss()
    evals = torch.linalg.eigvalsh(oracle_hessian(net, loss, (X, Y))).numpy()[::-1]
    assert np.allclose(evals[:3], evals[0])
    for method in ("lanczos", "eigsh"):
        res = curvature.top_eigenvalues(net, loss, (X, Y), k=3, dtype=torch.float64,
                                        method=method)
        assert res.converged
        np.testing.assert_allclose(res.eigenvalues, evals[:3], rtol=1e-6)
    block = curvature.block_top_eigenvalues(net.double(), loss, (X.double(), Y.double()),
                                            slice(0, 10), k=2)
    np.testing.assert_allclose(block, evals[:2], rtol=1e-6)  # rows 0, 1 of W: 2 copies


@pytest.mark.parametrize("loss", [
    torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)),
    torch.nn.CrossEntropyLoss(),
    torch.nn.NLLLoss(weight=torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64))])
def test_batches_are_weighted_by_their_share_of_the_loss_normalizer(tiny, loss):
    """Issue 10: weighted / ignore_index losses normalize within each batch, so a batch's
    weight is its share of the summed class weights of the labels not ignored."""
    model, _, (X, y) = tiny
    y = y.clone()
    y[:8] = -100  # the default ignore_index: the whole first batch
    y[10:13] = -100  # and part of the second
    net = copy.deepcopy(model).double()
    if isinstance(loss, torch.nn.NLLLoss):
        net = torch.nn.Sequential(net, torch.nn.LogSoftmax(-1))
    X = X.double()
    ref = oracle_hessian(net, loss, (X, y))
    op = operators.HessianOperator(net, loss, (X, y), batch_size=8)
    assert len(op.batches) == 4  # the first batch (all labels ignored) is skipped
    torch.testing.assert_close(operators._dense_from_operator(op), ref, rtol=1e-10, atol=1e-12)
    full = operators.HessianOperator(net, loss, (X, y))
    assert op.loss == pytest.approx(full.loss, rel=1e-12)


def test_every_label_ignored_is_refused(tiny):
    model, loss, (X, y) = tiny
    with pytest.raises(ValueError, match="ignore_index"):
        operators.HessianOperator(model, loss, (X, torch.full_like(y, -100)))


def test_curvature_inside_no_grad(tiny):
    """Issue 10: curvature calls made inside torch.no_grad() used to fail."""
    model, loss, data = tiny
    ref = curvature.top_eigenvalues(model, loss, data, k=2, dtype=torch.float64)
    with torch.no_grad():
        res = curvature.top_eigenvalues(model, loss, data, k=2, dtype=torch.float64)
        trace = curvature.hessian_trace(model, loss, data, num_matvecs=10, dtype=torch.float64)
        curvature.spectral_density(model, loss, data, num_lanczos=10, num_repeats=1)
        vals = curvature.input_hessian_top_eigenvalues(model, loss, (data[0][:3], data[1][:3]))
        H = operators.dense_hessian(model, loss, data)
    np.testing.assert_allclose(res.eigenvalues, ref.eigenvalues, rtol=1e-12)
    assert trace == pytest.approx(curvature.hessian_trace(model, loss, data, num_matvecs=10,
                                                          dtype=torch.float64), rel=1e-12)
    assert vals.shape == (3,)
    torch.testing.assert_close(H, oracle_hessian(model, loss, data), rtol=1e-10, atol=1e-12)


def test_input_hessian_of_a_nan_loss_is_refused(tiny):
    model, loss, (X, y) = tiny
    X = X.clone()
    X[2, 1] = float("nan")
    with pytest.raises(ValueError, match="nan"):
        curvature.input_hessian_top_eigenvalues(model, loss, (X, y))


def test_operator_interface_for_curvlinops_and_scipy(tiny):
    from curvlinops import hutchinson_squared_fro, hutchinson_trace, hutchpp_trace, xtrace

    model, loss, data = tiny
    op = operators.HessianOperator(model, loss, data, dtype=torch.float64)
    H = oracle_hessian(model, loss, data)
    x = np.random.default_rng(0).standard_normal(H.shape[0])
    np.testing.assert_allclose(op.to_scipy() @ x, H.numpy() @ x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(op @ x, H.numpy() @ x, rtol=1e-10, atol=1e-12)
    for fn, m in ((hutchinson_trace, 10), (hutchpp_trace, 9), (xtrace, 10),
                  (hutchinson_squared_fro, 10)):
        assert np.isfinite(float(fn(op, m)))
    assert op.T is op


def test_input_hessian_matches_per_sample_oracle(tiny):
    model, loss, (X, y) = tiny
    vals = curvature.input_hessian_top_eigenvalues(model, loss, (X[:5], y[:5]))
    for i in range(5):
        f = lambda x: loss(model(x.unsqueeze(0)), y[i:i + 1])  # noqa: E731
        H = torch.autograd.functional.hessian(f, X[i])
        assert float(vals[i]) == pytest.approx(float(torch.linalg.eigvalsh(H.double())[-1]), abs=1e-5)


def test_functions_leave_the_model_untouched(tiny):
    model, loss, data = tiny
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    curvature.top_eigenvalues(model, loss, data)
    curvature.hessian_trace(model, loss, data, num_matvecs=10)
    curvature.input_hessian_top_eigenvalues(model, loss, data)
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_refuses_batchnorm_and_dropout_in_train_mode():
    X, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    loss = torch.nn.CrossEntropyLoss()
    for layer in (torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5)):
        net = torch.nn.Sequential(torch.nn.Linear(4, 4), layer, torch.nn.ReLU(), torch.nn.Linear(4, 2))
        net.train()
        with pytest.raises(ValueError, match="eval_mode=True"):
            curvature.top_eigenvalues(net, loss, (X, y))
        res = curvature.top_eigenvalues(net, loss, (X, y), eval_mode=True)
        assert net.training and res.eigenvalues.size == 1
        net.eval()
        curvature.top_eigenvalues(net, loss, (X, y))  # fine in eval mode


@pytest.mark.parametrize("data,match", [
    ((torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)), "empty"),
    ((torch.zeros(4, 5), torch.zeros(3, dtype=torch.long)), "different lengths"),
    ((torch.zeros(4, 5), torch.tensor([0, 1, 2, 7])), r"labels must lie in \[0, 3\)"),
    ("not data", "expected an \\(X, y\\) pair"),
])
def test_bad_data(tiny, data, match):
    model, loss, _ = tiny
    with pytest.raises((ValueError, TypeError), match=match):
        curvature.top_eigenvalues(model, loss, data)


def test_empty_loader(tiny):
    model, loss, _ = tiny
    empty = DataLoader(TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="no batches"):
        curvature.hessian_trace(model, loss, empty)


def test_nan_loss_is_refused(tiny):
    model, loss, (X, y) = tiny
    X = X.clone()
    X[0, 0] = float("nan")
    with pytest.raises(ValueError, match="nan"):
        curvature.top_eigenvalues(model, loss, (X, y))


def test_sum_reduction_is_refused(tiny):
    model, _, data = tiny
    with pytest.raises(ValueError, match="mean-reduced"):
        operators.HessianOperator(model, torch.nn.CrossEntropyLoss(reduction="sum"), data)


def test_k_out_of_range(tiny):
    model, loss, data = tiny
    with pytest.raises(ValueError, match="k: expected"):
        curvature.top_eigenvalues(model, loss, data, k=0)


def test_dense_hessian_size_guard():
    with pytest.raises(ValueError, match="max_parameters"):
        operators.dense_hessian(mlp(40, (100,), 10), torch.nn.CrossEntropyLoss(),
                                (torch.randn(3, 40), torch.zeros(3, dtype=torch.long)),
                                max_parameters=1000)


def test_list_of_two_batches_is_not_a_pair(tiny):
    model, loss, (X, y) = tiny
    batches = [(X[:25], y[:25]), (X[25:], y[25:])]
    torch.testing.assert_close(operators.dense_hessian(model, loss, batches),
                               oracle_hessian(model, loss, (X, y)), rtol=1e-10, atol=1e-12)


def test_float32_data_with_float64_model(tiny):
    model, loss, data = tiny
    H = operators.dense_hessian(model.double(), loss, data)
    torch.testing.assert_close(H, oracle_hessian(model, loss, data), rtol=1e-10, atol=1e-12)
