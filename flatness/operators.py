"""operators."""

from __future__ import annotations

import copy
from typing import List, Optional

import torch
from torch import Tensor, nn

from .checks import (
    check_finite,
    check_labels,
    check_positive,
    check_reduction,
    evaluation,
    materialize,
    num_samples,
    quiet_torch_func,
    trainable_parameters,
)

with quiet_torch_func():  # curvlinops imports linear_operator, which calls torch.jit.script
    from curvlinops._torch_base import PyTorchLinearOperator


__all__ = ["HessianOperator", "dense_hessian"]


def _prepare(model: nn.Module, data, dtype: Optional[torch.dtype]):
    batches = materialize(data)
    if dtype is not None:
        if any(p.dtype != dtype for p in model.parameters()):
            model = copy.deepcopy(model).to(dtype)
        batches = [(X.to(dtype) if X.is_floating_point() else X,
                    y.to(dtype) if y.is_floating_point() else y) for X, y in batches]
    return model, batches


class HessianOperator(PyTorchLinearOperator):
    r"""The Hessian :math:`\nabla^2_\theta L` of the full-data loss as a linear operator.

    Args:
        model: the network; its parameters are not changed.
        loss_fn: a mean-reduced loss such as ``nn.CrossEntropyLoss()``.
        data: an ``(X, y)`` pair or an iterable of pairs (a DataLoader).
        batch_size: split a tensor pair into batches of this size (memory only; the result is
            the same).
        retain: keep the gradient graph for all products (fast; memory grows with the data).
        dtype: compute in this dtype on a copy of the model (``torch.float64`` for oracles).
        eval_mode: see :func:`flatness.checks.evaluation`.

    Attributes:
        products: number of Hessian-vector products computed so far.
        loss: the full-data loss at the parameters.
        gradient: the full-data gradient (flat).

    Raises:
        ValueError: empty or mis-shaped data, labels out of range, a loss that is not finite,
            or BatchNorm/Dropout in train mode.

    >>> net = torch.nn.Linear(3, 2)
    >>> X, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    >>> H = HessianOperator(net, torch.nn.CrossEntropyLoss(), (X, y))
    >>> H.shape
    (8, 8)
    """

    SELF_ADJOINT = True

    def __init__(self, model: nn.Module, loss_fn, data, batch_size: Optional[int] = None,
                 retain: bool = True, dtype: Optional[torch.dtype] = None,
                 eval_mode: Optional[bool] = None):
        check_reduction(loss_fn)
        self._source = model
        self.model, batches = _prepare(model, data, dtype)
        if batch_size is not None:
            check_positive(batch_size, "batch_size", integer=True)
            batches = [(X[i:i + batch_size], y[i:i + batch_size])
                       for X, y in batches for i in range(0, X.shape[0], batch_size)]
        self.loss_fn, self.batches, self.retain, self.eval_mode = loss_fn, batches, retain, eval_mode
        self.params = trainable_parameters(self.model)
        self.N = num_samples(batches)
        self.weights = [X.shape[0] / self.N for X, _ in batches]
        P = sum(p.numel() for p in self.params)
        super().__init__([(P,)], [(P,)])
        self.products = 0
        self._graphs: List[Tensor] = []
        loss, grad = 0.0, torch.zeros(P, dtype=self.params[0].dtype, device=self.params[0].device)
        with evaluation(self.model, eval_mode):
            for (X, y), w in zip(batches, self.weights):
                g = self._batch_gradient(X, y, w, create_graph=retain)
                loss += float(self._last_loss) * w
                grad += g.detach()
                if retain:
                    self._graphs.append(g)
        self.loss = check_finite(loss)
        self.gradient = grad

    def _batch_gradient(self, X: Tensor, y: Tensor, w: float, create_graph: bool) -> Tensor:
        out = self.model(X)
        check_labels(out, y, self.loss_fn)
        loss = self.loss_fn(out, y)
        self._last_loss = loss.detach()
        if not torch.isfinite(loss):
            check_finite(float(loss.detach()))
        grads = torch.autograd.grad(loss * w, self.params, create_graph=True)
        return torch.cat([g.reshape(-1) for g in grads])

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    def _hvp_columns(self, g: Tensor, V: Tensor) -> Tensor:
        cols = []
        for j in range(V.shape[1]):
            hv = torch.autograd.grad(g, self.params, V[:, j], retain_graph=True, allow_unused=True)
            cols.append(torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                                   for h, p in zip(hv, self.params)]))
        return torch.stack(cols, 1)

    def _matmat(self, X: List[Tensor]) -> List[Tensor]:
        V = X[0].to(self.dtype)
        out = torch.zeros_like(V)
        if self.retain:
            for g in self._graphs:
                out += self._hvp_columns(g, V)
        else:
            with evaluation(self.model, self.eval_mode):
                for (Xb, yb), w in zip(self.batches, self.weights):
                    g = self._batch_gradient(Xb, yb, w, create_graph=True)
                    out += self._hvp_columns(g, V)
        self.products += V.shape[1]
        return [out.detach()]

    def matvec(self, v: Tensor) -> Tensor:
        """``H @ v`` for a flat vector ``v``."""
        return self @ v

    def release(self) -> None:
        """Free the retained graphs."""
        self._graphs = []
        self.retain = False


def _dense_from_operator(H: HessianOperator, chunk: int = 256) -> Tensor:
    P = H.shape[0]
    eye = torch.eye(P, dtype=H.dtype, device=H.device)
    cols = [H @ eye[:, i:i + chunk] for i in range(0, P, chunk)]
    D = torch.cat(cols, 1)
    return (D + D.T) / 2


def dense_hessian(model: nn.Module, loss_fn, data, dtype: torch.dtype = torch.float64,
                  eval_mode: Optional[bool] = None, max_parameters: int = 20000) -> Tensor:
    """The full Hessian matrix (``P × P``, float64 by default), one product per column.

    Intended for small networks and as the oracle for every estimator.

    Raises:
        ValueError: more than ``max_parameters`` parameters.
    """
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if P > max_parameters:
        raise ValueError(f"model: {P} parameters give a {P}×{P} Hessian; dense_hessian is for "
                         f"small nets (max_parameters={max_parameters})")
    return _dense_from_operator(HessianOperator(model, loss_fn, data, dtype=dtype,
                                                eval_mode=eval_mode))
