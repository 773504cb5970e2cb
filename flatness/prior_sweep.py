r"""Sweeps of the prior precision λ: MAP fits and their Laplace evidence, for binary classifiers.

With the objective :math:`C(\omega) = \sum_i \ell_i(\omega) + \frac{\lambda}{2}\lVert\omega\rVert^2`
(:mod:`flatness.evidence`), each λ gives a MAP point :math:`\omega_0(\lambda)` and a Laplace
evidence :math:`\ln P(y\mid x, \lambda) \approx -C(\omega_0) + \ln\text{Occam}`.

* :func:`binary_metrics`: accuracy and mean cross-entropy of a one-logit model;
* :func:`lambda_sweep`: a linear model (zero-initialized) fitted at every λ from the largest
  down, each fit warm-started from the previous one, with the exact evidence;
* :func:`sweep_summary`: how the evidence ranks the λ against the test cross-entropy;
* :func:`sweep_table`, :func:`summary_table` and :func:`refusal_table` print them;
* :func:`fit_and_evidence`: one MAP fit of any one-logit network, its metrics and its evidence
  (or the spectrum that refuses it);
* :func:`rescaled_features_evidence`: the evidence of the linear model after a rescaling of the
  features, with the prior carried along (invariant) or not (changed), and
  :func:`evidence_table` to compare them;
* :func:`evidence_or_spectrum`: the evidence where it is defined, otherwise the spectrum of
  :math:`\nabla\nabla C` that shows why it is not (a MAP point of a ReLU network can sit on a
  kink, with curvature :math:`\le 0` in some direction).
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .checks import check_tensor_pair
from .evidence import fit_map, laplace_ggn_log_evidence, laplace_log_evidence
from .operators import dense_hessian
from .tables import MarkdownTable, markdown_table

__all__ = ["binary_metrics", "lambda_sweep", "sweep_summary", "evidence_or_spectrum", "sweep_table",
           "summary_table", "refusal_table", "fit_and_evidence", "rescaled_features_evidence",
           "evidence_table", "rescaled_evidence", "log_determinant", "invariance_sentence",
           "linear_log_joint", "reparametrization_check", "evidence_check", "evidence_check_table",
           "reparam_sentence", "false_positive_sentence", "slq_table"]


def binary_metrics(model: nn.Module, data, loss_fn=None):
    """Accuracy and mean loss of a one-logit classifier (logit > 0 ↔ class 1) on ``(X, y)``.

    Args:
        model: maps ``X`` (float64) to one logit per sample.
        data: an ``(X, y)`` pair, ``y`` in {0, 1}.
        loss_fn: the loss (default ``BCEWithLogitsLoss``).

    Returns:
        ``(accuracy, loss)`` as floats.

    >>> net = nn.Sequential(nn.Linear(1, 1), nn.Flatten(0)).double()
    >>> with torch.no_grad():
    ...     _ = net[0].weight.fill_(1.0), net[0].bias.zero_()
    >>> binary_metrics(net, (torch.tensor([[1.0], [-1.0]]), torch.tensor([1, 1])))[0]
    0.5
    """
    X, y = check_tensor_pair(data)
    loss_fn = nn.BCEWithLogitsLoss() if loss_fn is None else loss_fn
    with torch.no_grad():
        logits = model(X.double())
    y = y.double()
    return float(((logits > 0).double() == y).double().mean()), float(loss_fn(logits, y))


def lambda_sweep(train, test, lambdas: Sequence[float], loss_fn=None) -> List[Dict]:
    r"""MAP fit and exact Laplace evidence of a linear one-logit model at each λ.

    The model :math:`x \mapsto w^\top x + b` starts at zero for the largest λ; each smaller λ
    starts from the previous MAP point (warm starts). Note that building it draws from PyTorch's
    global generator (``nn.Linear``'s initialization, then overwritten with zeros).

    Args:
        train, test: ``(X, y)`` pairs, ``y`` in {0, 1}.
        lambdas: prior precisions λ > 0.
        loss_fn: the per-sample loss (default ``BCEWithLogitsLoss``).

    Returns:
        One dict per λ, in increasing λ: ``lam``, ``train_acc``, ``test_acc``, ``test_ce``,
        ``log_ev`` (ln evidence), ``ratio`` (ln evidence ratio to guessing),
        ``occam`` (ln Occam factor), ``fit`` (:math:`-C(\omega_0)`), ``grad``
        (:math:`\lVert\nabla C\rVert`), ``evidence`` (the :class:`~flatness.evidence.Evidence`)
        and ``model`` (the MAP model).

    Raises:
        ValueError: no λ, or a non-positive one.
    """
    lambdas = [float(lam) for lam in lambdas]
    if not lambdas or any(not (lam > 0 and math.isfinite(lam)) for lam in lambdas):
        raise ValueError(f"lambdas: expected positive finite values, got {lambdas!r}")
    X, _ = check_tensor_pair(train, "train")
    check_tensor_pair(test, "test")
    loss_fn = nn.BCEWithLogitsLoss() if loss_fn is None else loss_fn
    net = nn.Sequential(nn.Linear(X.shape[1], 1), nn.Flatten(0))
    nn.init.zeros_(net[0].weight)
    nn.init.zeros_(net[0].bias)
    rows = []
    for lam in sorted(lambdas, reverse=True):
        fit = fit_map(net, loss_fn, train, lam)
        ev = laplace_log_evidence(fit.model, loss_fn, train, lam, method="exact")
        net = fit.model
        tr_acc, _ = binary_metrics(fit.model, train, loss_fn)
        te_acc, te_ce = binary_metrics(fit.model, test, loss_fn)
        rows.append(dict(lam=lam, train_acc=tr_acc, test_acc=te_acc, test_ce=te_ce,
                         log_ev=ev.log_evidence, ratio=ev.log_ratio_to_null(2),
                         occam=ev.log_occam_factor, fit=-ev.objective,
                         grad=fit.gradient_norm, evidence=ev, model=fit.model))
    return rows[::-1]


def sweep_summary(rows: Sequence[Dict]) -> Dict[str, float]:
    r"""How the evidence of a :func:`lambda_sweep` ranks the λ.

    Returns:
        ``rho``: Spearman's rank correlation over λ between the ln evidence ratio and minus the
        test cross-entropy; ``lam_ev`` / ``lam_ce``: the λ of the largest evidence and of the
        smallest test cross-entropy; ``max_ratio`` / ``min_ratio``: the extreme ln evidence ratios.

    Raises:
        ValueError: fewer than two rows.

    >>> rows = [dict(lam=l, ratio=r, test_ce=c) for l, r, c in
    ...         [(0.1, 1.0, 0.5), (1.0, 3.0, 0.3), (10.0, 2.0, 0.4)]]
    >>> sweep_summary(rows)["rho"], sweep_summary(rows)["lam_ev"]
    (1.0, 1.0)
    """
    from scipy.stats import spearmanr

    if len(rows) < 2:
        raise ValueError(f"rows: expected at least two λ, got {len(rows)}")
    lam, ratio, ce = (np.array([r[k] for r in rows]) for k in ("lam", "ratio", "test_ce"))
    rho = spearmanr(ratio, -ce).statistic
    return dict(rho=float(rho), lam_ev=float(lam[np.argmax(ratio)]),
                lam_ce=float(lam[np.argmin(ce)]), max_ratio=float(ratio.max()),
                min_ratio=float(ratio.min()))


def evidence_or_spectrum(model: nn.Module, loss_fn, train, prior_precision: float,
                         grad_tol: float = 1e-6, num_classes: int = 2) -> Dict:
    r"""The Laplace evidence at a MAP point, or, where it is refused, the spectrum that refuses it.

    :func:`flatness.evidence.laplace_log_evidence` (exact) refuses a point where
    :math:`\nabla\nabla C = N\nabla^2 L + \lambda I` is not positive definite. Then this computes
    the eigenvalues of :math:`N\nabla^2L + \lambda I` from the dense float64 Hessian instead.

    Args:
        model: the MAP model (e.g. ``fit_map(...).model``).
        loss_fn: the mean-reduced loss.
        train: the ``(X, y)`` training pair.
        prior_precision: λ.
        grad_tol: the gradient tolerance passed on (a loose one accepts an inexact minimum; the
            Newton decrement then says what it costs).
        num_classes: for the ratio to guessing.

    Returns:
        A dict: ``status`` (``"accepted"`` or ``"refused"``), ``ratio`` (ln evidence ratio to
        guessing, ``nan`` if refused), ``decrement`` (Newton decrement, ``nan`` if refused),
        ``min_eig``, ``near_prior`` (eigenvalues in (0, 2λ)), ``negative`` (eigenvalues ≤ 0).
    """
    lam = float(prior_precision)
    try:
        ev = laplace_log_evidence(model, loss_fn, train, lam, method="exact", grad_tol=grad_tol)
        return dict(status="accepted", ratio=ev.log_ratio_to_null(num_classes),
                    decrement=ev.newton_decrement, min_eig=ev.min_eigenvalue,
                    near_prior=int((ev.eigenvalues < 2 * lam).sum()), negative=0)
    except ValueError:
        X, y = check_tensor_pair(train, "train")
        H = dense_hessian(model, loss_fn, (X.double(), y.double())) * X.shape[0]
        eig = torch.linalg.eigvalsh(H + lam * torch.eye(len(H), dtype=H.dtype)).numpy()
        return dict(status="refused", ratio=math.nan, decrement=math.nan, min_eig=float(eig[0]),
                    near_prior=int(((eig > 0) & (eig < 2 * lam)).sum()),
                    negative=int((eig <= 0).sum()))


def sweep_table(rows: Sequence[Dict]) -> MarkdownTable:
    r"""One row per λ of a :func:`lambda_sweep`: accuracies, test cross-entropy, the fit term
    :math:`-C(\omega_0)`, the ln Occam factor and the ln evidence ratio to guessing."""
    return markdown_table(
        ["λ", "train acc", "test acc", "test CE", "−C(ω₀)", "ln Occam", "ln evidence ratio"],
        [[f"{r['lam']:.0e}", f"{100 * r['train_acc']:.1f} %", f"{100 * r['test_acc']:.1f} %",
          f"{r['test_ce']:.3f}", f"{r['fit']:.1f}", f"{r['occam']:.1f}", f"{r['ratio']:+.1f}"] for r in rows])


def summary_table(informative: Sequence[Dict], random_runs: Mapping[int, Sequence[Dict]]) -> MarkdownTable:
    """Informative labels against random labels (every draw): the extreme evidence ratios, the
    rank correlation with the test cross-entropy, where each peaks, and the accuracies at the
    smallest λ (:func:`sweep_summary` of each sweep)."""
    S_inf = sweep_summary(informative)
    S_rand = [sweep_summary(rows) for rows in random_runs.values()]
    first = next(iter(random_runs.values()))
    weak = informative[0], first[0]      # the smallest λ
    each = lambda key, fmt: ", ".join(format(S[key], fmt) for S in S_rand)  # noqa: E731
    return markdown_table(["", "informative labels", "random labels (all draws)"], [
        ["largest log evidence ratio", f"{S_inf['max_ratio']:+.1f}",
         f"{max(S['max_ratio'] for S in S_rand):+.1f}"],
        ["smallest log evidence ratio", f"{S_inf['min_ratio']:+.1f}",
         f"{min(S['min_ratio'] for S in S_rand):+.1f}"],
        ["Spearman ρ(evidence, −test CE) over λ", f"{S_inf['rho']:+.2f}", each("rho", "+.2f")],
        ["λ of largest evidence", f"{S_inf['lam_ev']:.0e}", each("lam_ev", ".0e")],
        ["λ of smallest test CE", f"{S_inf['lam_ce']:.0e}", each("lam_ce", ".0e")],
        [f"train / test accuracy at λ = {weak[0]['lam']:.0e}",
         f"{100 * weak[0]['train_acc']:.1f} / {100 * weak[0]['test_acc']:.1f} %",
         f"{100 * weak[1]['train_acc']:.1f} / {100 * weak[1]['test_acc']:.1f} %"],
    ])


def refusal_table(rows: Sequence[Dict]) -> MarkdownTable:
    """One row per MAP point of a network: the rows of :func:`evidence_or_spectrum` with the
    keys ``labels``, ``lam``, ``train_acc``, ``test_acc``, ``test_ce``, ``grad`` and ``hinge``
    (the smallest absolute pre-activation) added, and ``ggn_ratio`` (the Gauss–Newton evidence)
    when present."""
    return markdown_table(
        ["labels", "λ", "train / test acc", "test CE", "‖∇C‖", "min |pre-activation|", "smallest eigenvalue",
         "eigenvalues ≤ 0", "eigenvalues in (0, 2λ)", "Newton decrement", "ln evidence ratio",
         "Gauss–Newton ln evidence ratio"],
        [[r["labels"], f"{r['lam']:g}", f"{100 * r['train_acc']:.0f} / {100 * r['test_acc']:.0f} %",
          f"{r['test_ce']:.3f}", f"{r['grad']:.2g}", f"{r['hinge']:.1e}", f"{r['min_eig']:.3g}",
          r["negative"], r["near_prior"], "—" if r["status"] == "refused" else f"{r['decrement']:.2g}",
          "refused" if r["status"] == "refused" else f"{r['ratio']:+.1f}",
          f"{r['ggn_ratio']:+.1f}" if "ggn_ratio" in r else "—"] for r in rows])


def fit_and_evidence(model: nn.Module, loss_fn, train, test, prior_precision: float,
                     max_iter: int = 2000, grad_tol: float = 1e-6) -> Dict:
    """Fit the MAP point of a one-logit network and report it as a row of :func:`refusal_table`.

    Args:
        model: the network, used as the starting point (not changed).
        loss_fn: the loss.
        train, test: ``(X, y)`` pairs.
        prior_precision: λ.
        max_iter: L-BFGS iterations of :func:`flatness.evidence.fit_map`.
        grad_tol: passed to :func:`evidence_or_spectrum`.

    Returns:
        :func:`evidence_or_spectrum`'s dict with ``lam``, ``grad`` (the MAP gradient norm),
        ``train_acc``, ``test_acc``, ``test_ce``, ``hinge`` (the smallest absolute output of the
        first module on the training inputs: 0 means a ReLU kink), ``model``, and the Gauss–Newton
        Laplace evidence (:func:`flatness.evidence.laplace_ggn_log_evidence`, positive definite by
        construction): ``ggn_ratio`` (ln ratio to guessing) and ``ggn_decrement`` added.
    """
    fit = fit_map(model, loss_fn, train, prior_precision, max_iter=max_iter)
    (tr_acc, _), (te_acc, te_ce) = (binary_metrics(fit.model, pair, loss_fn) for pair in (train, test))
    with torch.no_grad():
        hinge = float(next(iter(fit.model.children()))(train[0].double()).abs().min())
    ev = evidence_or_spectrum(fit.model, loss_fn, train, prior_precision, grad_tol=grad_tol)
    ggn = laplace_ggn_log_evidence(fit.model, loss_fn, train, prior_precision, grad_tol=grad_tol)
    return dict(lam=prior_precision, grad=fit.gradient_norm, train_acc=tr_acc, test_acc=te_acc,
                test_ce=te_ce, hinge=hinge, model=fit.model, ggn_ratio=ggn.log_ratio_to_null(2),
                ggn_decrement=ggn.newton_decrement, **ev)


def rescaled_features_evidence(train, scale: torch.Tensor, prior_precision: float, loss_fn=None):
    r"""The Laplace evidence of the linear model after rescaling the features by ``scale``.

    Moving to features :math:`x_j d_j` is a reparametrization :math:`w_j \mapsto w_j / d_j`. With
    the prior carried along (precision :math:`\lambda d_j^2` on :math:`w_j`, λ on the bias) the
    model, hence its evidence, is unchanged, although :math:`\ln|\nabla\nabla C|` moves by
    :math:`+2\sum_j \ln d_j` (the Hessian in the new weights is :math:`D\,\nabla\nabla C\,D`); with
    the isotropic λ again it is a different model.

    The starting model is a fresh ``nn.Linear`` (it draws from PyTorch's global generator).

    Args:
        train: the ``(X, y)`` training pair.
        scale: the factors :math:`d_j > 0`, one per feature.
        prior_precision: λ.
        loss_fn: default ``BCEWithLogitsLoss``.

    Returns:
        ``(carried, isotropic)``, two :class:`flatness.evidence.Evidence`.
    """
    X, y = check_tensor_pair(train, "train")
    loss_fn = nn.BCEWithLogitsLoss() if loss_fn is None else loss_fn
    scale = torch.as_tensor(scale, dtype=torch.float64)
    if scale.shape != (X.shape[1],) or not bool((scale > 0).all()):
        raise ValueError(f"scale: expected {X.shape[1]} positive factors, got shape {tuple(scale.shape)}")
    lam = float(prior_precision)
    X_moved = (X.double() * scale, y)
    carried = torch.cat([lam * scale ** 2, torch.tensor([lam], dtype=torch.float64)])  # bias unscaled
    start = nn.Sequential(nn.Linear(X.shape[1], 1), nn.Flatten(0))
    fit_carried = fit_map(start, loss_fn, X_moved, carried)
    ev_carried = laplace_log_evidence(fit_carried.model, loss_fn, X_moved, carried)
    fit_iso = fit_map(start, loss_fn, X_moved, lam)
    return ev_carried, laplace_log_evidence(fit_iso.model, loss_fn, X_moved, lam)


def evidence_table(evidences: Mapping[str, object]) -> MarkdownTable:
    r"""One row per (exact) :class:`flatness.evidence.Evidence`: :math:`\ln|\nabla\nabla C|`, the
    ln Occam factor and the ln evidence."""
    logdet = lambda ev: float(np.sum(np.log(ev.eigenvalues)))  # noqa: E731
    return markdown_table(["parametrization (prior)", "ln |∇∇C(ω₀)|", "ln Occam", "ln evidence"],
                          [[name, f"{logdet(ev):.2f}", f"{ev.log_occam_factor:.2f}", f"{ev.log_evidence:.4f}"]
                           for name, ev in evidences.items()])


class _ScaledLogistic(nn.Module):
    r"""The one-logit linear model in rescaled coordinates, :math:`x \mapsto (x\odot d_w)^\top\eta_w
    + d_b\,\eta_b`: the weights :math:`\omega = D\eta` of ``nn.Linear`` with
    :math:`D = \operatorname{diag}(d_w, d_b)`."""

    def __init__(self, weight_scale: torch.Tensor, bias_scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, len(weight_scale), dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.register_buffer("weight_scale", weight_scale.double())
        self.register_buffer("bias_scale", torch.tensor([float(bias_scale)], dtype=torch.float64))

    def forward(self, X):
        return ((X * self.weight_scale) @ self.weight.T + self.bias_scale * self.bias).reshape(-1)


def rescaled_evidence(train, scale: torch.Tensor, prior_precision: float, loss_fn=None):
    r"""The Laplace evidence of the linear model in the coordinates :math:`\eta = D^{-1}\omega`,
    :math:`D = \operatorname{diag}(d_1, \dots, d_p)` over all ``p`` parameters (weights, then the
    bias).

    With the prior carried along (precision :math:`\lambda d_j^2` on :math:`\eta_j`),
    :math:`\nabla\nabla_\eta C = D\,\nabla\nabla_\omega C\,D`, so :math:`\ln|\nabla\nabla C|`
    moves by exactly :math:`+2\sum_j\ln d_j` while the Occam factor, the fit and the evidence do
    not move; with the isotropic λ again it is another model. Unlike
    :func:`rescaled_features_evidence`, the bias is rescaled too (``d_p``).

    Args:
        train: the ``(X, y)`` training pair.
        scale: the ``p = X.shape[1] + 1`` factors :math:`d_j > 0`.
        prior_precision: λ.
        loss_fn: default ``BCEWithLogitsLoss``.

    Returns:
        ``(carried, isotropic)``, two :class:`flatness.evidence.Evidence`.

    Raises:
        ValueError: ``scale`` of the wrong length or not positive.
    """
    X, y = check_tensor_pair(train, "train")
    loss_fn = nn.BCEWithLogitsLoss() if loss_fn is None else loss_fn
    scale = torch.as_tensor(scale, dtype=torch.float64)
    if scale.shape != (X.shape[1] + 1,) or not bool((scale > 0).all()):
        raise ValueError(f"scale: expected {X.shape[1] + 1} positive factors (weights, then the "
                         f"bias), got shape {tuple(scale.shape)}")
    lam = float(prior_precision)
    pair = (X.double(), y)
    start = _ScaledLogistic(scale[:-1], float(scale[-1]))
    carried = lam * scale ** 2
    fit_c = fit_map(start, loss_fn, pair, carried)
    fit_i = fit_map(start, loss_fn, pair, lam)
    return (laplace_log_evidence(fit_c.model, loss_fn, pair, carried),
            laplace_log_evidence(fit_i.model, loss_fn, pair, lam))


def log_determinant(ev) -> float:
    r""":math:`\ln|\nabla\nabla C(\omega_0)|` of an exact :class:`~flatness.evidence.Evidence`."""
    return float(np.sum(np.log(ev.eigenvalues)))


def invariance_sentence(base, carried, isotropic, predicted_change: float) -> str:
    r"""The rescaling experiment in one sentence, generated from its numbers: how far
    :math:`\ln|\nabla\nabla C|` and the ln evidence moved with the prior carried along and with the
    isotropic prior (``predicted_change`` is :math:`2\sum_j\ln d_j`)."""
    d_c, d_i = log_determinant(carried) - log_determinant(base), log_determinant(isotropic) - log_determinant(base)
    e_c, e_i = carried.log_evidence - base.log_evidence, isotropic.log_evidence - base.log_evidence
    return (f"With the prior carried along, ln |∇∇C| moved by {d_c:+,.2f} nats (predicted "
            f"2 Σ ln d_j = {predicted_change:+,.2f}) and the ln evidence by {e_c:+.1e} nats; with the "
            f"isotropic prior again, ln |∇∇C| moved by {d_i:+,.2f} nats and the ln evidence by {e_i:+.2f} "
            f"nats{' — a different model' if abs(e_i) > 1e-3 else ''}.")


def linear_log_joint(train, prior_precision: float):
    r"""The log joint :math:`\ln P(y\mid\omega, x) + \ln\mathcal N(\omega; 0, \lambda^{-1}I)` of
    logistic regression, on a batch of parameter vectors :math:`\omega = (w, b)` (``nn.Linear``'s
    order: weights, then the bias). Its integral over :math:`\omega` is the evidence.

    Args:
        train: the ``(X, y)`` training pair, ``y`` in {0, 1}.
        prior_precision: λ > 0.

    Returns:
        A function ``(S, p) → (S,)`` (also ``(p,) → ()``), float64, differentiable.

    >>> f = linear_log_joint((torch.zeros(2, 1), torch.tensor([0, 1])), 1.0)
    >>> round(float(f(torch.zeros(2))), 6)  # 2 ln ½ + ln N(0; 0, I₂)
    -3.224171
    """
    X, y = check_tensor_pair(train, "train")
    lam = float(prior_precision)
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"prior_precision: expected a positive number, got {prior_precision!r}")
    Xb = torch.cat([X.double(), torch.ones(len(X), 1, dtype=torch.float64)], 1)
    y = y.double()
    p = Xb.shape[1]

    def log_joint(w):
        w = torch.as_tensor(w).to(torch.float64)
        f = w @ Xb.T
        ll = -(nn.functional.softplus(-f) * y + nn.functional.softplus(f) * (1 - y)).sum(-1)
        return ll + 0.5 * p * math.log(lam / (2 * math.pi)) - 0.5 * lam * (w * w).sum(-1)

    return log_joint



def _laplace_gaussian(logf, x0):
    from .evidence import laplace_log_integral

    lap = laplace_log_integral(logf, x0)
    cov = torch.linalg.inv(-torch.autograd.functional.hessian(logf, lap.mode))
    return lap, cov


def reparametrization_check(train, prior_precision: float, radial=None, half_width: float = 12.0,
                            num_points: int = 801) -> Dict:
    r"""Laplace and exact evidence of a two-parameter logistic regression (one feature and the
    bias), in the weights :math:`\omega` and in nonlinear coordinates :math:`\omega = h(\eta)`.

    :math:`h` acts elementwise (a :class:`~flatness.reparametrize.RadialMap`'s ``forward``, a
    bijection of :math:`\mathbb R`), and the prior is carried along (the Jacobian
    :math:`\prod_j h'(\eta_j)`, :func:`flatness.evidence.reparametrized_log_density`). The exact
    evidence — a trapezoidal rule on a dense grid, :func:`flatness.evidence.grid_log_integral` —
    is the same integral in both coordinates (change of variables); Laplace's approximation of it
    is not, unless :math:`h` is linear.

    Args:
        train: the ``(X, y)`` pair with one feature.
        prior_precision: λ.
        radial: the map (default ``RadialMap(center=0, a=1, b=0.25)``: :math:`\omega = (\eta^2 + \tfrac14)\eta`).
        half_width: the grid covers the MAP point ± ``half_width`` Laplace standard deviations
            in each coordinate.
        num_points: grid points per axis.

    Returns:
        A dict of floats: ``laplace``, ``laplace_eta``, ``exact``, ``exact_eta``.

    Raises:
        ValueError: more than one feature.
    """
    from .evidence import grid_log_integral, reparametrized_log_density
    from .reparametrize import RadialMap

    X, _ = check_tensor_pair(train, "train")
    if X.shape[1] != 1:
        raise ValueError(f"train: expected one feature (two parameters), got {X.shape[1]}")
    h = RadialMap(center=0.0, a=1.0, b=0.25) if radial is None else radial
    f = linear_log_joint(train, prior_precision)
    f_eta = reparametrized_log_density(f, h.forward, lambda e: torch.log(h.derivative(e)).sum(-1))
    out = {}
    for key, logf, x0 in (("", f, torch.zeros(2, dtype=torch.float64)), ("_eta", f_eta, None)):
        lap, cov = _laplace_gaussian(logf, h.inverse(out["mode"]) if x0 is None else x0)
        sd = cov.diagonal().sqrt()
        out["laplace" + key] = lap.log_integral
        out["exact" + key] = grid_log_integral(logf, lap.mode - half_width * sd,
                                               lap.mode + half_width * sd, num_points)
        out.setdefault("mode", lap.mode)
    del out["mode"]
    return out


def evidence_check(train, prior_precision: float, num_chains: int = 128,
                   num_temperatures: int = 500, seed: int = 0) -> Dict:
    r"""The Laplace evidence of logistic regression against annealed importance sampling
    (:func:`flatness.evidence.annealed_log_evidence`, started from the Laplace Gaussian).

    AIS is unbiased for the evidence :math:`Z`, so :math:`\ln\hat Z` is biased *low*
    (Jensen), most when ``ess`` is small: then it is a stochastic lower bound on
    :math:`\ln Z`.

    Args:
        train: the ``(X, y)`` pair (a small model: ``p = X.shape[1] + 1`` parameters).
        prior_precision: λ.
        num_chains, num_temperatures, seed: of ``annealed_log_evidence``.

    Returns:
        A dict: ``laplace`` (float), ``ais`` (:class:`~flatness.evidence.ImportanceEvidence`),
        ``train_acc`` (at the MAP point), ``p``.
    """
    from .evidence import annealed_log_evidence

    X, y = check_tensor_pair(train, "train")
    f = linear_log_joint(train, prior_precision)
    lap, cov = _laplace_gaussian(f, torch.zeros(X.shape[1] + 1, dtype=torch.float64))
    ais = annealed_log_evidence(f, lap.mode, cov, num_chains=num_chains,
                                num_temperatures=num_temperatures, seed=seed)
    Xb = torch.cat([X.double(), torch.ones(len(X), 1, dtype=torch.float64)], 1)
    acc = float(((Xb @ lap.mode > 0).double() == y.double()).double().mean())
    return dict(laplace=lap.log_integral, ais=ais, train_acc=acc, p=X.shape[1] + 1)


def evidence_check_table(reparam: Mapping, checks: Mapping[float, Dict]) -> MarkdownTable:
    """The Laplace evidence against the exact one: the rows of :func:`reparametrization_check`
    (two weights, in ω and in η, quadrature) and of :func:`evidence_check` (one per λ, AIS)."""
    rows = [["2 weights, ω", "1", f"{reparam['laplace']:.3f}", f"{reparam['exact']:.6f} (quadrature)", "", ""],
            ["2 weights, ω = h(η)", "1", f"{reparam['laplace_eta']:.3f}", f"{reparam['exact_eta']:.6f} (quadrature)",
             "", ""]]
    rows += [[f"{c['p']} weights, train acc {100 * c['train_acc']:.0f} %", f"{lam:g}", f"{c['laplace']:.2f}",
              f"{c['ais'].log_evidence:.2f} ± {c['ais'].stderr:.2f} (AIS)", f"ESS {c['ais'].ess:.1f}",
              f"{c['laplace'] - c['ais'].log_evidence:+.2f}"] for lam, c in checks.items()]
    return markdown_table(["model", "λ", "Laplace ln Z", "exact ln Z", "effective sample size",
                           "Laplace − exact"], rows)


def reparam_sentence(reparam: Mapping) -> str:
    """:func:`reparametrization_check` in one sentence, from its numbers."""
    return (f"{reparam['exact']:.6f} nats in ω and {reparam['exact_eta']:.6f} in η, while the Laplace "
            f"evidence moves from {reparam['laplace']:.3f} to {reparam['laplace_eta']:.3f} "
            f"({reparam['laplace_eta'] - reparam['laplace']:+.3f} nats).")


def false_positive_sentence(rows: Sequence[Dict]) -> str:
    """The random-label rows of :func:`fit_and_evidence` that get a positive ln evidence ratio —
    false positives — named in one sentence, for the Hessian and the Gauss–Newton evidence."""
    rand = [r for r in rows if r["labels"] == "random"]
    fp = [r for r in rand if r["status"] == "accepted" and r["ratio"] > 0]
    ggn = [r for r in rand if r.get("ggn_ratio", -math.inf) > 0]
    first = ("; ".join(f"random labels at λ = {r['lam']:g} get {r['ratio']:+.1f} nats" for r in fp)
             + (", a false positive of the Hessian evidence" if len(fp) == 1 else ", false positives of the Hessian evidence")
             if fp else "no random-label fit gets a positive Hessian evidence ratio at these λ")
    return (f"{first}. The Gauss–Newton evidence, defined at every fit, gives a positive ratio to "
            f"{len(ggn)} of the {len(rand)} random-label fits")


def slq_table(row: Mapping, loss_fn, train, settings: Sequence, seed: int = 0) -> MarkdownTable:
    r"""The exact Laplace evidence of a :func:`lambda_sweep` row against stochastic Lanczos
    quadrature (``laplace_log_evidence(method="slq")``) with each ``(probes, steps)`` of
    ``settings``: value ± standard error and Hessian-vector products spent."""
    rows = [["exact (dense, eigh)", f"{row['log_ev']:.2f}", f"{row['evidence'].num_parameters}"]]
    for probes, steps in settings:
        est = laplace_log_evidence(row["model"], loss_fn, train, row["lam"], method="slq",
                                   num_probes=probes, num_lanczos=steps, seed=seed)
        rows.append([f"SLQ, {probes} probes × {steps} steps", f"{est.log_evidence:.2f} ± {est.stderr:.2f}",
                     f"{probes * steps}"])
    return markdown_table(["method", "ln evidence", "Hessian-vector products"], rows)
