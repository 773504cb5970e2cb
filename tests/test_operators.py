import numpy as np
import pytest
import torch
from oracles import oracle_hessian

from flatness import operators
from flatness.krylov import lanczos


def test_block_and_pullback_operators_against_dense(tiny):
    model, loss, data = tiny
    H = oracle_hessian(model, loss, data)
    op = operators.HessianOperator(model, loss, data, dtype=torch.float64)
    sl = slice(3, 20)
    B = operators.BlockOperator(op, sl)
    eye = torch.eye(17, dtype=torch.float64)
    torch.testing.assert_close(B @ eye, H[sl, sl], rtol=1e-10, atol=1e-12)
    J = torch.randn(H.shape[0], 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    A = operators.PullbackOperator(op, lambda x: J @ x, lambda w: J.T @ w, 6)
    torch.testing.assert_close(A @ torch.eye(6, dtype=torch.float64), J.T @ H @ J,
                               rtol=1e-10, atol=1e-12)
    ref = torch.linalg.eigvalsh(J.T @ H @ J).flip(0)[:2].numpy()
    np.testing.assert_allclose(lanczos(A, k=2, tol=1e-10).eigenvalues, ref, rtol=1e-8)
    with pytest.raises(ValueError, match="block"):
        operators.BlockOperator(op, slice(5, 5))
    with pytest.raises(ValueError, match="X"):
        op @ torch.ones(3)


def test_products_are_counted_and_the_model_is_untouched(tiny):
    model, loss, data = tiny
    before = [p.detach().clone() for p in model.parameters()]
    op = operators.HessianOperator(model, loss, data)
    op @ torch.ones(op.shape[0])
    op @ torch.ones(op.shape[0], 4)
    assert op.products == 5
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
