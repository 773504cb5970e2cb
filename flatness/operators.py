r"""Symmetric linear operators on the flat parameter vector: the Hessian and what is built from it.

Every curvature estimator of flatness (:mod:`flatness.krylov`, :mod:`flatness.curvature`) only
multiplies a symmetric matrix :math:`A \in \mathbb{R}^{n\times n}` onto vectors; it never forms
it. This module defines that one interface, :class:`SymmetricOperator`: ``A.shape``,
``A.dtype``, ``A.device``, ``A @ v`` for a vector ``v`` of shape ``(n,)`` and ``A @ V`` for a
matrix ``V`` of shape ``(n, k)`` (one product per column, counted in ``A.products``), ``A.T``
(``A`` itself) and :meth:`SymmetricOperator.to_scipy` for SciPy's solvers. That is also all
curvlinops' public estimators (``hutchinson_trace``, ``hutchpp_trace``, ``xtrace``,
``hutchinson_squared_fro``) use, so they run on these operators unchanged.

* :class:`HessianOperator` — the Hessian :math:`\nabla^2_\theta L` of the full-data loss
  :math:`L(\theta) = \sum_b w_b\,L_b(\theta)`, where :math:`L_b` is the loss of batch
  :math:`b` and :math:`w_b` is the batch's share of the total weight of the loss's mean:
  :math:`n_b/N` for a per-sample mean, and the share of the summed class weights of the
  non-ignored labels for ``nn.CrossEntropyLoss``/``nn.NLLLoss`` with ``weight=`` or
  ``ignore_index`` (which normalize by that sum inside each batch). A product is a double
  backward (Pearlmutter 1994) through the gradient graph.
* :class:`BlockOperator` — a diagonal block :math:`H_{bb} = R_b H R_b^\top` with
  :math:`R_b` the restriction to a contiguous slice of the parameters (and
  :math:`R_b^\top` the embedding by zeros).
* :class:`PullbackOperator` — :math:`J^\top H J` for a map :math:`g` with Jacobian
  :math:`J` at a point, from its Jacobian-vector and vector-Jacobian products.
* :class:`MatrixOperator`, :class:`FunctionOperator` and :func:`as_operator` — an explicit
  matrix, a bare ``v ↦ A v`` callable, or any foreign operator with ``shape`` and ``@`` (e.g. a
  curvlinops operator) as a :class:`SymmetricOperator`.

:func:`dense_hessian` forms :math:`\nabla^2 L` column by column, the float64 oracle of the tests.

Every computation runs with gradients enabled (also when the caller is inside
``torch.no_grad()``) and never changes the model's parameters, gradients or modes.

References:
    Pearlmutter, B. A. (1994). Fast exact multiplication by the Hessian. Neural Computation.
"""

from __future__ import annotations

import copy
from typing import Callable, List, Optional

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor, nn

from .checks import (
    check_finite,
    check_labels,
    check_positive,
    check_reduction,
    evaluation,
    materialize,
    num_samples,
    sample_weights,
    trainable_parameters,
)

__all__ = ["SymmetricOperator", "HessianOperator", "BlockOperator", "PullbackOperator",
           "MatrixOperator", "FunctionOperator", "as_operator", "dense_hessian"]


class SymmetricOperator:
    r"""A symmetric linear operator :math:`A \in \mathbb{R}^{n\times n}` known by its products.

    Subclasses implement :meth:`_matmat` (``n × k`` in, ``n × k`` out, in :attr:`dtype` on
    :attr:`device`); ``A @ v`` and ``A @ V`` convert the argument, count the products and
    return a tensor of the argument's shape.

    Attributes:
        shape: ``(n, n)``.
        products: matrix-vector products computed so far (one per column).
    """

    def __init__(self, dim: int, dtype: torch.dtype = torch.float64, device=None):
        self.shape = (int(dim), int(dim))
        self._dtype = dtype
        self._device = torch.device("cpu") if device is None else torch.device(device)
        self.products = 0

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def T(self) -> "SymmetricOperator":  # noqa: N802 (curvlinops/NumPy spelling)
        """The transpose, the operator itself."""
        return self

    def adjoint(self) -> "SymmetricOperator":
        """The adjoint, the operator itself."""
        return self

    def _matmat(self, V: Tensor) -> Tensor:
        raise NotImplementedError

    def __matmul__(self, X):
        """``A @ X`` for a tensor (or array) ``X`` of shape ``(n,)`` or ``(n, k)``."""
        as_numpy = isinstance(X, np.ndarray)
        V = torch.from_numpy(X) if as_numpy else X
        if not isinstance(V, Tensor):
            return NotImplemented
        n = self.shape[0]
        if V.ndim not in (1, 2) or V.shape[0] != n:
            raise ValueError(f"X: expected shape ({n},) or ({n}, k), got {tuple(V.shape)}")
        M = V.reshape(n, -1).to(device=self.device, dtype=self.dtype)
        out = self._matmat(M).detach()
        self.products += M.shape[1]
        out = out.reshape(V.shape).to(device=V.device, dtype=V.dtype)
        return out.numpy() if as_numpy else out

    def matvec(self, v: Tensor) -> Tensor:
        """``A @ v`` for a flat vector ``v``."""
        return self @ v

    def to_scipy(self, dtype=np.float64) -> LinearOperator:
        """The operator as a SciPy ``LinearOperator`` on NumPy arrays (for ``eigsh``)."""
        n = self.shape[0]

        def matmat(X):
            X = np.asarray(X, dtype=dtype).reshape(n, -1)
            return (self @ torch.from_numpy(np.ascontiguousarray(X))).numpy()

        def matvec(x):
            return matmat(x).reshape(-1)

        return LinearOperator(self.shape, matvec=matvec, rmatvec=matvec, matmat=matmat,
                              rmatmat=matmat, dtype=dtype)


class MatrixOperator(SymmetricOperator):
    """An explicit square matrix (a tensor or an array) as a :class:`SymmetricOperator`, in
    float64.

    Raises:
        ValueError: the matrix is not square.
    """

    def __init__(self, matrix):
        A = torch.from_numpy(matrix) if isinstance(matrix, np.ndarray) else matrix
        if not isinstance(A, Tensor) or A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError("operator: expected a square matrix, got shape "
                             f"{tuple(getattr(A, 'shape', ()))}")
        super().__init__(A.shape[0], torch.float64, A.device)
        self.matrix = A.to(torch.float64)

    def _matmat(self, V: Tensor) -> Tensor:
        return self.matrix @ V


class FunctionOperator(SymmetricOperator):
    """A bare ``v ↦ A v`` callable (one vector at a time) as a :class:`SymmetricOperator`.

    Args:
        fn: called with float64 vectors of shape ``(dim,)`` (on ``device``); returns a tensor
            or array with ``dim`` entries.
        dim: the dimension ``n``.
        device: where the vectors live (default CPU).

    Raises:
        ValueError: ``dim`` is not a positive integer, or a product has the wrong size.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], dim: int, device=None):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim: a callable operator needs its dimension, a positive "
                             f"integer, got {dim!r}")
        super().__init__(dim, torch.float64, device)
        self.fn = fn

    def _matmat(self, V: Tensor) -> Tensor:
        cols = []
        for j in range(V.shape[1]):
            w = torch.as_tensor(self.fn(V[:, j]))
            if w.numel() != self.shape[0]:
                raise ValueError(f"operator: a product returned shape {tuple(w.shape)}, "
                                 f"expected ({self.shape[0]},)")
            cols.append(w.detach().reshape(-1).to(device=self.device, dtype=torch.float64))
        return torch.stack(cols, 1)


class _ForeignOperator(SymmetricOperator):
    """Any object with a square ``shape`` and ``@`` on tensors (a curvlinops operator)."""

    def __init__(self, op):
        dtype = getattr(op, "dtype", torch.float64)
        dtype = dtype if isinstance(dtype, torch.dtype) else torch.float64
        super().__init__(int(op.shape[0]), dtype, getattr(op, "device", None))
        self.op = op

    def _matmat(self, V: Tensor) -> Tensor:
        return torch.as_tensor(self.op @ V).reshape(V.shape).to(V.dtype)


def as_operator(operator, dim: Optional[int] = None) -> SymmetricOperator:
    """The one operator type the Krylov routines take.

    Args:
        operator: a :class:`SymmetricOperator` (returned as is), a square tensor or array, any
            object with a square ``shape`` and ``@`` on torch tensors (for example a curvlinops
            linear operator), or a callable ``v ↦ A v`` (then ``dim`` is needed).
        dim: the dimension, for a callable.

    Returns:
        A :class:`SymmetricOperator`.

    Raises:
        ValueError: a non-square matrix or operator, or a callable without ``dim``.
        TypeError: anything else.

    >>> A = as_operator(lambda v: 2 * v, 3)
    >>> (A @ torch.ones(3, dtype=torch.float64)).tolist(), A.products
    ([2.0, 2.0, 2.0], 1)
    """
    if isinstance(operator, SymmetricOperator):
        return operator
    if isinstance(operator, (Tensor, np.ndarray)):
        return MatrixOperator(operator)
    shape = getattr(operator, "shape", None)
    if shape is not None and hasattr(operator, "__matmul__"):
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"operator: expected a square operator, got shape {tuple(shape)}")
        return _ForeignOperator(operator)
    if callable(operator):
        return FunctionOperator(operator, dim)
    raise TypeError(f"operator: expected a square tensor, a linear operator or a callable, "
                    f"got {type(operator).__name__}")


def _prepare(model: nn.Module, data, dtype: Optional[torch.dtype]):
    batches = materialize(data)
    if dtype is not None:
        if any(p.dtype != dtype for p in model.parameters()):
            model = copy.deepcopy(model).to(dtype)
        batches = [(X.to(dtype) if X.is_floating_point() else X,
                    y.to(dtype) if y.is_floating_point() else y) for X, y in batches]
    return model, batches


def _loss_weight(loss_fn, X: Tensor, y: Tensor) -> float:
    """The normalizer of ``loss_fn``'s mean over one batch (:func:`flatness.checks.sample_weights`)."""
    return float(sample_weights(loss_fn, y).sum())


class HessianOperator(SymmetricOperator):
    r"""The Hessian :math:`\nabla^2_\theta L` of the full-data loss as a linear operator.

    .. math:: L(\theta) = \sum_b \frac{W_b}{W}\,L_b(\theta), \qquad W = \sum_b W_b,

    with :math:`L_b` the mean loss of batch :math:`b` and :math:`W_b` its normalizer: the number
    of samples, or for a class-index ``nn.CrossEntropyLoss``/``nn.NLLLoss`` the sum of the class
    weights of the labels that are not ``ignore_index``. So the result does not depend on how
    the data are batched. A batch whose every label is ignored is skipped.

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
        weights: the batch weights :math:`W_b/W`.

    Raises:
        ValueError: empty or mis-shaped data, labels out of range, every label ignored, a loss
            that is not finite, or BatchNorm/Dropout in train mode.

    >>> net = torch.nn.Linear(3, 2)
    >>> X, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    >>> H = HessianOperator(net, torch.nn.CrossEntropyLoss(), (X, y))
    >>> H.shape
    (8, 8)
    """

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
        self.N = num_samples(batches)
        raw = [_loss_weight(loss_fn, X, y) for X, y in batches]
        total = sum(raw)
        if not total > 0:
            raise ValueError(f"data: every label equals loss_fn.ignore_index (or has class "
                             f"weight 0), so the mean of {type(loss_fn).__name__} is undefined")
        kept = [(b, w / total) for b, w in zip(batches, raw) if w > 0]
        self.batches = [b for b, _ in kept]
        self.weights = [w for _, w in kept]
        self.loss_fn, self.retain, self.eval_mode = loss_fn, retain, eval_mode
        self.params = trainable_parameters(self.model)
        P = sum(p.numel() for p in self.params)
        super().__init__(P, self.params[0].dtype, self.params[0].device)
        self._graphs: List[Tensor] = []
        loss, grad = 0.0, torch.zeros(P, dtype=self.dtype, device=self.device)
        with torch.enable_grad(), evaluation(self.model, eval_mode):
            for (X, y), w in zip(self.batches, self.weights):
                g = self._batch_gradient(X, y, w)
                loss += float(self._last_loss) * w
                grad += g.detach()
                if retain:
                    self._graphs.append(g)
        self.loss = check_finite(loss)
        self.gradient = grad

    def _batch_gradient(self, X: Tensor, y: Tensor, w: float) -> Tensor:
        out = self.model(X)
        check_labels(out, y, self.loss_fn)
        loss = self.loss_fn(out, y)
        self._last_loss = loss.detach()
        if not torch.isfinite(loss):
            check_finite(float(loss.detach()))
        grads = torch.autograd.grad(loss * w, self.params, create_graph=True)
        return torch.cat([g.reshape(-1) for g in grads])

    def _hvp_columns(self, g: Tensor, V: Tensor) -> Tensor:
        cols = []
        for j in range(V.shape[1]):
            hv = torch.autograd.grad(g, self.params, V[:, j], retain_graph=True, allow_unused=True)
            cols.append(torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                                   for h, p in zip(hv, self.params)]))
        return torch.stack(cols, 1)

    def _matmat(self, V: Tensor) -> Tensor:
        out = torch.zeros_like(V)
        with torch.enable_grad():
            if self.retain:
                for g in self._graphs:
                    out += self._hvp_columns(g, V)
            else:
                with evaluation(self.model, self.eval_mode):
                    for (Xb, yb), w in zip(self.batches, self.weights):
                        out += self._hvp_columns(self._batch_gradient(Xb, yb, w), V)
        return out

    def release(self) -> None:
        """Free the retained graphs (later products rebuild them batch by batch)."""
        self._graphs = []
        self.retain = False


class BlockOperator(SymmetricOperator):
    r"""A diagonal block :math:`H_{bb} = R_b\,H\,R_b^\top` of a symmetric operator.

    :math:`R_b` restricts a vector to the contiguous ``block`` of its entries and
    :math:`R_b^\top` embeds a block vector by zeros, so :math:`H_{bb}x = (H\,[0; x; 0])_b` at one
    product of ``H`` per product.

    Args:
        H: the operator (anything :func:`as_operator` takes).
        block: a contiguous ``slice`` of ``range(n)`` with at least one entry.

    Raises:
        ValueError: ``block`` is not a contiguous, non-empty slice.

    >>> B = BlockOperator(torch.diag(torch.arange(5.0, dtype=torch.float64)), slice(1, 3))
    >>> B.shape, (B @ torch.ones(2, dtype=torch.float64)).tolist()
    ((2, 2), [1.0, 2.0])
    """

    def __init__(self, H, block: slice):
        H = as_operator(H)
        if not isinstance(block, slice) or block.step not in (None, 1):
            raise ValueError(f"block: expected a contiguous slice, got {block!r}")
        start, stop, _ = block.indices(H.shape[0])
        if stop <= start:
            raise ValueError(f"block: {block!r} selects no parameter of {H.shape[0]}")
        super().__init__(stop - start, H.dtype, H.device)
        self.H, self.start, self.stop = H, start, stop

    def _matmat(self, V: Tensor) -> Tensor:
        full = torch.zeros(self.H.shape[0], V.shape[1], dtype=V.dtype, device=V.device)
        full[self.start:self.stop] = V
        return (self.H @ full)[self.start:self.stop]


class PullbackOperator(SymmetricOperator):
    r""":math:`J^\top H J` for a map with Jacobian :math:`J \in \mathbb{R}^{n\times d}`.

    One product is one Jacobian-vector product :math:`u = Jx`, one product :math:`Hu` and one
    vector-Jacobian product :math:`J^\top (Hu)`, all in float64.

    Args:
        H: the operator on :math:`\mathbb{R}^n` (anything :func:`as_operator` takes).
        jvp: ``x ↦ J x`` for ``x`` of shape ``(d,)``.
        vjp: ``w ↦ Jᵀ w`` for ``w`` of shape ``(n,)``.
        dim: :math:`d`.

    >>> J = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    >>> A = PullbackOperator(torch.eye(2, dtype=torch.float64), lambda x: J @ x,
    ...                      lambda w: J.T @ w, 1)
    >>> (A @ torch.ones(1, dtype=torch.float64)).tolist()
    [5.0]
    """

    def __init__(self, H, jvp: Callable[[Tensor], Tensor], vjp: Callable[[Tensor], Tensor],
                 dim: int):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim: expected a positive integer, got {dim!r}")
        self.H = as_operator(H)
        super().__init__(dim, torch.float64, torch.device("cpu"))
        self.jvp, self.vjp = jvp, vjp

    def _matmat(self, V: Tensor) -> Tensor:
        cols = []
        for j in range(V.shape[1]):
            u = torch.as_tensor(self.jvp(V[:, j])).reshape(-1)
            Hu = self.H @ u.to(device=self.H.device, dtype=self.H.dtype)
            cols.append(torch.as_tensor(self.vjp(Hu.to(torch.float64).cpu())).reshape(-1)
                        .to(torch.float64))
        return torch.stack(cols, 1)


def _dense_from_operator(H: SymmetricOperator, chunk: int = 256) -> Tensor:
    P = H.shape[0]
    eye = torch.eye(P, dtype=H.dtype, device=H.device)
    cols = [H @ eye[:, i:i + chunk] for i in range(0, P, chunk)]
    D = torch.cat(cols, 1)
    return (D + D.T) / 2


def dense_hessian(model: nn.Module, loss_fn, data, dtype: torch.dtype = torch.float64,
                  eval_mode: Optional[bool] = None, max_parameters: int = 20000) -> Tensor:
    """The full Hessian matrix (``P × P``, float64 by default), one product per column.

    Intended for small networks and as the oracle for every estimator.

    Args:
        model, loss_fn, data, eval_mode: as for :class:`HessianOperator`.
        dtype: the dtype of the computation and of the result.
        max_parameters: refuse larger models.

    Returns:
        The symmetrized matrix :math:`(D + D^\\top)/2` of the products :math:`D`.

    Raises:
        ValueError: more than ``max_parameters`` parameters, and every error of
            :class:`HessianOperator`.
    """
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if P > max_parameters:
        raise ValueError(f"model: {P} parameters give a {P}×{P} Hessian; dense_hessian is for "
                         f"small nets (max_parameters={max_parameters})")
    return _dense_from_operator(HessianOperator(model, loss_fn, data, dtype=dtype,
                                                eval_mode=eval_mode))
