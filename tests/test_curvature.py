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


def test_trace_estimators_against_dense(tiny):
    model, loss, data = tiny
    H = oracle_hessian(model, loss, data)
    exact = float(torch.trace(H))
    P = H.shape[0]
    # with as many products as dimensions the trace is exact
    assert curvature.hessian_trace(model, loss, data, num_matvecs=P, dtype=torch.float64) == pytest.approx(exact, rel=1e-9)
    for method in ("xtrace", "hutch++", "hutchinson"):
        estimates = [curvature.hessian_trace(model, loss, data, num_matvecs=30, method=method,
                                             seed=s, dtype=torch.float64) for s in range(20)]
        assert np.mean(estimates) == pytest.approx(exact, rel=0.15)


def test_frobenius_against_dense(tiny):
    model, loss, data = tiny
    H = oracle_hessian(model, loss, data)
    exact = float(torch.linalg.matrix_norm(H))
    assert curvature.hessian_frobenius(model, loss, data, num_matvecs=H.shape[0],
                                       dtype=torch.float64) == pytest.approx(exact, rel=1e-9)
    est = [curvature.hessian_frobenius(model, loss, data, num_matvecs=40, seed=s,
                                       dtype=torch.float64) ** 2 for s in range(10)]
    assert np.mean(est) == pytest.approx(exact ** 2, rel=0.2)


def test_spectral_density_is_a_density_covering_the_spectrum(tiny):
    model, loss, data = tiny
    evals = torch.linalg.eigvalsh(oracle_hessian(model, loss, data)).numpy()
    grid, density = curvature.spectral_density(model, loss, data, num_lanczos=30,
                                               dtype=torch.float64)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=0.05)
    assert grid.min() <= evals.min() and grid.max() >= evals.max()
    # mean of the density ≈ mean eigenvalue (trace / P)
    assert np.trapezoid(grid * density, grid) == pytest.approx(evals.mean(), abs=0.1 * np.abs(evals).max())


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
