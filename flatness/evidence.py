r"""The Bayesian evidence of a minimum in the Laplace approximation, and its Occam factor.

Smith & Le (2018), following MacKay (1992), score a trained model by the evidence
:math:`P(y \mid x)` that its training labels give it. With a Gaussian prior
:math:`\omega \sim \mathcal N(0, \lambda^{-1} I)` on the :math:`p` parameters, the objective

.. math::

   C(\omega) = -\sum_{i=1}^N \ln P(y_i \mid \omega, x_i) + \frac{\lambda}{2}\lVert\omega\rVert^2

is the negative log posterior up to a constant, and a second-order expansion of :math:`C`
around its minimum :math:`\omega_0` gives

.. math::

   \ln P(y \mid x) \approx -C(\omega_0) - \frac12 \sum_{i=1}^{p} \ln\frac{\lambda_i}{\lambda},

where :math:`\lambda_i` are the eigenvalues of :math:`\nabla\nabla C(\omega_0)`. The second term
is the log of the *Occam factor* :math:`\lambda^{p/2} / |\nabla\nabla C(\omega_0)|^{1/2}`: it
penalizes sharp minima. It is exact when :math:`C` is quadratic (a linear model with a Gaussian
likelihood).

* :func:`laplace_log_evidence` computes it at a minimum, exactly (dense Hessian, ``eigh``) for
  small models or with a stochastic log-determinant (:func:`flatness.krylov.stochastic_logdet`, stochastic
  Lanczos quadrature) for larger ones, and refuses points that are not minima.
* :func:`fit_map` finds :math:`\omega_0` by full-batch L-BFGS in float64.
* :func:`null_log_evidence` is the evidence :math:`N \ln(1/n)` of the model that assigns
  probability :math:`1/n` to each of :math:`n` classes.

Losses must be *mean-reduced negative log-likelihoods* of one sample (``nn.CrossEntropyLoss``,
``nn.BCEWithLogitsLoss`` or :class:`GaussianNLLLoss`), so that :math:`N` times the loss is the
summed negative log-likelihood. A squared error without its noise variance is not one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .checks import (
    check_data_matches_model,
    check_finite,
    check_labels,
    check_model,
    check_positive,
    check_reduction,
    evaluation,
    is_real,
    materialize,
    num_samples,
    trainable_parameters,
)
from .krylov import stochastic_logdet
from .operators import HessianOperator
from .params import ParameterLayout

__all__ = ["GaussianNLLLoss", "per_parameter_precision", "map_objective", "MapFit", "fit_map",
           "log_occam_factor", "null_log_evidence", "Evidence", "laplace_log_evidence",
           "laplace_ggn_log_evidence", "LaplaceIntegral", "laplace_log_integral",
           "reparametrized_log_density", "ImportanceEvidence", "importance_log_evidence",
           "annealed_log_evidence", "grid_log_integral"]


class GaussianNLLLoss(nn.Module):
    r"""Mean negative log-likelihood of a Gaussian with a known noise standard deviation.

    .. math:: \ell(f, y) = \frac{(y - f)^2}{2\sigma^2} + \frac12\ln(2\pi\sigma^2)

    Unlike ``nn.MSELoss`` this is a proper log-likelihood (the variance and the constant are
    included), so :func:`laplace_log_evidence` returns the exact evidence of Bayesian linear
    regression with it.

    Args:
        sigma: the noise standard deviation σ > 0.

    >>> loss = GaussianNLLLoss(sigma=1.0)
    >>> round(float(loss(torch.zeros(2), torch.zeros(2))), 6)  # ½ ln 2π
    0.918939
    """

    reduction = "mean"

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        check_positive(sigma, "sigma")
        self.sigma = float(sigma)

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        if output.shape != target.shape:
            raise ValueError(f"output, target: expected equal shapes, got {tuple(output.shape)} "
                             f"and {tuple(target.shape)}")
        r = (target - output) / self.sigma
        per_sample = 0.5 * r.pow(2).reshape(len(r), -1).sum(1)
        const = 0.5 * math.log(2 * math.pi * self.sigma ** 2) * (r[0].numel() if r.ndim > 1 else 1)
        return per_sample.mean() + const


def _check_precision(prior_precision, name: str = "prior_precision") -> float:
    """A positive finite real number (Python or NumPy scalar, not bool) as a float."""
    if not is_real(prior_precision) or not math.isfinite(prior_precision) \
            or prior_precision <= 0:
        raise ValueError(f"{name}: expected a positive number λ, got {prior_precision!r}")
    return float(prior_precision)


def _precision_vector(prior_precision, P: int, device=None) -> Tensor:
    """λ as a float64 vector of length P on ``device`` (default the CPU), from a positive
    number or P positive numbers."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if isinstance(prior_precision, (Tensor, np.ndarray, list, tuple)):
        if isinstance(prior_precision, Tensor):
            lam = prior_precision.detach().to(device=device, dtype=torch.float64).reshape(-1)
        else:
            try:
                values = np.asarray(prior_precision, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError("prior_precision: expected a number or a vector of numbers, "
                                 f"got {prior_precision!r}") from None
            lam = torch.as_tensor(values, device=device).reshape(-1)
        if lam.numel() != P:
            raise ValueError(f"prior_precision: expected a number or a vector of {P} precisions "
                             f"(one per parameter), got {lam.numel()} values")
        if not bool(torch.isfinite(lam).all()) or bool((lam <= 0).any()):
            raise ValueError("prior_precision: expected positive finite precisions")
        return lam
    return torch.full((P,), _check_precision(prior_precision), dtype=torch.float64, device=device)


def _describe(lam: Tensor):
    """A float when the prior is isotropic, else a NumPy array."""
    return float(lam[0]) if bool((lam == lam[0]).all()) else lam.numpy()


def per_parameter_precision(model: nn.Module, prior_precision: float,
                            scale: Optional[Dict[str, float]] = None) -> Tensor:
    """A vector of prior precisions, one per trainable scalar of ``model`` (in ``parameters()``
    order): ``prior_precision`` times ``scale[name]`` for the parameters named in ``scale``.

    This is the prior that a reparametrization carries along: if the parameter ``θ`` becomes
    ``a·θ``, a prior of precision ``λ`` on ``θ`` is a prior of precision ``λ/a²`` on
    ``a·θ``.

    >>> net = nn.Sequential(nn.Linear(2, 1))
    >>> per_parameter_precision(net, 2.0, {"0.bias": 0.25}).tolist()
    [2.0, 2.0, 0.5]
    """
    base = _check_precision(prior_precision)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    scale = dict(scale or {})
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    unknown = set(scale) - {n for n, _ in named}
    if unknown:
        raise ValueError(f"scale: unknown parameter names {sorted(unknown)}; expected names from "
                         f"{[n for n, _ in named]}")
    parts = []
    for n, p in named:
        factor = _check_precision(scale[n], f"scale[{n!r}]") if n in scale else 1.0
        parts.append(torch.full((p.numel(),), base * factor, dtype=torch.float64, device=p.device))
    if not parts:
        raise ValueError("model: it has no parameters that require gradients")
    return torch.cat(parts)


def _float64_copy(model: nn.Module, data):
    batches = materialize(data)
    model64 = copy.deepcopy(model).to(torch.float64)
    batches = [(X.to(torch.float64) if X.is_floating_point() else X,
                y.to(torch.float64) if y.is_floating_point() else y) for X, y in batches]
    return model64, batches


def _objective_and_gradient(model: nn.Module, loss_fn, batches, lam: Tensor, N: int,
                            need_grad: bool = True):
    """C(ω) = Σ_b n_b · mean loss_b + ½ Σ_j λ_j ω_j² and its flat gradient (float64)."""
    params, layout = trainable_parameters(model), ParameterLayout(model)
    total = torch.zeros((), dtype=torch.float64)
    grads = [torch.zeros_like(p) for p in params] if need_grad else None
    for X, y in batches:
        with torch.set_grad_enabled(need_grad):
            out = model(X)
            check_labels(out, y, loss_fn)
            nll = loss_fn(out, y) * X.shape[0]
        if need_grad:
            g = torch.autograd.grad(nll, params)
            for acc, gi in zip(grads, g):
                acc += gi
        total = total + nll.detach().to(torch.float64)
    w = layout.to_vector(model, "model")
    value = float(total) + 0.5 * float((lam * w * w).sum())
    if not need_grad:
        return value, None
    flat = layout.to_vector(dict(zip(layout.names, grads)), "gradient") + lam * w
    return value, flat


def map_objective(model: nn.Module, loss_fn, data, prior_precision: float,
                  eval_mode: Optional[bool] = None) -> float:
    r"""The MAP objective :math:`C(\omega)` at the model's parameters, in float64.

    .. math:: C(\omega) = N\,\bar\ell(\omega) + \frac{\lambda}{2}\lVert\omega\rVert^2

    with :math:`\bar\ell` the mean loss over the ``N`` samples (the summed negative
    log-likelihood, not the mean, as in Smith & Le 2018).

    Args:
        model: the network (not changed).
        loss_fn: a mean-reduced per-sample negative log-likelihood.
        data: an ``(X, y)`` pair or an iterable of pairs.
        prior_precision: λ > 0, or a vector of per-parameter precisions.
        eval_mode: see :func:`flatness.checks.evaluation`.

    >>> net = nn.Linear(2, 1, bias=False)
    >>> _ = net.weight.data.fill_(1.0)
    >>> X, y = torch.zeros(3, 2), torch.zeros(3, 1)
    >>> round(map_objective(net, GaussianNLLLoss(1.0), (X, y), prior_precision=2.0), 4)
    4.7568
    """
    check_reduction(loss_fn)
    model64, batches = _float64_copy(model, data)
    params = trainable_parameters(model64)
    lam = _precision_vector(prior_precision, sum(p.numel() for p in params), device=params[0].device)
    with evaluation(model64, eval_mode):
        value, _ = _objective_and_gradient(model64, loss_fn, batches, lam,
                                           num_samples(batches), need_grad=False)
    return check_finite(value, "objective C(ω)")


@dataclass
class MapFit:
    """Result of :func:`fit_map`.

    Attributes:
        model: a float64 copy of the model at the minimum found (eval mode).
        objective: :math:`C(\\omega_0)`.
        gradient_norm: :math:`\\lVert\\nabla C(\\omega_0)\\rVert_2`.
        iterations: L-BFGS iterations used.
        converged: whether the gradient norm reached ``grad_tol``.
    """

    model: nn.Module
    objective: float
    gradient_norm: float
    iterations: int
    converged: bool


def fit_map(model: nn.Module, loss_fn, data, prior_precision: float, max_iter: int = 2000,
            grad_tol: float = 1e-6, history_size: int = 50,
            eval_mode: Optional[bool] = None) -> MapFit:
    r"""Minimize :math:`C(\omega)` by full-batch L-BFGS (strong Wolfe line search) in float64.

    Starts from the model's parameters and works on a float64 copy: the model passed in is
    not changed.

    Args:
        model: the network, used as the starting point.
        loss_fn: a mean-reduced per-sample negative log-likelihood.
        data: an ``(X, y)`` pair or an iterable of pairs (the full training set).
        prior_precision: λ > 0, or a vector of per-parameter precisions.
        max_iter: the most L-BFGS iterations.
        grad_tol: stop when :math:`\lVert\nabla C\rVert_2` falls below this.
        history_size: L-BFGS memory.
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        A :class:`MapFit`.

    Raises:
        ValueError: bad arguments or a non-finite objective.

    >>> X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    >>> y = (X[:, 0] > 0).float()
    >>> net = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    >>> fit = fit_map(net, nn.BCEWithLogitsLoss(), (X, y), prior_precision=1.0)
    >>> fit.converged, fit.gradient_norm < 1e-6
    (True, True)
    """
    check_reduction(loss_fn)
    check_positive(max_iter, "max_iter", integer=True)
    check_positive(grad_tol, "grad_tol")
    model64, batches = _float64_copy(model, data)
    N = num_samples(batches)
    params, layout = trainable_parameters(model64), ParameterLayout(model64)
    lam = _precision_vector(prior_precision, layout.numel, device=params[0].device)
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, max_eval=4 * max_iter,
                            tolerance_grad=0.0, tolerance_change=0.0,
                            history_size=history_size, line_search_fn="strong_wolfe")
    state = {"grad_norm": math.inf}

    def closure():
        opt.zero_grad(set_to_none=False)
        value, flat = _objective_and_gradient(model64, loss_fn, batches, lam, N)
        check_finite(value, "objective C(ω)")
        state["grad_norm"] = float(flat.norm())
        for p, g in zip(params, layout.to_dict(flat).values()):
            p.grad = g.clone()
        # L-BFGS stops when the largest gradient entry is below tolerance_grad; we want the
        # Euclidean norm below grad_tol, so report a zero gradient once it is reached.
        if state["grad_norm"] <= grad_tol:
            for p in params:
                p.grad.zero_()
        return torch.tensor(value, dtype=torch.float64)

    with evaluation(model64, eval_mode):
        iterations = 0
        # Restart L-BFGS a few times: its line search can stall on a curved valley.
        for _ in range(5):
            opt.step(closure)
            iterations += int(opt.state[opt._params[0]].get("n_iter", 0))
            if state["grad_norm"] <= grad_tol or iterations >= max_iter:
                break
            opt.state.clear()
        value, flat = _objective_and_gradient(model64, loss_fn, batches, lam, N)
    for p in params:
        p.grad = None
    model64.eval()
    gnorm = float(flat.norm())
    return MapFit(model64, check_finite(value, "objective C(ω)"), gnorm, int(iterations),
                  gnorm <= grad_tol)


def log_occam_factor(eigenvalues, prior_precision: float) -> float:
    r"""The log Occam factor :math:`\ln\bigl(\lambda^{p/2}/|\nabla\nabla C|^{1/2}\bigr)` from the
    eigenvalues :math:`\lambda_i` of :math:`\nabla\nabla C(\omega_0)`:

    .. math:: \ln \text{Occam} = -\frac12\sum_{i=1}^p \ln\frac{\lambda_i}{\lambda}.

    Args:
        eigenvalues: the ``p`` eigenvalues (all positive).
        prior_precision: λ > 0, or a vector of ``p`` precisions :math:`\lambda_j` (then the
            sum is :math:`\sum_i \ln\lambda_i - \sum_j \ln\lambda_j`).

    Raises:
        ValueError: a non-positive eigenvalue (the point is not a minimum, and the Laplace
            approximation has no Gaussian to integrate).

    >>> round(log_occam_factor([1.0, 4.0, 1.0], prior_precision=1.0), 6)  # -½ ln 4
    -0.693147
    """
    ev = np.asarray(eigenvalues, dtype=np.float64).ravel()
    if ev.size == 0:
        raise ValueError("eigenvalues: expected at least one eigenvalue")
    lam = _precision_vector(prior_precision, ev.size).numpy()
    if not np.all(np.isfinite(ev)):
        raise ValueError("eigenvalues: expected finite values")
    if ev.min() <= 0:
        raise ValueError(f"eigenvalues: {int((ev <= 0).sum())} of {ev.size} are not positive "
                         f"(smallest {ev.min():.3g}); the Laplace approximation needs a minimum "
                         "with a positive-definite ∇∇C")
    return float(-0.5 * (np.sum(np.log(ev)) - np.sum(np.log(lam))))


def null_log_evidence(num_samples: int, num_classes: int) -> float:
    r"""The log evidence :math:`N\ln(1/n)` of the null model that predicts every one of
    ``num_classes`` classes with probability :math:`1/n` (it has no parameters).

    >>> round(null_log_evidence(100, 2), 4)
    -69.3147
    """
    check_positive(num_samples, "num_samples", integer=True)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes: expected an integer ≥ 2, got {num_classes!r}")
    return -num_samples * math.log(num_classes)


@dataclass
class Evidence:
    r"""Result of :func:`laplace_log_evidence`; every term is in nats.

    Attributes:
        log_evidence: :math:`\ln P(y\mid x) \approx -C(\omega_0) + \ln\text{Occam}`.
        log_occam_factor: :math:`-\frac12\sum_i\ln(\lambda_i/\lambda)`.
        objective: :math:`C(\omega_0)`.
        neg_log_likelihood: the summed negative log-likelihood at :math:`\omega_0`.
        penalty: :math:`\frac{\lambda}{2}\lVert\omega_0\rVert^2`.
        prior_precision: λ (an array for a diagonal prior).
        num_parameters: ``p``.
        num_samples: ``N``.
        gradient_norm: :math:`\lVert\nabla C(\omega_0)\rVert_2`.
        min_eigenvalue: the smallest eigenvalue of :math:`\nabla\nabla C` (exact), or the smallest
            Ritz value seen by stochastic Lanczos quadrature (an upper bound on it).
        method: ``"exact"`` or ``"slq"``.
        stderr: the standard error of ``log_evidence`` (0 for ``"exact"``).
        newton_decrement: :math:`\frac12 g^\top(\nabla\nabla C)^{-1}g` for the residual gradient
            :math:`g` (``"exact"`` only, else ``nan``): how far the quadratic model's maximum lies
            above the point's value, so a bound on the bias a non-zero gradient causes.
        eigenvalues: all eigenvalues of :math:`\nabla\nabla C` (``"exact"`` only).
    """

    log_evidence: float
    log_occam_factor: float
    objective: float
    neg_log_likelihood: float
    penalty: float
    prior_precision: float
    num_parameters: int
    num_samples: int
    gradient_norm: float
    min_eigenvalue: float
    method: str
    stderr: float = 0.0
    newton_decrement: float = math.nan
    eigenvalues: Optional[np.ndarray] = field(default=None, repr=False)

    def log_ratio_to_null(self, num_classes: int) -> float:
        """:math:`\\ln P(y\\mid x) - N\\ln(1/n)`: positive when the evidence favours the model
        over guessing uniformly among ``num_classes`` classes."""
        return self.log_evidence - null_log_evidence(self.num_samples, num_classes)


def _hessian_of_mean_loss(model64: nn.Module, loss_fn, batches, eval_mode):
    # an iterator of batches: a list of exactly two (X, y) batches would read as one pair
    return HessianOperator(model64, loss_fn, iter(batches), eval_mode=eval_mode)


def laplace_log_evidence(model: nn.Module, loss_fn, data, prior_precision: float,
                         method: str = "auto", grad_tol: float = 1e-3, max_exact: int = 3000,
                         num_probes: int = 10, num_lanczos: int = 80, seed: int = 0,
                         eval_mode: Optional[bool] = None) -> Evidence:
    r"""The Laplace approximation of the log evidence of ``model`` at its MAP point.

    .. math::

       \ln P(y \mid x) \approx -C(\omega_0) - \frac12\sum_{i=1}^{p}\ln\frac{\lambda_i}{\lambda},
       \qquad \nabla\nabla C(\omega_0) = N\,\nabla^2\bar\ell(\omega_0) + \lambda I,

    (Smith & Le 2018; MacKay 1992), with :math:`\lambda_i` the eigenvalues of
    :math:`\nabla\nabla C(\omega_0)`. The model's parameters must be a minimum of :math:`C` for
    this ``prior_precision`` (use :func:`fit_map`). Everything is computed in float64 on a copy.

    Args:
        model: the network at :math:`\omega_0` (not changed).
        loss_fn: a mean-reduced per-sample negative log-likelihood (``nn.CrossEntropyLoss``,
            ``nn.BCEWithLogitsLoss``, :class:`GaussianNLLLoss`).
        data: the training set, an ``(X, y)`` pair or an iterable of pairs.
        prior_precision: λ > 0, the precision of the Gaussian prior
            :math:`\mathcal N(0,\lambda^{-1}I)`,
            or a vector of ``p`` precisions :math:`\lambda_j` for a diagonal prior (see
            :func:`per_parameter_precision`); then :math:`\lambda^{p/2}` becomes
            :math:`\prod_j \lambda_j^{1/2}` and :math:`\lambda I` becomes
            :math:`\operatorname{diag}(\lambda_j)`. A reparametrization that carries the prior
            along leaves the result unchanged.
        method: ``"exact"`` (dense Hessian and ``eigh``), ``"slq"`` (stochastic Lanczos
            quadrature on Hessian-vector products) or ``"auto"`` (exact up to ``max_exact``
            parameters).
        grad_tol: refuse the point if :math:`\lVert\nabla C(\omega_0)\rVert_2` exceeds this. A
            residual gradient :math:`g` biases the Laplace value by about
            :math:`\frac12 g^\top(\nabla\nabla C)^{-1}g \le \lVert g\rVert^2/(2\lambda_{\min})`
            (reported as ``newton_decrement``). The MAP point of a ReLU network often lies on a
            kink, where some sample sits exactly on a unit's hinge and the gradient does not
            vanish; raise ``grad_tol`` there knowingly and report the decrement.
        max_exact: the largest ``p`` for ``"auto"`` to choose the dense method.
        num_probes, num_lanczos, seed: the options of :func:`stochastic_logdet` (``"slq"``).
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        An :class:`Evidence`.

    Raises:
        TypeError: ``model`` not a module, inputs of a dtype the model cannot take.
        ValueError: ``prior_precision`` not positive, an unknown ``method``, a loss that is not
            mean-reduced, labels the likelihood cannot score (see
            :func:`flatness.checks.check_labels` with ``likelihood=True``: class labels outside
            ``[0, C)`` or equal to ``ignore_index``, binary labels other than 0 and 1,
            non-finite targets), a point that is not a minimum (gradient norm above ``grad_tol``), or a
            Hessian :math:`\nabla\nabla C(\omega_0)` with a non-positive eigenvalue (or Ritz
            value), which the Laplace approximation cannot use.

    >>> X = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    >>> y = (X[:, 0] > 0).float()
    >>> net = nn.Sequential(nn.Linear(2, 1), nn.Flatten(0))
    >>> fit = fit_map(net, nn.BCEWithLogitsLoss(), (X, y), prior_precision=1.0)
    >>> ev = laplace_log_evidence(fit.model, nn.BCEWithLogitsLoss(), (X, y), 1.0)
    >>> ev.log_ratio_to_null(2) > 0, ev.log_occam_factor < 0
    (True, True)
    """
    check_reduction(loss_fn)
    if method not in ("auto", "exact", "slq"):
        raise ValueError(f"method: expected 'auto', 'exact' or 'slq', got {method!r}")
    check_positive(grad_tol, "grad_tol")
    check_model(model)
    model64, batches = _float64_copy(model, data)
    N = num_samples(batches)
    params = trainable_parameters(model64)
    P = sum(p.numel() for p in params)
    device = params[0].device
    lam = _precision_vector(prior_precision, P, device=device)
    if method == "auto":
        method = "exact" if P <= max_exact else "slq"
    with evaluation(model64, eval_mode), torch.no_grad():
        for X, y in batches:  # the likelihood of discrete labels needs labels it can score
            check_data_matches_model(model64, X)
            check_labels(model64(X), y, loss_fn, likelihood=True)
    with evaluation(model64, eval_mode):
        objective, grad = _objective_and_gradient(model64, loss_fn, batches, lam, N)
    check_finite(objective, "objective C(ω)")
    w = torch.cat([p.detach().reshape(-1) for p in params])
    penalty = 0.5 * float((lam * w * w).sum())
    gnorm = float(grad.norm())
    if not gnorm <= grad_tol:
        raise ValueError("model: the parameters are not a minimum of C(ω) for this "
                         f"prior_precision: ‖∇C‖ = {gnorm:.3g} > grad_tol = {grad_tol:g}; "
                         "the Laplace approximation "
                         "expands around a minimum (fit one with flatness.evidence.fit_map)")
    H = _hessian_of_mean_loss(model64, loss_fn, batches, eval_mode)
    eigenvalues, stderr, decrement = None, 0.0, math.nan
    if method == "exact":
        eye = torch.eye(P, dtype=torch.float64, device=device)
        D = torch.cat([H @ eye[:, i:i + 256] for i in range(0, P, 256)], 1)
        D = N * (D + D.T) / 2 + torch.diag(lam)
        eigenvalues = torch.linalg.eigvalsh(D).cpu().numpy()
        min_eig = float(eigenvalues[0])
        if min_eig <= 0:
            raise ValueError(
                f"model: ∇∇C(ω₀) has {int((eigenvalues <= 0).sum())} "
                "non-positive eigenvalue(s) "
                f"(smallest {min_eig:.3g}); the point is not a strict minimum and the Laplace "
                "approximation cannot use it")
        occam = log_occam_factor(eigenvalues, lam.cpu())
        decrement = 0.5 * float(grad @ torch.linalg.solve(D, grad))
    else:
        def matvec(v: Tensor) -> Tensor:
            return N * (H @ v) + lam * v

        try:
            est = stochastic_logdet(matvec, P, num_probes=num_probes, num_lanczos=num_lanczos,
                                    seed=seed)
        except ValueError as err:
            raise ValueError(f"model: ∇∇C(ω₀) is not positive definite ({err}); the Laplace "
                             "approximation cannot use this point") from err
        min_eig = est.ritz_min
        occam = -0.5 * (est.value - float(torch.log(lam).sum()))
        stderr = 0.5 * est.stderr
    H.release()
    return Evidence(log_evidence=-objective + occam, log_occam_factor=occam, objective=objective,
                    neg_log_likelihood=objective - penalty, penalty=penalty,
                    prior_precision=_describe(lam.cpu()),
                    num_parameters=P, num_samples=N, gradient_norm=gnorm,
                    min_eigenvalue=min_eig, method=method, stderr=stderr,
                    newton_decrement=decrement, eigenvalues=eigenvalues)


def _dense_ggn_of_mean_loss(model64: nn.Module, loss_fn, batches, eval_mode) -> Tensor:
    r"""The dense generalized Gauss–Newton matrix of the mean loss,
    :math:`G = \frac1N\sum_i J_i^\top \nabla^2_f\ell_i\, J_i`, from per-sample Jacobians
    (``torch.func.jacrev``) and per-sample output Hessians of the loss (``torch.func.hessian``),
    float64. Tested against curvlinops' ``GGNLinearOperator``."""
    import warnings

    with warnings.catch_warnings():  # torch.func's first use imports modules that warn about torch.jit
        warnings.simplefilter("ignore", FutureWarning)
        from torch.func import functional_call, hessian, jacrev, vmap
        return _dense_ggn(model64, loss_fn, batches, eval_mode, functional_call, hessian, jacrev, vmap)


def _dense_ggn(model64, loss_fn, batches, eval_mode, functional_call, hessian, jacrev, vmap) -> Tensor:
    names = [n for n, p in model64.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model64.named_parameters() if p.requires_grad}
    P = sum(p.numel() for p in params.values())
    G = torch.zeros(P, P, dtype=torch.float64, device=next(iter(params.values())).device)
    N = 0
    with evaluation(model64, eval_mode):
        for X, y in batches:
            f = lambda prm, x: functional_call(model64, prm, (x,))  # noqa: E731
            out = f(params, X)
            n = out.shape[0]
            J = jacrev(f)(params, X)
            J = torch.cat([J[k].reshape(n, -1, params[k].numel()) for k in names], 2)  # (n, k, P)
            per_sample = lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0))  # noqa: E731
            Hf = vmap(hessian(per_sample))(out.detach(), y).reshape(n, J.shape[1], J.shape[1])
            G += torch.einsum("nkp,nkl,nlq->pq", J, Hf, J)
            N += n
    G = G / N
    return (G + G.T) / 2


def laplace_ggn_log_evidence(model: nn.Module, loss_fn, data, prior_precision: float,
                             grad_tol: float = 1e-3, eval_mode: Optional[bool] = None) -> Evidence:
    r"""The Laplace evidence with the generalized Gauss–Newton matrix in place of the Hessian.

    .. math::

       \ln P(y\mid x) \approx -C(\omega_0) - \frac12\sum_{i=1}^p\ln\frac{g_i}{\lambda},
       \qquad N\,G + \Lambda = \sum_i J_i^\top\nabla^2_f\ell_i\,J_i + \Lambda,

    with :math:`g_i` the eigenvalues of :math:`NG + \Lambda` (:math:`J_i` the Jacobian of the
    network's output on sample :math:`i`, :math:`\nabla^2_f\ell_i \succeq 0` for the cross-entropy
    losses). It drops the term :math:`\sum_i \sum_c (\partial\ell_i/\partial f_c)\nabla^2 f_c`
    of the Hessian, so it is positive definite by construction; for a model linear in its
    parameters (logistic regression) the dropped term is zero and it equals
    :func:`laplace_log_evidence` exactly. Dense (float64, from per-sample Jacobians; the tests
    compare it with curvlinops' ``GGNLinearOperator``): for small models.

    Args:
        model: the network at (or near) :math:`\omega_0` (not changed).
        loss_fn: a mean-reduced negative log-likelihood whose Hessian in the output is positive
            semi-definite (``nn.CrossEntropyLoss``, ``nn.BCEWithLogitsLoss``,
            :class:`GaussianNLLLoss`).
        data: the training set, an ``(X, y)`` pair or an iterable of pairs.
        prior_precision: λ > 0 or one precision per parameter.
        grad_tol: refuse the point if :math:`\lVert\nabla C\rVert_2` exceeds this.
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        An :class:`Evidence` with ``method="ggn"``.

    Raises:
        ValueError: as :func:`laplace_log_evidence` (a point that is not a minimum, bad
            precisions, labels the likelihood cannot score).
    """
    check_reduction(loss_fn)
    check_positive(grad_tol, "grad_tol")
    check_model(model)
    model64, batches = _float64_copy(model, data)
    N = num_samples(batches)
    params = trainable_parameters(model64)
    lam = _precision_vector(prior_precision, sum(p.numel() for p in params), device=params[0].device)
    with evaluation(model64, eval_mode), torch.no_grad():
        for X, y in batches:
            check_data_matches_model(model64, X)
            check_labels(model64(X), y, loss_fn, likelihood=True)
    with evaluation(model64, eval_mode):
        objective, grad = _objective_and_gradient(model64, loss_fn, batches, lam, N)
    check_finite(objective, "objective C(ω)")
    gnorm = float(grad.norm())
    if not gnorm <= grad_tol:
        raise ValueError(f"model: the parameters are not a minimum of C(ω): ‖∇C‖ = {gnorm:.3g} > "
                         f"grad_tol = {grad_tol:g}")
    w = torch.cat([p.detach().reshape(-1) for p in params])
    penalty = 0.5 * float((lam * w * w).sum())
    D = N * _dense_ggn_of_mean_loss(model64, loss_fn, batches, eval_mode) + torch.diag(lam)
    eigenvalues = torch.linalg.eigvalsh(D).cpu().numpy()
    occam = log_occam_factor(eigenvalues, lam.cpu())
    return Evidence(log_evidence=-objective + occam, log_occam_factor=occam, objective=objective,
                    neg_log_likelihood=objective - penalty, penalty=penalty,
                    prior_precision=_describe(lam.cpu()), num_parameters=len(w), num_samples=N,
                    gradient_norm=gnorm, min_eigenvalue=float(eigenvalues[0]), method="ggn",
                    newton_decrement=0.5 * float(grad @ torch.linalg.solve(D, grad)),
                    eigenvalues=eigenvalues)


@dataclass
class LaplaceIntegral:
    r"""Result of :func:`laplace_log_integral`.

    Attributes:
        log_integral: :math:`\ln f(x^*) + \frac p2\ln 2\pi - \frac12\ln|A|`.
        mode: :math:`x^*`, the maximizer of :math:`\ln f`.
        log_density_at_mode: :math:`\ln f(x^*)`.
        eigenvalues: the eigenvalues of :math:`A = -\nabla^2\ln f(x^*)`.
        gradient_norm: :math:`\lVert\nabla\ln f(x^*)\rVert_2`.
    """

    log_integral: float
    mode: Tensor
    log_density_at_mode: float
    eigenvalues: np.ndarray
    gradient_norm: float


def laplace_log_integral(log_density, x0: Tensor, max_iter: int = 500,
                         grad_tol: float = 1e-8) -> LaplaceIntegral:
    r"""Laplace's approximation of :math:`\ln\int f(x)\,dx` for a density given by its log.

    Finds the mode :math:`x^*` of :math:`\ln f` by L-BFGS from ``x0`` (float64), then

    .. math:: \ln\int f \approx \ln f(x^*) + \frac p2\ln 2\pi - \frac12\ln\lvert-\nabla^2\ln f(x^*)\rvert,

    exact when :math:`f` is Gaussian. Applied to the joint :math:`P(y\mid\omega)P(\omega)` it is
    :func:`laplace_log_evidence`; applied to the same joint in other coordinates
    :math:`\omega = g(\eta)`, with the prior carried along (the Jacobian factor
    :math:`\lvert\det g'(\eta)\rvert` included, see :func:`reparametrized_log_density`), it is the
    Laplace evidence in those coordinates — the same for linear :math:`g`, different otherwise,
    while the integral itself is the same for every bijection :math:`g`.

    Args:
        log_density: maps a float64 vector of ``p`` entries to a scalar tensor (differentiable).
        x0: the starting point (a flat tensor).
        max_iter: L-BFGS iterations.
        grad_tol: the gradient norm at which to stop.

    Returns:
        A :class:`LaplaceIntegral`.

    Raises:
        ValueError: ``x0`` not a finite flat tensor, or a mode whose negative Hessian is not
            positive definite.

    >>> r = laplace_log_integral(lambda x: -0.5 * (x * x).sum() / 4.0, torch.ones(2))
    >>> round(r.log_integral, 10) == round(math.log(2 * math.pi * 4.0), 10)
    True
    """
    if not isinstance(x0, Tensor) or x0.ndim != 1 or not bool(torch.isfinite(x0).all()):
        raise ValueError("x0: expected a finite flat tensor")
    check_positive(max_iter, "max_iter", integer=True)
    x = x0.detach().to(torch.float64).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=max_iter, tolerance_grad=grad_tol,
                            tolerance_change=0.0, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = -log_density(x)
        value.backward()
        return value

    for _ in range(5):
        opt.step(closure)
        g = torch.autograd.grad(log_density(x), x)[0]
        if float(g.norm()) <= grad_tol:
            break
        opt.state.clear()
    x = x.detach()
    A = -torch.autograd.functional.hessian(log_density, x)
    eig = torch.linalg.eigvalsh((A + A.T) / 2).numpy()
    if eig.min() <= 0:
        raise ValueError(f"log_density: the negative Hessian at the mode has {int((eig <= 0).sum())} "
                         "non-positive eigenvalue(s); Laplace's approximation needs a strict maximum")
    xg = x.clone().requires_grad_(True)
    gnorm = float(torch.autograd.grad(log_density(xg), xg)[0].norm())
    value = float(log_density(x))
    p = x.numel()
    return LaplaceIntegral(value + 0.5 * p * math.log(2 * math.pi) - 0.5 * float(np.log(eig).sum()),
                           x, value, eig, gnorm)


def reparametrized_log_density(log_density, to_weights, log_abs_det_jacobian):
    r"""The log density in coordinates :math:`\eta` with :math:`\omega = g(\eta)`:
    :math:`\eta \mapsto \ln f(g(\eta)) + \ln\lvert\det g'(\eta)\rvert` (the change of variables, so
    that its integral over :math:`\eta` equals that of :math:`f` over :math:`\omega` for a
    bijection :math:`g`).

    Args:
        log_density: :math:`\ln f`, on ``(..., p)`` tensors (batched or not).
        to_weights: :math:`g`, on ``(..., p)`` tensors.
        log_abs_det_jacobian: :math:`\eta \mapsto \ln|\det g'(\eta)|`, on ``(..., p)`` tensors.

    Returns:
        A function of :math:`\eta` of the same kind as ``log_density``.

    >>> f = reparametrized_log_density(lambda w: -w.sum(-1), lambda e: 2 * e,
    ...                                lambda e: torch.full(e.shape[:-1], math.log(2.0)))
    >>> round(float(f(torch.tensor([1.0]))), 6)
    -1.306853
    """
    if not (callable(log_density) and callable(to_weights) and callable(log_abs_det_jacobian)):
        raise TypeError("log_density, to_weights, log_abs_det_jacobian: expected callables")
    return lambda eta: log_density(to_weights(eta)) + log_abs_det_jacobian(eta)


@dataclass
class ImportanceEvidence:
    r"""Result of :func:`importance_log_evidence`.

    Attributes:
        log_evidence: :math:`\ln\hat Z = \ln\frac1S\sum_s w_s`, :math:`w_s = f(x_s)/q(x_s)`.
        stderr: its standard error by the delta method, :math:`\hat\sigma_w/(\bar w\sqrt S)`.
        ess: the effective sample size :math:`(\sum w_s)^2/\sum w_s^2`.
        num_samples: :math:`S`.
    """

    log_evidence: float
    stderr: float
    ess: float
    num_samples: int


def _gaussian(mean, covariance) -> Tuple[Tensor, Tensor]:
    """``(mean, L)`` in float64 with ``L`` the Cholesky factor of the symmetrized covariance.

    Raises:
        ValueError: a covariance that is not ``p × p`` or not positive definite.
    """
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    cov = torch.as_tensor(covariance, dtype=torch.float64)
    p = mean.numel()
    if cov.shape != (p, p):
        raise ValueError(f"covariance: expected a {p} × {p} matrix, got {tuple(cov.shape)}")
    try:
        return mean, torch.linalg.cholesky((cov + cov.T) / 2)
    except RuntimeError:
        raise ValueError("covariance: expected a positive definite matrix") from None


def importance_log_evidence(log_joint, mean: Tensor, covariance: Tensor, num_samples: int = 100_000,
                            df: float = 5.0, batch_size: int = 10_000, seed: int = 0) -> ImportanceEvidence:
    r"""An importance-sampling estimate of :math:`\ln Z = \ln\int f(x)\,dx`, unbiased in :math:`Z`.

    The proposal :math:`q` is a multivariate Student t with ``df`` degrees of freedom, location
    ``mean`` and scale matrix ``covariance`` (heavier tails than the Laplace Gaussian, so the
    weights :math:`w = f/q` have a finite variance wherever :math:`f` has Gaussian or lighter
    tails). :math:`\hat Z = \frac1S\sum_s w_s` is unbiased; ``stderr`` is the delta-method
    standard error of :math:`\ln\hat Z`, reliable when ``ess`` is large. With ``mean`` and
    ``covariance`` from the Laplace approximation this checks it with the exact integral.

    Args:
        log_joint: :math:`\ln f` on a batch, ``(S, p) → (S,)`` (float64).
        mean: the proposal's location (``p`` entries).
        covariance: its ``p × p`` scale matrix (positive definite).
        num_samples: :math:`S`.
        df: the degrees of freedom ν > 0 (``math.inf`` for a Gaussian proposal).
        batch_size: samples evaluated at once.
        seed: seeds a ``torch.Generator``.

    Returns:
        An :class:`ImportanceEvidence`.

    Raises:
        ValueError: mismatched shapes, a covariance that is not positive definite, bad counts.

    >>> est = importance_log_evidence(lambda x: -0.5 * (x * x).sum(1), torch.zeros(2), torch.eye(2),
    ...                               num_samples=20_000)
    >>> abs(est.log_evidence - math.log(2 * math.pi)) < 4 * est.stderr
    True
    """
    check_positive(num_samples, "num_samples", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    if not (df > 0):
        raise ValueError(f"df: expected ν > 0 (or math.inf), got {df!r}")
    mean, L = _gaussian(mean, covariance)
    p = mean.numel()
    half_logdet = float(torch.log(torch.diagonal(L)).sum())
    gen = torch.Generator().manual_seed(seed)
    logw = []
    for start in range(0, num_samples, batch_size):
        S = min(batch_size, num_samples - start)
        z = torch.randn(S, p, generator=gen, dtype=torch.float64)
        if math.isinf(df):
            u = torch.ones(S, dtype=torch.float64)
            log_q = -0.5 * (z * z).sum(1) - 0.5 * p * math.log(2 * math.pi) - half_logdet
        else:
            u = _chi2(S, df, gen) / df
            q2 = (z * z).sum(1) / u
            log_q = (math.lgamma((df + p) / 2) - math.lgamma(df / 2) - 0.5 * p * math.log(df * math.pi)
                     - half_logdet - 0.5 * (df + p) * torch.log1p(q2 / df))
        x = mean + (z / u.sqrt()[:, None]) @ L.T
        with torch.no_grad():
            logw.append(torch.as_tensor(log_joint(x), dtype=torch.float64).reshape(-1) - log_q)
    logw = torch.cat(logw)
    if not bool(torch.isfinite(logw).all()):
        raise ValueError("log_joint: non-finite values at some proposal samples")
    m = float(logw.max())
    w = torch.exp(logw - m)
    mean_w = float(w.mean())
    se_rel = float(w.std()) / (mean_w * math.sqrt(num_samples))
    ess = float(w.sum() ** 2 / (w * w).sum())
    return ImportanceEvidence(m + math.log(mean_w), se_rel, ess, num_samples)


def _chi2(size: int, df: float, gen: torch.Generator) -> Tensor:
    """χ²_ν samples from a generator: 2·Gamma(ν/2), by Marsaglia–Tsang via ``torch._standard_gamma``
    seeded through ``gen`` (uniforms and normals drawn from ``gen``)."""
    # Gamma(k) = Gamma(k + 1) · U^{1/k}; Gamma(k + 1) by Marsaglia–Tsang with k + 1 ≥ 1.
    k = df / 2
    a = k + 1
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.empty(size, dtype=torch.float64)
    filled = 0
    while filled < size:
        n = size - filled
        z = torch.randn(2 * n, generator=gen, dtype=torch.float64)
        v = (1 + c * z) ** 3
        u = torch.rand(2 * n, generator=gen, dtype=torch.float64)
        ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        g = (d * v)[ok][:n]
        out[filled:filled + len(g)] = g
        filled += len(g)
    boost = torch.rand(size, generator=gen, dtype=torch.float64) ** (1 / k)
    return 2 * out * boost



def annealed_log_evidence(log_joint, mean: Tensor, covariance: Tensor, num_chains: int = 64,
                          num_temperatures: int = 1000, min_temperature: float = 1e-4,
                          seed: int = 0) -> ImportanceEvidence:
    r"""Annealed importance sampling (Neal 2001) of :math:`\ln Z = \ln\int f(x)\,dx`.

    With a Gaussian reference :math:`q = \mathcal N(m, \Sigma)` (the Laplace approximation, or
    the prior) and :math:`r(x) = \ln f(x) - \ln q(x)`, each of ``num_chains`` chains starts from
    :math:`q` and moves through :math:`\pi_t \propto q\,e^{\beta_t r}`,
    :math:`0 = \beta_0 < \beta_1 = ` ``min_temperature`` :math:`< \dots < \beta_T = 1`
    (geometric), by one elliptical slice sampling step (Murray, Adams & MacKay 2010: exact for a
    Gaussian factor, no step size) per temperature. Its weight
    :math:`\ln w = \sum_t (\beta_t - \beta_{t-1})\,r(x_{t-1})` has :math:`\mathbb E[w] = Z`
    exactly, for any schedule; a schedule too short shows up as a small ``ess`` and a large
    ``stderr``, not as a hidden bias of :math:`\hat Z`. Unlike importance sampling from the
    Laplace Gaussian it does not need :math:`f` to look Gaussian — the case of a logistic model on
    separable data under a weak prior, where the posterior is a half-space-like ridge.

    Args:
        log_joint: :math:`\ln f` on a batch, ``(S, p) → (S,)`` (float64).
        mean, covariance: the reference Gaussian (``p`` entries, ``p × p`` positive definite).
        num_chains: independent chains (the standard error is over them).
        num_temperatures: ``T``.
        min_temperature: :math:`\beta_1`.
        seed: seeds a ``torch.Generator``.

    Returns:
        An :class:`ImportanceEvidence` (``num_samples`` = chains; ``ess`` of the chain weights).

    Raises:
        ValueError: bad counts, temperatures or shapes, non-finite values of ``log_joint``.

    >>> est = annealed_log_evidence(lambda x: -(x * x).sum(1), torch.zeros(2), torch.eye(2),
    ...                             num_chains=32, num_temperatures=50)
    >>> abs(est.log_evidence - math.log(math.pi)) < 4 * est.stderr + 1e-3  # ∫ exp(-|x|²) dx = π
    True
    """
    check_positive(num_chains, "num_chains", integer=True)
    check_positive(num_temperatures, "num_temperatures", integer=True)
    if not 0 < min_temperature < 1:
        raise ValueError(f"min_temperature: expected a number in (0, 1), got {min_temperature!r}")
    mean, L = _gaussian(mean, covariance)
    p = mean.numel()
    log_norm = -0.5 * p * math.log(2 * math.pi) - float(torch.log(torch.diagonal(L)).sum())
    gen = torch.Generator().manual_seed(seed)
    betas = [0.0] + list(np.geomspace(min_temperature, 1.0, num_temperatures))

    def ratio(z):  # r at x = m + L z, as a function of the whitened z
        with torch.no_grad():
            value = torch.as_tensor(log_joint(mean + z @ L.T), dtype=torch.float64).reshape(-1)
        if not bool(torch.isfinite(value).all()):
            raise ValueError("log_joint: non-finite values")
        return value - (log_norm - 0.5 * (z * z).sum(1))

    z = torch.randn(num_chains, p, generator=gen, dtype=torch.float64)
    r = ratio(z)
    logw = torch.zeros(num_chains, dtype=torch.float64)
    for prev, beta in zip(betas[:-1], betas[1:]):
        logw += (beta - prev) * r
        # one elliptical slice step for the target N(0, I) · exp(beta r), every chain at once
        nu = torch.randn(num_chains, p, generator=gen, dtype=torch.float64)
        level = beta * r + torch.log(torch.rand(num_chains, generator=gen, dtype=torch.float64))
        theta = torch.rand(num_chains, generator=gen, dtype=torch.float64) * 2 * math.pi
        lo, hi = theta - 2 * math.pi, theta.clone()
        active = torch.ones(num_chains, dtype=torch.bool)
        new_z, new_r = z.clone(), r.clone()
        for _ in range(100):
            prop = z * torch.cos(theta)[:, None] + nu * torch.sin(theta)[:, None]
            prop_r = ratio(prop)
            ok = active & (beta * prop_r > level)
            new_z[ok], new_r[ok] = prop[ok], prop_r[ok]
            active &= ~ok
            if not bool(active.any()):
                break
            neg = theta < 0
            lo = torch.where(active & neg, theta, lo)
            hi = torch.where(active & ~neg, theta, hi)
            theta = torch.where(active, lo + (hi - lo) * torch.rand(num_chains, generator=gen,
                                                                  dtype=torch.float64), theta)
        z, r = new_z, new_r
    m = float(logw.max())
    w = torch.exp(logw - m)
    mean_w = float(w.mean())
    se = float(w.std()) / (mean_w * math.sqrt(num_chains)) if num_chains > 1 else math.nan
    return ImportanceEvidence(m + math.log(mean_w), se, float(w.sum() ** 2 / (w * w).sum()), num_chains)


def grid_log_integral(log_density, low, high, num_points: int = 801) -> float:
    r""":math:`\ln\int f(x)\,dx` over a box in one or two dimensions by the trapezoidal rule on a
    grid of ``num_points`` per axis (float64, log-sum-exp): a dense oracle for small models.

    The error is :math:`O(h^2)` for a smooth :math:`f` whose mass lies inside the box.

    Args:
        log_density: :math:`\ln f` on a batch, ``(S, p) → (S,)``, ``p`` = 1 or 2.
        low, high: the box's corners (``p`` numbers each).
        num_points: grid points per axis (at least 3).

    Returns:
        The log integral.

    Raises:
        ValueError: a box that is not 1- or 2-dimensional, or ``low >= high``.

    >>> round(grid_log_integral(lambda x: -0.5 * (x * x).sum(1), [-12.0], [12.0]), 6)  # ½ ln 2π
    0.918939
    """
    low = torch.as_tensor(low, dtype=torch.float64).reshape(-1)
    high = torch.as_tensor(high, dtype=torch.float64).reshape(-1)
    if low.shape != high.shape or low.numel() not in (1, 2) or not bool((low < high).all()):
        raise ValueError("low, high: expected the corners of a 1- or 2-dimensional box, low < high")
    check_positive(num_points, "num_points", integer=True)
    if num_points < 3:
        raise ValueError(f"num_points: expected at least 3, got {num_points}")
    axes = [torch.linspace(float(a), float(b), num_points, dtype=torch.float64) for a, b in zip(low, high)]
    weights = []
    for ax in axes:
        w = torch.full_like(ax, float(ax[1] - ax[0]))
        w[0] = w[-1] = w[0] / 2
        weights.append(torch.log(w))
    grids = torch.meshgrid(*axes, indexing="ij")
    points = torch.stack([g.reshape(-1) for g in grids], 1)
    logw = sum(torch.meshgrid(*weights, indexing="ij")).reshape(-1)
    with torch.no_grad():
        values = torch.as_tensor(log_density(points), dtype=torch.float64).reshape(-1)
    return float(torch.logsumexp(values + logw, 0))
