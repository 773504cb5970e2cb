r"""Elementwise adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023).

Plain sharpness perturbs the parameters in a ball of fixed radius, so rescaling a layer (Dinh
et al.'s α-scale) changes it without changing the function. Adaptive sharpness measures the
perturbation relative to the size of each parameter: with the scale vector

.. math:: c = |\theta| + \eta \qquad (\text{elementwise}),

a perturbation :math:`\delta = c \odot z` is allowed when :math:`\lVert z\rVert_p \le \rho`.
The worst and the average case are

.. math::
    S_{\max} = \max_{\lVert z\rVert_p\le\rho} L(\theta + c\odot z) - L(\theta),
    \qquad
    S_{\mathrm{avg}} = \mathbb{E}_{z\sim\mathcal N(0, \rho^2 I)}\, L(\theta + c\odot z) - L(\theta),

with :math:`p \in \{2, \infty\}` (Andriushchenko et al.'s definitions with
:math:`c = |\theta|`; Kwon et al.'s ASAM normalization operator is
:math:`T_\theta = \mathrm{diag}(|\theta|) + \eta`).

**Invariance and the offset η.** Let :math:`\theta' = D\theta` with :math:`D` a positive
diagonal matrix such that :math:`L'(D\theta) = L(\theta)` for every :math:`\theta` — α-scale
of whole layers, per-neuron rescaling of ReLU units and the radial rescaling of
weight-normalized rows are all of this form. With :math:`\eta = 0`, :math:`|D\theta| =
D|\theta|`, so :math:`\theta' + |\theta'|\odot z = D(\theta + |\theta|\odot z)` and the loss
seen at every :math:`z` is the same: both :math:`S_{\max}` and :math:`S_{\mathrm{avg}}` are
exactly invariant (here even the iterates of the ascent and the Monte-Carlo draws coincide,
since :math:`\nabla_z` is the same function of :math:`z`). With :math:`\eta > 0` the scale
:math:`D|\theta| + \eta \ne D(|\theta| + \eta)`: parameters that the symmetry makes small
get a perturbation of at least :math:`\eta\rho` in absolute terms, so the measure is no
longer invariant (it moves by an amount that grows with η and with the spread of the factors).
The offset exists so that parameters that are exactly zero can move at all.

The full-data mean loss is used (not Andriushchenko et al.'s per-batch "m-sharpness"); every
loss is evaluated functionally in float64 (:func:`flatness.params.loss_at`), so the model is
never changed.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .checks import check_finite, check_positive, check_reduction, evaluation, is_real, materialize
from .params import ParameterLayout, loss_at

__all__ = ["adaptive_sharpness", "adaptive_scale"]


def adaptive_scale(vector: Tensor, eta: float = 0.0) -> Tensor:
    r"""The elementwise scale :math:`c = |\theta| + \eta` of adaptive sharpness.

    >>> adaptive_scale(torch.tensor([-2.0, 0.0, 3.0]), eta=0.5)
    tensor([2.5000, 0.5000, 3.5000])
    """
    return vector.abs() + eta


def _float64_batches(data, device):
    f64 = torch.float64
    return [(X.to(device=device, dtype=f64) if X.is_floating_point() else X.to(device),
             y.to(device=device, dtype=f64) if y.is_floating_point() else y.to(device))
            for X, y in materialize(data)]


def _project(z: Tensor, rho: float, norm: str) -> Tensor:
    if norm == "inf":
        return z.clamp(-rho, rho)
    size = z.norm()
    return z * (rho / size) if size > rho else z


def adaptive_sharpness(model: nn.Module, loss_fn, data, rho: float, *, norm: str = "2",
                       kind: str = "worst", eta: float = 0.0, steps: int = 10,
                       num_samples: int = 20, step_size: Optional[float] = None, seed: int = 0,
                       eval_mode: Optional[bool] = None) -> float:
    r"""Elementwise adaptive sharpness :math:`S_{\max}` or :math:`S_{\mathrm{avg}}` (see the
    module docstring) of the full-data loss.

    * ``kind="worst"``: projected gradient ascent on :math:`z` in the :math:`L_p` ball of
      radius ρ, from a random start (at an exact minimum the gradient vanishes at
      :math:`z = 0`): :math:`z_0` is a Gaussian direction of norm ρ/2 (``norm="2"``) or
      uniform in :math:`[-\rho/2, \rho/2]^n` (``norm="inf"``); each step moves along the
      steepest-ascent direction of the norm, :math:`g/\lVert g\rVert_2` or
      :math:`\mathrm{sign}(g)`, with :math:`g = c\odot\nabla L(\theta + c\odot z)`, by
      ``step_size`` (default :math:`2.5\rho/\text{steps}`), then projects back onto the ball.
      The largest loss seen is returned, so the result is a lower bound on :math:`S_{\max}`
      (and ≥ 0 only up to the start's loss).
    * ``kind="average"``: the Monte-Carlo mean over ``num_samples`` draws
      :math:`z \sim \mathcal N(0, \rho^2 I)` (``norm`` is not used). Its standard error is
      that of a sample mean; vary ``seed`` to see it.

    Draws are made on the CPU from ``torch.Generator().manual_seed(seed)`` in float64, so
    they do not depend on the device or on the model.

    Args:
        model: the network (not changed).
        loss_fn: a mean-reduced loss.
        data: an ``(X, y)`` pair or an iterable of batches.
        rho: the radius ρ > 0 (relative: a perturbation of parameter i is at most
            :math:`\rho\,c_i` in the L∞ ball).
        norm: ``"2"`` or ``"inf"`` (worst case only).
        kind: ``"worst"`` or ``"average"``.
        eta: the offset η ≥ 0 of the scale :math:`c = |\theta| + \eta` (η = 0: invariant to
            positive diagonal symmetries; η > 0: not).
        steps: ascent steps (worst case).
        num_samples: Monte-Carlo draws (average case).
        step_size: the ascent step in z-units (default ``2.5 * rho / steps``).
        seed: seeds the start point or the draws.
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        The sharpness (a loss difference, not a percentage).

    Raises:
        ValueError: ``rho``/``steps``/``num_samples``/``step_size`` not positive, ``eta``
            negative, an unknown ``norm`` or ``kind``, a loss that is not finite, bad data.

    >>> net = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad(): _ = net.weight.fill_(2.0)
    >>> X, y = torch.ones(4, 1), 2 * torch.ones(4, 1)        # L(w) = (w - 2)^2, minimum at w = 2
    >>> s = adaptive_sharpness(net, torch.nn.MSELoss(), (X, y), 0.1, norm="inf")
    >>> round(s, 12)                                       # (|w| rho)^2 = 0.04
    0.04
    """
    check_positive(rho, "rho")
    if norm not in ("2", "inf"):
        raise ValueError(f"norm: expected '2' or 'inf', got {norm!r}")
    if kind not in ("worst", "average"):
        raise ValueError(f"kind: expected 'worst' or 'average', got {kind!r}")
    if not (is_real(eta) and eta >= 0 and eta < float("inf")):
        raise ValueError(f"eta: expected a finite number >= 0, got {eta!r}")
    check_positive(steps, "steps", integer=True)
    check_positive(num_samples, "num_samples", integer=True)
    if step_size is not None:
        check_positive(step_size, "step_size")
    check_reduction(loss_fn)
    layout = ParameterLayout(model)
    device = layout.device
    batches = _float64_batches(data, device)
    theta = layout.to_vector(model, "model").to(device=device, dtype=torch.float64)
    c = adaptive_scale(theta, float(eta))
    gen = torch.Generator().manual_seed(int(seed))
    n = layout.numel

    def at(z: Tensor, grad: bool = False):
        return loss_at(model, loss_fn, batches, theta + c * z, grad=grad, layout=layout,
                       eval_mode=eval_mode, check=False)

    with evaluation(model, eval_mode):
        f0 = check_finite(loss_at(model, loss_fn, batches, theta, layout=layout,
                                  eval_mode=eval_mode))
        if kind == "average":
            total = 0.0
            for _ in range(num_samples):
                z = rho * torch.randn(n, generator=gen, dtype=torch.float64).to(device)
                total += at(z)
            return total / num_samples - f0
        alpha = 2.5 * rho / steps if step_size is None else float(step_size)
        if norm == "2":
            z = torch.randn(n, generator=gen, dtype=torch.float64)
            z = (0.5 * rho / z.norm().clamp_min(1e-300)) * z
        else:
            z = rho * (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5)
        z = z.to(device)
        best = f0
        for step in range(steps + 1):
            value, g = at(z, grad=True)
            if value == value:  # not NaN
                best = max(best, value)
            if step == steps:
                break
            g = c * g
            if norm == "inf":
                z = _project(z + alpha * torch.sign(g), rho, norm)
            else:
                size = g.norm()
                if not size > 0:
                    break
                z = _project(z + (alpha / size) * g, rho, norm)
    return best - f0
