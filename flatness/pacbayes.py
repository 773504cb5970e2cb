r"""PAC-Bayes flatness and magnitude-aware PAC-Bayes flatness (Jiang et al. 2020).

Jiang, Neyshabur, Mobahi, Krishnan & Bengio, "Fantastic Generalization Measures and Where to
Find Them" (ICLR 2020), turn the PAC-Bayes bound into a flatness measure: the largest noise
level σ under which the training error of the perturbed network stays within a target
deviation :math:`d` (0.1 in the paper) of the unperturbed one,

.. math:: \sigma^\star = \max\{\sigma : |\mathbb{E}_u\,\hat e(\theta + u) - \hat e(\theta)| \le d\},

found by binary search, and report :math:`1/\sigma^{\star2}` ("pacbayes.flatness"). The noise is

* plain: :math:`u \sim \mathcal N(0, \sigma^2 I)`;
* magnitude-aware ("pacbayes.mag.flatness"): :math:`u_i \sim \mathcal N(0, \sigma^2\theta_i^2 +
  \epsilon^2)`, independently, with :math:`\epsilon = 10^{-3}` in the paper.

**σ is a standard deviation.** ``torch.normal(mean, std)`` takes the standard deviation; passing
the variance :math:`\sigma^2` there (as public ports of the measure do) makes the search return
the square root of the intended σ (wrong scale, and a flatness :math:`1/\sigma` instead of
:math:`1/\sigma^2`). :func:`pac_bayes_perturbation` draws the noise with the standard deviation
:math:`\sqrt{\sigma^2\theta_i^2 + \epsilon^2}` (or σ), and the tests check the empirical standard
deviation of what it draws.

**Invariance.** Plain PAC-Bayes flatness is not invariant to α-scale or neuron rescaling (a
fixed absolute noise level means little to a layer scaled by 1/25). The magnitude-aware version
with :math:`\epsilon = 0` perturbs :math:`\theta_i` by :math:`\sigma|\theta_i|\xi_i`; for a
positive diagonal symmetry :math:`\theta' = D\theta` the perturbed network
:math:`D(\theta + \sigma|\theta|\odot\xi)` computes the same function as
:math:`\theta + \sigma|\theta|\odot\xi`, so (with the same draws ξ) the deviation at every σ,
and so :math:`\sigma^\star`, are the same: exact invariance. The floor :math:`\epsilon > 0`
breaks it for parameters that the symmetry makes small (their noise becomes ε, not
:math:`\sigma|\theta_i|`).

The search uses common random numbers: every σ is evaluated with the same standard normal draws
ξ (the generator is reseeded with ``seed``), so the estimated deviation is a deterministic
function of σ and the bisection is well defined.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .checks import check_finite, check_positive, check_reduction, evaluation, is_real, materialize
from .params import ParameterLayout, loss_at
from .training import evaluate

__all__ = ["pac_bayes_perturbation", "pac_bayes_deviation", "pac_bayes_sigma",
           "pac_bayes_flatness"]


def _check_epsilon(epsilon) -> float:
    if not (is_real(epsilon) and 0 <= epsilon < float("inf")):
        raise ValueError(f"epsilon: expected a finite number >= 0, got {epsilon!r}")
    return float(epsilon)


def pac_bayes_perturbation(theta: Tensor, sigma: float, *, magnitude_aware: bool = False,
                           epsilon: float = 1e-3,
                           generator: Optional[torch.Generator] = None) -> Tensor:
    r"""One draw of the PAC-Bayes noise :math:`u` for the flat parameters ``theta``.

    :math:`u_i \sim \mathcal N(0, s_i^2)` with the standard deviation :math:`s_i = \sigma`
    (plain) or :math:`s_i = \sqrt{\sigma^2\theta_i^2 + \epsilon^2}` (magnitude-aware), drawn on
    the CPU in float64 by ``torch.normal(0, s)`` (whose second argument is a standard
    deviation) and returned in ``theta``'s dtype and device.

    Args:
        theta: the flat parameter vector.
        sigma: the noise level σ ≥ 0 (a standard deviation, relative for the magnitude-aware
            noise).
        magnitude_aware: scale the noise by :math:`|\theta_i|`.
        epsilon: the floor ε ≥ 0 of the magnitude-aware standard deviation (not used otherwise).
        generator: a CPU ``torch.Generator`` (default: torch's global one).

    Raises:
        ValueError: ``sigma`` or ``epsilon`` negative or not finite.

    >>> u = pac_bayes_perturbation(torch.zeros(100000), 0.5, generator=torch.Generator().manual_seed(0))
    >>> abs(float(u.std()) - 0.5) < 0.01
    True
    """
    if not (is_real(sigma) and 0 <= sigma < float("inf")):
        raise ValueError(f"sigma: expected a finite number >= 0, got {sigma!r}")
    epsilon = _check_epsilon(epsilon)
    t = theta.detach().to(device="cpu", dtype=torch.float64)
    if magnitude_aware:
        std = torch.sqrt(sigma ** 2 * t ** 2 + epsilon ** 2)
    else:
        std = torch.full_like(t, float(sigma))
    u = torch.normal(torch.zeros_like(t), std, generator=generator)
    return u.to(device=theta.device, dtype=theta.dtype)


def _statistic(model, loss_fn, batches, layout, criterion, eval_mode):
    if criterion == "error":
        def stat(vector):
            _, acc = evaluate(model, batches, loss_fn, eval_mode=eval_mode,
                              params=layout.to_dict(vector))
            return 1.0 - acc
    else:
        def stat(vector):
            return loss_at(model, loss_fn, batches, vector, layout=layout, eval_mode=eval_mode,
                           check=False)
    return stat


def _setup(model, loss_fn, data, criterion, num_samples, epsilon):
    if criterion not in ("error", "loss"):
        raise ValueError(f"criterion: expected 'error' (Jiang et al.'s training error) or "
                         f"'loss', got {criterion!r}")
    check_positive(num_samples, "num_samples", integer=True)
    epsilon = _check_epsilon(epsilon)
    check_reduction(loss_fn)
    layout = ParameterLayout(model)
    batches = materialize(data)
    theta = layout.to_vector(model, "model").to(layout.device)
    return layout, batches, theta, epsilon


def pac_bayes_deviation(model: nn.Module, loss_fn, data, sigma: float, *,
                        magnitude_aware: bool = False, epsilon: float = 1e-3,
                        num_samples: int = 10, criterion: str = "error", seed: int = 0,
                        eval_mode: Optional[bool] = None) -> float:
    r"""The Monte-Carlo deviation :math:`|\frac1M\sum_j \hat e(\theta + u_j) - \hat e(\theta)|`
    at noise level σ (the quantity :func:`pac_bayes_sigma` searches on).

    Args:
        model, loss_fn, data: the network (not changed), a mean-reduced loss, the training data.
        sigma, magnitude_aware, epsilon: the noise (:func:`pac_bayes_perturbation`).
        num_samples: the number M of draws.
        criterion: ``"error"`` (the training error, accuracy rule of
            :func:`flatness.training.evaluate`, as in Jiang et al.) or ``"loss"`` (the mean loss).
        seed: seeds the draws (the same draws for every σ).
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        The deviation (a float ≥ 0).
    """
    layout, batches, theta, epsilon = _setup(model, loss_fn, data, criterion, num_samples,
                                             epsilon)
    stat = _statistic(model, loss_fn, batches, layout, criterion, eval_mode)
    with evaluation(model, eval_mode):
        return _deviation(stat, theta, float(sigma), magnitude_aware, epsilon, num_samples, seed,
                          check_finite(stat(theta)))


def _deviation(stat, theta, sigma, magnitude_aware, epsilon, num_samples, seed, base):
    gen = torch.Generator().manual_seed(int(seed))
    total = 0.0
    for _ in range(num_samples):
        u = pac_bayes_perturbation(theta, sigma, magnitude_aware=magnitude_aware,
                                   epsilon=epsilon, generator=gen)
        total += stat(theta + u)
    return abs(total / num_samples - base)


def pac_bayes_sigma(model: nn.Module, loss_fn, data, *, magnitude_aware: bool = False,
                    target_deviation: float = 0.1, epsilon: float = 1e-3, num_samples: int = 10,
                    criterion: str = "error", sigma_start: float = 1.0,
                    tolerance: float = 1e-2, max_iter: int = 20, seed: int = 0,
                    eval_mode: Optional[bool] = None) -> float:
    r"""The noise level :math:`\sigma^\star` of Jiang et al.'s PAC-Bayes flatness, by bisection.

    The bracket starts at :math:`[0, \sigma_0]` with :math:`\sigma_0` = ``sigma_start``, which
    is doubled until the deviation (:func:`pac_bayes_deviation`) at its upper end reaches
    ``target_deviation``; then ``max_iter`` bisection steps halve it, keeping the deviation
    below the target at the lower end and above it at the upper end, and stopping early when a
    midpoint's deviation is within ``tolerance`` of the target. The midpoint of the last bracket
    (or the early stop's midpoint) is returned.

    Args:
        model: the network (not changed).
        loss_fn: a mean-reduced loss (the error criterion uses it only to check the labels).
        data: the training data.
        magnitude_aware: the magnitude-aware noise :math:`\mathcal N(0, \sigma^2\theta_i^2 +
            \epsilon^2)`.
        target_deviation: the deviation :math:`d` (Jiang et al.: 0.1 of the training error).
        epsilon: the magnitude-aware floor ε (Jiang et al.: 1e-3; 0 for exact invariance).
        num_samples: Monte-Carlo draws per σ.
        criterion: ``"error"`` or ``"loss"`` (see :func:`pac_bayes_deviation`).
        sigma_start: the initial upper end of the bracket.
        tolerance: stop when :math:`|\text{deviation} - d| \le` tolerance (0: bisect
            ``max_iter`` times).
        max_iter: bisection steps.
        seed: seeds the draws.
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        σ* (a standard deviation; relative to :math:`|\theta_i|` when magnitude-aware).

    Raises:
        ValueError: a bad argument (named), bad data, or a deviation that stays below the target
            up to :math:`\sigma = 2^{60}\sigma_0`.

    >>> net = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad(): _ = net.weight.fill_(1.0)
    >>> X, y = torch.ones(1, 1), torch.ones(1)
    >>> s = pac_bayes_sigma(net, torch.nn.BCEWithLogitsLoss(), (X, y[:, None]), num_samples=200)
    >>> 0.5 < s < 1.2        # error iff 1 + u <= 0: P = Phi(-1/sigma) = 0.1 at sigma = 0.78
    True
    """
    if not (is_real(target_deviation) and target_deviation > 0):
        raise ValueError(f"target_deviation: expected a positive number, got {target_deviation!r}")
    check_positive(sigma_start, "sigma_start")
    if not (is_real(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance: expected a number >= 0, got {tolerance!r}")
    check_positive(max_iter, "max_iter", integer=True)
    layout, batches, theta, epsilon = _setup(model, loss_fn, data, criterion, num_samples,
                                             epsilon)
    stat = _statistic(model, loss_fn, batches, layout, criterion, eval_mode)
    with evaluation(model, eval_mode):
        base = check_finite(stat(theta))

        def deviation(sigma):
            return _deviation(stat, theta, sigma, magnitude_aware, epsilon, num_samples, seed,
                              base)

        lo, hi = 0.0, float(sigma_start)
        for _ in range(61):
            if deviation(hi) >= target_deviation:
                break
            lo, hi = hi, 2 * hi
        else:
            raise ValueError(f"target_deviation: the deviation stays below {target_deviation} "
                             f"up to sigma = {hi:g}; the criterion cannot deviate that much")
        for _ in range(max_iter):
            mid = 0.5 * (lo + hi)
            d = deviation(mid)
            if abs(d - target_deviation) <= tolerance:
                return mid
            if d > target_deviation:
                hi = mid
            else:
                lo = mid
    return 0.5 * (lo + hi)


def pac_bayes_flatness(model: nn.Module, loss_fn, data, **kwargs) -> float:
    r"""Jiang et al.'s PAC-Bayes flatness :math:`1/\sigma^{\star2}` (magnitude-aware with
    ``magnitude_aware=True``); keywords as for :func:`pac_bayes_sigma`. Larger is sharper."""
    return 1.0 / pac_bayes_sigma(model, loss_fn, data, **kwargs) ** 2
