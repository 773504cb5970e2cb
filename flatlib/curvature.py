r"""Curvature of the full training loss: Hessian operator, eigenvalues, trace, norm, density.

The loss is the mean over the *whole* dataset,

.. math:: L(\theta) = \frac{1}{N}\sum_{i=1}^N \ell(f_\theta(x_i), y_i),

so when ``data`` comes in batches each batch's mean loss is weighted by ``n_b / N``.

:class:`HessianOperator` multiplies :math:`\nabla^2 L` onto vectors. It is a curvlinops
``PyTorchLinearOperator`` (so curvlinops' trace, Frobenius and spectral-density estimators run on
it) and exports to SciPy for ``eigsh``. A product is a double backward through a gradient graph
built once and kept (``retain=True``, the default), which avoids re-running the forward pass for
every product; ``retain=False`` rebuilds it per batch for data that do not fit in memory.

Every function evaluates the model in eval mode and restores the caller's mode; BatchNorm or
Dropout in train mode is refused unless ``eval_mode=True`` is passed. No function changes the
model's parameters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ._validation import quiet_torch_func

with quiet_torch_func():  # curvlinops imports linear_operator, which calls torch.jit.script
    from curvlinops._torch_base import PyTorchLinearOperator

from ._validation import (check_finite, check_labels, check_positive, check_reduction,
                          evaluation, materialize, num_samples, quiet_torch_func,
                          trainable_parameters)

__all__ = ["unflatten_parameters", "HessianOperator", "EigenResult", "top_eigenvalues", "hessian_trace",
           "hessian_frobenius", "dense_hessian", "spectral_density", "input_hessian_top_eigenvalues",
           "flat_parameters"]


def flat_parameters(model: nn.Module) -> Tensor:
    """All trainable parameters of ``model`` as one detached vector (in ``parameters()`` order)."""
    return torch.cat([p.detach().reshape(-1) for p in trainable_parameters(model)])


def unflatten_parameters(model: nn.Module, vector: Tensor) -> Dict[str, Tensor]:
    """Split a flat vector (ordered as :func:`flat_parameters`) into tensors shaped like the
    model's trainable parameters, keyed by name, for ``torch.func.functional_call``.

    The pieces are views of ``vector``, so gradients flow back to it.

    >>> net = torch.nn.Linear(2, 3)
    >>> {k: tuple(v.shape) for k, v in unflatten_parameters(net, torch.arange(9.)).items()}
    {'weight': (3, 2), 'bias': (3,)}
    """
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for _, p in named)
    if vector.ndim != 1 or vector.numel() != total:
        raise ValueError(f"vector: expected a flat tensor of {total} entries, got shape "
                         f"{tuple(vector.shape)}")
    out, offset = {}, 0
    for k, p in named:
        out[k] = vector[offset:offset + p.numel()].reshape(p.shape)
        offset += p.numel()
    return out


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
        eval_mode: see :func:`flatlib._validation.evaluation`.

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


@dataclass
class EigenResult:
    """Result of :func:`top_eigenvalues`.

    Attributes:
        eigenvalues: the eigenvalues, descending (NumPy array).
        eigenvectors: matching unit eigenvectors as columns (``P × k``), or ``None``.
        products: Hessian-vector products used.
        converged: whether the solver met its tolerance.
    """

    eigenvalues: np.ndarray
    eigenvectors: Optional[np.ndarray]
    products: int
    converged: bool

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[0])


def _start_vector(P: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(P)


def top_eigenvalues(model: nn.Module, loss_fn, data, k: int = 1, tol: float = 1e-6,
                    maxiter: Optional[int] = None, ncv: Optional[int] = None, seed: int = 0,
                    which: str = "LA", return_eigenvectors: bool = False,
                    dtype: Optional[torch.dtype] = None, eval_mode: Optional[bool] = None,
                    operator: Optional[HessianOperator] = None,
                    method: str = "lanczos") -> EigenResult:
    r"""The ``k`` largest (algebraic) eigenvalues of the full-data Hessian.

    By default flatlib's Lanczos iteration with full reorthogonalization
    (:func:`flatlib.lanczos.lanczos`), which stops as soon as every wanted eigenvalue meets the
    relative accuracy ``tol`` (estimated from its Ritz residual), so a loose ``tol`` costs few
    products: 8 to 11 for λ_max to ``1e-3`` on the networks of ``benchmarks/curvature.py``.
    ``method="eigsh"`` uses
    SciPy's implicitly restarted Lanczos (ARPACK) instead.

    Args:
        model, loss_fn, data: the network, a mean-reduced loss and the dataset.
        k: number of eigenvalues.
        tol: relative accuracy of the eigenvalues (ARPACK's ``tol`` for ``"eigsh"``).
        maxiter: product budget for ``"lanczos"`` (default ``min(P, max(200, 20k))``);
            ARPACK's restart limit for ``"eigsh"``.
        ncv: Lanczos basis size for ``"eigsh"`` (default ``min(P, max(2k + 1, 20))``); unused
            by ``"lanczos"``, whose basis grows until it converges.
        seed: seeds the start vector.
        which: ``"LA"`` (largest algebraic, default), ``"LM"`` (largest magnitude) or ``"SA"``.
        return_eigenvectors: also return the eigenvectors.
        dtype: compute in this dtype on a copy.
        eval_mode: see :class:`HessianOperator`.
        operator: reuse an existing operator (its model, loss and data are used).
        method: ``"lanczos"`` (default) or ``"eigsh"``.

    Returns:
        An :class:`EigenResult`.

    Raises:
        ValueError: ``k`` not in ``[1, P)``, an unknown ``method`` or ``which``, and every error
            of :class:`HessianOperator`.
    """
    if method not in ("lanczos", "eigsh"):
        raise ValueError(f"method: expected 'lanczos' or 'eigsh', got {method!r}")
    if which not in ("LA", "LM", "SA"):
        raise ValueError(f"which: expected 'LA', 'LM' or 'SA', got {which!r}")
    H = operator or HessianOperator(model, loss_fn, data, dtype=dtype, eval_mode=eval_mode)
    P = H.shape[0]
    if not isinstance(k, int) or not 1 <= k < P:
        raise ValueError(f"k: expected an integer in [1, {P - 1}], got {k!r}")
    start = H.products
    if method == "lanczos":
        from .lanczos import lanczos

        budget = min(P, max(200, 20 * k)) if maxiter is None else maxiter

        def matvec(v: Tensor) -> Tensor:
            return H._matmat([v.to(device=H.device, dtype=H.dtype).unsqueeze(1)])[0][:, 0]

        res = lanczos(matvec, P, k=k, tol=tol, which=which, max_products=budget,
                      v0=torch.from_numpy(_start_vector(P, seed)),
                      return_eigenvectors=return_eigenvectors)
        vals, vecs, converged = res.eigenvalues, res.eigenvectors, res.converged
    else:
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh

        A = H.to_scipy(dtype=np.float64)
        converged = True
        try:
            vals, vecs = eigsh(A, k=k, which=which, tol=tol, maxiter=maxiter, ncv=ncv,
                               v0=_start_vector(P, seed))
        except ArpackNoConvergence as err:
            converged = False
            vals, vecs = err.eigenvalues, err.eigenvectors
    order = np.argsort(vals)[::-1]
    return EigenResult(np.asarray(vals)[order],
                       np.asarray(vecs)[:, order] if return_eigenvectors else None,
                       H.products - start, converged)


def hessian_trace(model: nn.Module, loss_fn, data, num_matvecs: int = 30,
                  method: str = "krylov", seed: int = 0, dtype: Optional[torch.dtype] = None,
                  eval_mode: Optional[bool] = None,
                  operator: Optional[HessianOperator] = None) -> float:
    r"""A randomized estimate of :math:`\operatorname{Tr}\nabla^2 L`.

    ``"krylov"`` (default) is flatlib's :func:`flatlib.lanczos.krylov_trace`: 30 % of the
    products build a Lanczos basis whose part of the trace is exact, the rest sample the
    remainder with projected Rademacher probes. Where a few outlying eigenvalues hold much of
    the Frobenius norm its error is two to three times smaller than plain Hutchinson's at 100
    products (the CNN and the wide MLP of ``benchmarks/curvature.py``); at 10 or 30 products,
    or where the trace is spread over a wide bulk, it is about the same. curvlinops' estimators
    are also available: ``"xtrace"`` (Epperly, Tropp & Webber 2024), ``"hutch++"`` (Meyer et al.
    2021) or plain ``"hutchinson"``. When ``num_matvecs`` reaches the dimension the trace is
    computed exactly from ``P`` products instead.
    ``"exact"`` uses no products: for the cross-entropy loss of a piecewise-linear (ReLU)
    network the Hessian's diagonal equals the Gauss–Newton diagonal, so the trace follows
    exactly from per-sample Jacobians (:func:`flatlib.lanczos.piecewise_linear_trace`; other
    models are refused).

    Args:
        num_matvecs: Hessian-vector products to spend (even for XTrace, a multiple of 3 for
            Hutch++; rounded down to the nearest valid number; at least 2 for ``"krylov"``;
            unused by ``"exact"``).
        method: ``"krylov"``, ``"xtrace"``, ``"hutch++"``, ``"hutchinson"`` or ``"exact"``.
        seed: seeds the random probes.
    """
    from curvlinops import hutchinson_trace, hutchpp_trace, xtrace

    methods = {"xtrace": (xtrace, 2), "hutch++": (hutchpp_trace, 3),
               "hutchinson": (hutchinson_trace, 1), "krylov": (None, 2), "exact": (None, 1)}
    if method not in methods:
        raise ValueError(f"method: expected one of {sorted(methods)}, got {method!r}")
    check_positive(num_matvecs, "num_matvecs", integer=True)
    if method == "exact":
        from .lanczos import piecewise_linear_trace

        if operator is not None:
            model, loss_fn, data = operator._source, operator.loss_fn, operator.batches
        return piecewise_linear_trace(model, loss_fn, data, dtype=dtype)
    H = operator or HessianOperator(model, loss_fn, data, dtype=dtype, eval_mode=eval_mode)
    P = H.shape[0]
    if num_matvecs >= P:
        return float(torch.trace(_dense_from_operator(H)))
    fn, multiple = methods[method]
    m = max(multiple, num_matvecs - num_matvecs % multiple)
    if method == "krylov":
        from .lanczos import krylov_trace

        def matvec(v: Tensor) -> Tensor:
            return H._matmat([v.to(device=H.device, dtype=H.dtype).unsqueeze(1)])[0][:, 0]

        return krylov_trace(matvec, P, max(2, num_matvecs), seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return float(fn(H, m))


def hessian_frobenius(model: nn.Module, loss_fn, data, num_matvecs: int = 30, seed: int = 0,
                      dtype: Optional[torch.dtype] = None, eval_mode: Optional[bool] = None,
                      operator: Optional[HessianOperator] = None) -> float:
    r"""An estimate of :math:`\lVert\nabla^2 L\rVert_F`, from
    :math:`\lVert H\rVert_F^2 = \mathbb{E}_v\lVert Hv\rVert^2` (Wu, Zhu & E 2017) with exact
    products and Rademacher probes (curvlinops' ``hutchinson_squared_fro``); exact when
    ``num_matvecs`` reaches the dimension.
    """
    from curvlinops import hutchinson_squared_fro

    check_positive(num_matvecs, "num_matvecs", integer=True)
    H = operator or HessianOperator(model, loss_fn, data, dtype=dtype, eval_mode=eval_mode)
    if num_matvecs >= H.shape[0]:
        return float(torch.linalg.matrix_norm(_dense_from_operator(H)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return float(hutchinson_squared_fro(H, num_matvecs)) ** 0.5


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


def spectral_density(model: nn.Module, loss_fn, data, num_lanczos: int = 60, num_repeats: int = 3,
                     num_points: int = 512, kappa: float = 3.0, margin: float = 0.05, seed: int = 0,
                     dtype: Optional[torch.dtype] = None, eval_mode: Optional[bool] = None,
                     operator: Optional[HessianOperator] = None):
    r"""The Hessian's spectral density by stochastic Lanczos quadrature (Papyan 2020).

    Runs ``num_repeats`` Lanczos iterations of ``num_lanczos`` steps from random unit vectors
    (curvlinops' ``fast_lanczos``), takes the spectral boundaries from their extreme Ritz values
    (so no separate eigen-solve is needed), and averages curvlinops' Gaussian-smoothed quadrature
    densities. Total cost: ``num_lanczos × num_repeats`` Hessian-vector products.

    Returns:
        ``(grid, density)`` NumPy arrays; the density integrates to about one over the grid.
    """
    with quiet_torch_func():
        from curvlinops.papyan2020traces.spectrum import (
            fast_lanczos, lanczos_approximate_spectrum_from_iter)

    check_positive(num_lanczos, "num_lanczos", integer=True)
    check_positive(num_repeats, "num_repeats", integer=True)
    H = operator or HessianOperator(model, loss_fn, data, dtype=dtype, eval_mode=eval_mode)
    num_lanczos = max(2, min(num_lanczos, H.shape[0] - 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        runs = [fast_lanczos(H, num_lanczos) for _ in range(num_repeats)]
    low = min(float(ev.min()) for ev, _ in runs)
    high = max(float(ev.max()) for ev, _ in runs)
    if high - low <= 1e-12 * max(1.0, abs(high)):
        low, high = low - 0.5, high + 0.5
    density = 0.0
    for run in runs:
        grid, d = lanczos_approximate_spectrum_from_iter(run, (low, high), num_points, kappa, margin)
        density = density + d / num_repeats
    return np.asarray(grid.cpu(), dtype=float), np.asarray(density.cpu(), dtype=float)


def input_hessian_top_eigenvalues(model: nn.Module, loss_fn, data,
                                  eval_mode: Optional[bool] = None) -> Tensor:
    r"""Per-sample λ_max of the Hessian of the loss with respect to the *input*,
    :math:`\lambda_{\max}(\nabla_x^2 \ell(f_\theta(x_i), y_i))` (Yao et al. 2018).

    Dense per-sample Hessians (``torch.func``), so meant for small inputs (MNIST-1D's 40).

    Returns:
        A tensor of ``N`` values; average it for the paper's figure.
    """
    from torch.func import functional_call, hessian, vmap

    batches = materialize(data)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    check_reduction(loss_fn)
    out = []
    with evaluation(model, eval_mode), quiet_torch_func():
        for X, y in batches:
            check_labels(model(X[:1]).detach(), y, loss_fn)

            def single(x, t):
                logits = functional_call(model, (params, buffers), (x.unsqueeze(0),))
                return loss_fn(logits, t.unsqueeze(0))

            Hs = vmap(hessian(single), in_dims=(0, 0))(X, y)
            d = X[0].numel()
            out.append(torch.linalg.eigvalsh(Hs.reshape(-1, d, d).double())[:, -1])
    return torch.cat(out)
