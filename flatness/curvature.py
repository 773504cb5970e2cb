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

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn
from torch.func import functional_call, hessian, vmap

from .checks import (
    check_labels,
    check_positive,
    check_reduction,
    evaluation,
    materialize,
    quiet_torch_func,
)
from .exact_trace import piecewise_linear_trace
from .krylov import krylov_trace, lanczos
from .operators import HessianOperator, _dense_from_operator

with quiet_torch_func():  # curvlinops imports linear_operator, which calls torch.jit.script
    from curvlinops import (
        hutchinson_squared_fro,
        hutchinson_trace,
        hutchpp_trace,
        xtrace,
    )


__all__ = ["EigenResult", "top_eigenvalues", "hessian_trace", "hessian_frobenius",
           "spectral_density", "input_hessian_top_eigenvalues", "block_top_eigenvalues",
           "SharpnessTracker"]


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

    By default flatness's Lanczos iteration with full reorthogonalization
    (:func:`flatness.krylov.lanczos`), which stops as soon as every wanted eigenvalue meets the
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
        budget = min(P, max(200, 20 * k)) if maxiter is None else maxiter

        def matvec(v: Tensor) -> Tensor:
            return H._matmat([v.to(device=H.device, dtype=H.dtype).unsqueeze(1)])[0][:, 0]

        res = lanczos(matvec, P, k=k, tol=tol, which=which, max_products=budget,
                      v0=torch.from_numpy(_start_vector(P, seed)),
                      return_eigenvectors=return_eigenvectors)
        vals, vecs, converged = res.eigenvalues, res.eigenvectors, res.converged
    else:
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

    ``"krylov"`` (default) is flatness's :func:`flatness.krylov.krylov_trace`: 30 % of the
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
    exactly from per-sample Jacobians (:func:`flatness.exact_trace.piecewise_linear_trace`; other
    models are refused).

    Args:
        num_matvecs: Hessian-vector products to spend (even for XTrace, a multiple of 3 for
            Hutch++; rounded down to the nearest valid number; at least 2 for ``"krylov"``;
            unused by ``"exact"``).
        method: ``"krylov"``, ``"xtrace"``, ``"hutch++"``, ``"hutchinson"`` or ``"exact"``.
        seed: seeds the random probes.
    """
    methods = {"xtrace": (xtrace, 2), "hutch++": (hutchpp_trace, 3),
               "hutchinson": (hutchinson_trace, 1), "krylov": (None, 2), "exact": (None, 1)}
    if method not in methods:
        raise ValueError(f"method: expected one of {sorted(methods)}, got {method!r}")
    check_positive(num_matvecs, "num_matvecs", integer=True)
    if method == "exact":
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
    check_positive(num_matvecs, "num_matvecs", integer=True)
    H = operator or HessianOperator(model, loss_fn, data, dtype=dtype, eval_mode=eval_mode)
    if num_matvecs >= H.shape[0]:
        return float(torch.linalg.matrix_norm(_dense_from_operator(H)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return float(hutchinson_squared_fro(H, num_matvecs)) ** 0.5


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
            fast_lanczos,
            lanczos_approximate_spectrum_from_iter,
        )

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


def block_top_eigenvalues(model: nn.Module, loss_fn, data, block: slice, k: int = 1,
                          tol: float = 1e-6, seed: int = 0, return_eigenvectors: bool = False,
                          operator=None):
    r"""The ``k`` largest eigenvalues of a diagonal block :math:`H_{bb}` of the Hessian.

    :math:`H_{bb}` is the Hessian with respect to the parameters in ``block`` (a slice of the
    flat vector, e.g. from :func:`parameter_slices`), the others held fixed; α-scale multiplies
    the block of layer :math:`k` by :math:`\alpha_k^{-2}`. Lanczos (SciPy's ``eigsh``) on
    products :math:`H_{bb}x = (H\,[0; x; 0])_b`.

    Args:
        model, loss_fn, data: as for :class:`flatness.operators.HessianOperator`.
        block: a ``slice`` of the flat parameter vector.
        k: number of eigenvalues (``1 ≤ k < block size``).
        tol: ARPACK's relative tolerance.
        seed: seeds the start vector.
        return_eigenvectors: also return the unit eigenvectors (``block size × k``, NumPy).
        operator: an existing :class:`~flatness.operators.HessianOperator` of the model.

    Returns:
        The eigenvalues, descending (and the eigenvectors as columns).
    """
    H = operator or HessianOperator(model, loss_fn, data)
    P = H.shape[0]
    if not isinstance(block, slice) or block.step not in (None, 1):
        raise ValueError(f"block: expected a contiguous slice, got {block!r}")
    start, stop, _ = block.indices(P)
    n = stop - start
    if not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k: expected an integer in [1, {n - 1}] for a block of {n} "
                         f"parameters, got {k!r}")

    def matvec(x):
        v = torch.zeros(P, dtype=H.dtype, device=H.device)
        v[start:stop] = torch.as_tensor(np.asarray(x).reshape(-1), dtype=H.dtype)
        return (H @ v)[start:stop].double().cpu().numpy()

    v0 = np.random.default_rng(seed).standard_normal(n)
    A = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    vals, vecs = eigsh(A, k=k, which="LA", tol=tol, v0=v0)
    order = np.argsort(vals)[::-1]
    return (vals[order], vecs[:, order]) if return_eigenvectors else vals[order]


class SharpnessTracker:
    r"""A :func:`flatness.training.train` callback that records :math:`\lambda_{\max}` of the
    full training loss during training.

    It records at the start (epoch 0), after every ``every``-th epoch and after the last epoch,
    as ``[epoch, λ_max]`` pairs under ``history["lambda_max"]``; each value is the top Hessian
    eigenvalue of the cross-entropy on ``train_data``, in eval mode, to relative accuracy
    ``tol``.

    Args:
        train_data: the ``(X, y)`` training pair.
        every: record every that many epochs (a positive integer).
        loss_fn: the loss (default ``nn.CrossEntropyLoss()``, the loss :func:`train` minimizes).
        tol: relative accuracy of each λ_max.
    """

    def __init__(self, train_data, every: int, loss_fn=None, tol: float = 1e-3):
        check_positive(every, "every", integer=True)
        self.data, self.every, self.tol = train_data, every, tol
        self.loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn

    def _record(self, epoch: int, model: nn.Module, history: dict) -> None:
        res = top_eigenvalues(model, self.loss_fn, self.data, k=1, tol=self.tol, eval_mode=True)
        history.setdefault("lambda_max", []).append([epoch, float(res.eigenvalues[0])])

    def start(self, model: nn.Module, history: dict) -> None:
        history["lambda_max"] = []
        self._record(0, model, history)

    def __call__(self, epoch: int, model: nn.Module, history: dict) -> None:
        if epoch % self.every == 0:
            self._record(epoch, model, history)

    def end(self, epoch: int, model: nn.Module, history: dict) -> None:
        if not history["lambda_max"] or history["lambda_max"][-1][0] != epoch:
            self._record(epoch, model, history)
