r"""Curvature of the full training loss: Hessian operator, eigenvalues, trace, norm, density.

The loss is the mean over the *whole* dataset,

.. math:: L(\theta) = \frac{1}{N}\sum_{i=1}^N \ell(f_\theta(x_i), y_i),

so when ``data`` comes in batches each batch's mean loss is weighted by its share of the
loss's normalizer (``n_b / N`` for a per-sample mean; see
:class:`~flatness.operators.HessianOperator` for class weights and ``ignore_index``).

:class:`HessianOperator` multiplies :math:`\nabla^2 L` onto vectors. It has the interface
curvlinops' public trace and Frobenius estimators use (``shape``, ``dtype``, ``device``, ``@``)
and exports to SciPy for ``eigsh``. Eigenvalues (also of a diagonal block), the Krylov trace
and the spectral density all run on the one Lanczos routine of :mod:`flatness.krylov`. A product is a double backward through a gradient graph
built once and kept (``retain=True``, the default), which avoids re-running the forward pass for
every product; ``retain=False`` rebuilds it per batch for data that do not fit in memory.

Every function evaluates the model in eval mode and restores the caller's mode; BatchNorm or
Dropout in train mode is refused unless ``eval_mode=True`` is passed. No function changes the
model's parameters.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from torch import Tensor, nn
from torch.func import functional_call, hessian, vmap

from .checks import (
    check_finite,
    check_labels,
    check_positive,
    check_reduction,
    evaluation,
    materialize,
    quiet_torch_func,
)
from .exact_trace import piecewise_linear_trace
from .krylov import (
    EigenResult,
    krylov_trace,
    lanczos,
    random_vector,
    ritz_error_estimates,
    slq_quadrature,
)
from .operators import BlockOperator, HessianOperator, _dense_from_operator

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
    For ``k ≥ 2`` it confirms the values by a restart orthogonal to the Krylov basis, which
    finds repeated eigenvalues. ``method="eigsh"`` uses SciPy's implicitly restarted Lanczos
    (ARPACK) instead, as a reference.

    Args:
        model, loss_fn, data: the network, a mean-reduced loss and the dataset.
        k: number of eigenvalues.
        tol: relative accuracy of the eigenvalues (ARPACK's ``tol`` for ``"eigsh"``).
        maxiter: product budget for ``"lanczos"`` (default ``min(P, max(200, 20k))``);
            ARPACK's restart limit for ``"eigsh"``.
        ncv: Lanczos basis size for ``"eigsh"``; unused by ``"lanczos"``, whose basis grows
            until it converges.
        seed: seeds the start vector (:func:`flatness.krylov.random_vector`).
        which: ``"LA"`` (largest algebraic, default), ``"LM"`` (largest magnitude) or ``"SA"``.
        return_eigenvectors: also return the eigenvectors.
        dtype: compute in this dtype on a copy.
        eval_mode: see :class:`HessianOperator`.
        operator: reuse an existing operator (its model, loss and data are used).
        method: ``"lanczos"`` (default) or ``"eigsh"``.

    Returns:
        An :class:`~flatness.krylov.EigenResult` (eigenvalues descending for ``"LA"``), with
        error estimates from the residuals.

    Raises:
        ValueError: ``k`` not in ``[1, P)``, an unknown ``method`` or ``which``, a ``maxiter``
            within which ARPACK converged no eigenvalue, and every error of
            :class:`HessianOperator`.
    """
    if method not in ("lanczos", "eigsh"):
        raise ValueError(f"method: expected 'lanczos' or 'eigsh', got {method!r}")
    if which not in ("LA", "LM", "SA"):
        raise ValueError(f"which: expected 'LA', 'LM' or 'SA', got {which!r}")
    H = operator or HessianOperator(model, loss_fn, data, dtype=dtype, eval_mode=eval_mode)
    P = H.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < P:
        raise ValueError(f"k: expected an integer in [1, {P - 1}], got {k!r}")
    if method == "lanczos":
        budget = min(P, max(200, 20 * k)) if maxiter is None else maxiter
        return lanczos(H, k=k, tol=tol, which=which, max_products=budget, seed=seed,
                       return_eigenvectors=return_eigenvectors)
    return _eigsh(H, k, tol, which, maxiter, ncv, seed, return_eigenvectors)


def _eigsh(H, k, tol, which, maxiter, ncv, seed, return_eigenvectors) -> EigenResult:
    """ARPACK on the operator, with residuals from ``k`` more products."""
    P = H.shape[0]
    start = H.products
    converged = True
    try:
        vals, vecs = eigsh(H.to_scipy(dtype=np.float64), k=k, which=which, tol=tol,
                           maxiter=maxiter, ncv=ncv, v0=random_vector(P, seed).numpy())
    except ArpackNoConvergence as err:
        converged = False
        vals, vecs = err.eigenvalues, err.eigenvectors
        if len(vals) == 0:
            raise ValueError(f"maxiter: ARPACK converged none of the k={k} eigenvalues within "
                             f"maxiter={maxiter} restarts; raise maxiter") from err
    vals, vecs = np.asarray(vals, dtype=float), np.asarray(vecs, dtype=float)
    order = np.argsort(-np.abs(vals) if which == "LM" else vals if which == "SA" else -vals,
                       kind="stable")
    vals, vecs = vals[order], vecs[:, order]
    V = torch.from_numpy(np.ascontiguousarray(vecs))
    residuals = torch.linalg.vector_norm(H @ V - V * torch.from_numpy(vals), dim=0).numpy()
    return EigenResult(vals, vecs if return_eigenvectors else None,
                       ritz_error_estimates(vals, residuals), residuals, H.products - start,
                       converged, "eigsh")


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
        return krylov_trace(H, num_matvecs=max(2, num_matvecs), seed=seed)
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

    Each of ``num_repeats`` Lanczos runs of ``m = num_lanczos`` steps from a random unit vector
    (:func:`flatness.krylov.slq_quadrature`, Gaussian probes, full reorthogonalization) gives
    nodes :math:`\theta_j` and weights :math:`w_j = S_{1j}^2` (summing to one) with
    :math:`q^\top f(H) q \approx \sum_j w_j f(\theta_j)`. The spectrum is mapped onto
    :math:`[-1, 1]` from :math:`[\lambda_- - \mu, \lambda_+ + \mu]`, where
    :math:`\lambda_\pm` are the extreme nodes of all runs and :math:`\mu` is ``margin`` times
    their distance, and each node becomes a Gaussian of width
    :math:`\sigma = 2 / ((m - 1)\sqrt{8\ln\kappa})` there (Papyan 2020's choice: neighbouring
    nodes of a resolution ``2/(m-1)`` overlap at height :math:`1/\kappa`):

    .. math:: \hat\phi(t) = \frac{1}{R}\sum_{r=1}^{R}\sum_j w^{(r)}_j\,
              \frac{1}{d}\,\mathcal N\!\Bigl(\frac{t - c}{d};\ \frac{\theta^{(r)}_j - c}{d},
              \sigma^2\Bigr),

    with :math:`c, d` the centre and half-width of the padded interval. It integrates to one
    over the real line (less the Gaussian tails beyond the grid), and its mean is
    :math:`\frac1R\sum_r q_r^\top H q_r`, an unbiased estimate of :math:`\operatorname{tr}H/P`.
    Total cost: ``num_lanczos × num_repeats`` Hessian-vector products.

    Args:
        model, loss_fn, data: as for :class:`HessianOperator`.
        num_lanczos: Lanczos steps per run (at most ``P - 1``, at least 2).
        num_repeats: number of runs :math:`R`.
        num_points: grid points (at least 2).
        kappa: the overlap parameter :math:`\kappa > 1`.
        margin: the relative padding of the grid (non-negative).
        seed: seeds the start vectors.
        dtype, eval_mode, operator: as for :func:`top_eigenvalues`.

    Returns:
        ``(grid, density)`` NumPy arrays.

    Raises:
        ValueError: bad ``num_lanczos``, ``num_repeats``, ``num_points``, ``kappa`` or
            ``margin``, and every error of :class:`HessianOperator`.
    """
    check_positive(num_lanczos, "num_lanczos", integer=True)
    check_positive(num_repeats, "num_repeats", integer=True)
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 2:
        raise ValueError(f"num_points: expected an integer ≥ 2, got {num_points!r}")
    if not (isinstance(kappa, (int, float)) and math.isfinite(kappa) and kappa > 1):
        raise ValueError(f"kappa: expected a number > 1 (the Gaussian width is "
                         f"2/((m-1)√(8 ln κ))), got {kappa!r}")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin: expected a non-negative number, got {margin!r}")
    H = operator or HessianOperator(model, loss_fn, data, dtype=dtype, eval_mode=eval_mode)
    m = max(2, min(num_lanczos, H.shape[0] - 1))
    nodes, weights, _, _ = slq_quadrature(H, m, num_repeats, seed=seed, distribution="gaussian")
    return _smoothed_density(nodes, weights, m, num_points, kappa, margin)


def _smoothed_density(nodes, weights, m: int, num_points: int, kappa: float, margin: float):
    """Gaussian-smoothed quadrature density on a grid (see :func:`spectral_density`)."""
    low = min(float(t.min()) for t in nodes)
    high = max(float(t.max()) for t in nodes)
    if high - low <= 1e-12 * max(1.0, abs(high)):
        low, high = low - 0.5, high + 0.5
    pad = margin * (high - low)
    low, high = low - pad, high + pad
    c, d = (high + low) / 2, (high - low) / 2
    grid_norm = np.linspace(-1.0, 1.0, num_points)
    sigma = 2.0 / (m - 1) / math.sqrt(8.0 * math.log(kappa))
    density = np.zeros(num_points)
    for theta, w in zip(nodes, weights):
        z = (grid_norm[None, :] - ((theta - c) / d)[:, None]) / sigma
        bumps = np.exp(-0.5 * z ** 2) / (sigma * math.sqrt(2 * math.pi))
        density += (w[:, None] * bumps).sum(0) / d
    return np.linspace(low, high, num_points), density / len(nodes)


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
    with torch.enable_grad(), evaluation(model, eval_mode), quiet_torch_func():
        for X, y in batches:
            check_labels(model(X[:1]).detach(), y, loss_fn)
            with torch.no_grad():
                check_finite(float(loss_fn(model(X), y)))

            def single(x, t):
                logits = functional_call(model, (params, buffers), (x.unsqueeze(0),))
                return loss_fn(logits, t.unsqueeze(0))

            Hs = vmap(hessian(single), in_dims=(0, 0))(X, y)
            bad = (~torch.isfinite(Hs.reshape(Hs.shape[0], -1))).any(1)
            if bool(bad.any()):
                raise ValueError(f"data: the input Hessian of sample {int(bad.nonzero()[0])} of "
                                 "a batch is not finite (check the inputs and the model)")
            d = X[0].numel()
            out.append(torch.linalg.eigvalsh(Hs.reshape(-1, d, d).double())[:, -1])
    return torch.cat(out)


def block_top_eigenvalues(model: nn.Module, loss_fn, data, block: slice, k: int = 1,
                          tol: float = 1e-6, seed: int = 0, return_eigenvectors: bool = False,
                          operator=None, max_products: Optional[int] = None,
                          return_result: bool = False):
    r"""The ``k`` largest eigenvalues of a diagonal block :math:`H_{bb}` of the Hessian.

    :math:`H_{bb} = R_b H R_b^\top` is the Hessian with respect to the parameters in ``block``
    (a slice of the flat vector, e.g. from :func:`parameter_slices`), the others held fixed;
    α-scale multiplies the block of layer :math:`k` by :math:`\alpha_k^{-2}`. The operator is
    :class:`~flatness.operators.BlockOperator` (one product of ``H`` per product, embedding by
    zeros and restricting), solved by :func:`flatness.krylov.lanczos`.

    Args:
        model, loss_fn, data: as for :class:`flatness.operators.HessianOperator`.
        block: a ``slice`` of the flat parameter vector.
        k: number of eigenvalues (``1 ≤ k < block size``).
        tol: relative accuracy of the eigenvalues.
        seed: seeds the start vector.
        return_eigenvectors: also return the unit eigenvectors (``block size × k``, NumPy).
        operator: an existing :class:`~flatness.operators.HessianOperator` of the model.
        max_products: product budget (default ``min(n, max(200, 20 k))``).
        return_result: return the :class:`~flatness.krylov.EigenResult` itself.

    Returns:
        The eigenvalues, descending (and the eigenvectors as columns), or the
        :class:`~flatness.krylov.EigenResult` with ``return_result=True``. A result that did
        not converge within the budget warns (``RuntimeWarning``).

    Raises:
        ValueError: ``block`` is not a contiguous slice, ``k`` out of range.
    """
    H = operator or HessianOperator(model, loss_fn, data)
    if not isinstance(block, slice) or block.step not in (None, 1):
        raise ValueError(f"block: expected a contiguous slice, got {block!r}")
    start, stop, _ = block.indices(H.shape[0])
    n = stop - start
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < n:
        raise ValueError(f"k: expected an integer in [1, {n - 1}] for a block of {n} "
                         f"parameters, got {k!r}")
    budget = min(n, max(200, 20 * k)) if max_products is None else max_products
    res = lanczos(BlockOperator(H, block), k=k, tol=tol, seed=seed, max_products=budget,
                  return_eigenvectors=return_eigenvectors)
    return _eigen_output(res, return_eigenvectors, return_result)


def _eigen_output(res: EigenResult, return_eigenvectors: bool, return_result: bool):
    """The array (or ``(values, vectors)``) view of a result, warning if it did not converge."""
    if not res.converged:
        warnings.warn(f"the eigenvalues did not converge within {res.products} products "
                      f"(error estimates {res.error_estimates}); raise max_products",
                      RuntimeWarning, stacklevel=3)
    if return_result:
        return res
    return (res.eigenvalues, res.eigenvectors) if return_eigenvectors else res.eigenvalues


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
