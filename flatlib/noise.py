r"""The SGD noise scale of Smith & Le (2018), and where test accuracy peaks.

Read as a discretized stochastic differential equation, SGD with learning rate :math:`\varepsilon`,
batch size :math:`B` and training-set size :math:`N` has gradient noise of scale

.. math:: g = \varepsilon\Bigl(\frac{N}{B} - 1\Bigr) \approx \frac{\varepsilon N}{B}
   \qquad (B \ll N),

and with momentum :math:`m` the effective learning rate is :math:`\varepsilon/(1-m)`, so
:math:`g \approx \varepsilon N / (B(1-m))`. If the noise scale is what matters, the batch size
with the best test accuracy grows linearly with the learning rate and the training-set size,
:math:`B_{\mathrm{opt}} \propto \varepsilon N`, and "divide ε by k" and "multiply B by k" are
the same schedule (Smith, Kindermans, Ying & Le 2018).

* :func:`noise_scale` computes :math:`g`; :func:`batch_size_for_noise` inverts it.
* :func:`peak_location` locates the maximum of a curve sampled on a log grid (for
  :math:`B_{\mathrm{opt}}`), and :func:`loglog_fit` fits a power law with its standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["noise_scale", "batch_size_for_noise", "peak_location", "loglog_fit", "PowerLawFit"]


def _positive_array(value, name: str) -> np.ndarray:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a positive number, got {value!r}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a positive number or an array of them, "
                        f"got {type(value).__name__}") from None
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name}: expected positive finite values, got {value!r}")
    return arr


def _momentum(momentum) -> np.ndarray:
    arr = np.asarray(momentum, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr >= 1):
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
    return arr


def _result(x: np.ndarray):
    return float(x) if x.ndim == 0 else x


def noise_scale(lr, n_train, batch_size, momentum=0.0, approximate: bool = False):
    r"""The SGD noise scale (Smith & Le 2018).

    .. math:: g = \frac{\varepsilon}{1-m}\Bigl(\frac{N}{B} - 1\Bigr)
       \quad\text{or, with ``approximate=True``,}\quad g = \frac{\varepsilon N}{B(1-m)}.

    Args:
        lr: learning rate ε > 0.
        n_train: training-set size N.
        batch_size: batch size B, with 1 ≤ B ≤ N.
        momentum: momentum coefficient m in [0, 1).
        approximate: use :math:`\varepsilon N / (B(1-m))`, the :math:`B \ll N` form.

    Every argument may be a NumPy array (broadcast); the result is then an array.

    Returns:
        g (a float for scalar arguments).

    Raises:
        ValueError: a non-positive ε, N or B, B larger than N, or m outside [0, 1).

    >>> noise_scale(0.1, 1000, 10)
    9.9
    >>> noise_scale(0.1, 1000, 10, approximate=True)
    10.0
    >>> round(noise_scale(0.1, 1000, 10, momentum=0.9, approximate=True), 6)
    100.0
    >>> noise_scale(0.1, 1000, 1000)  # full batch: no noise
    0.0
    """
    eps = _positive_array(lr, "lr")
    N = _positive_array(n_train, "n_train")
    B = _positive_array(batch_size, "batch_size")
    m = _momentum(momentum)
    shape = np.broadcast(B, N).shape
    if np.any(np.broadcast_to(B, shape) > np.broadcast_to(N, shape)):
        raise ValueError(f"batch_size: expected at most n_train, got batch_size={batch_size!r} "
                         f"and n_train={n_train!r}")
    ratio = N / B if approximate else N / B - 1.0
    return _result(eps * ratio / (1.0 - m))


def batch_size_for_noise(g, lr, n_train, momentum=0.0, approximate: bool = False):
    r"""The batch size that gives noise scale ``g``: the inverse of :func:`noise_scale`.

    .. math:: B = \frac{N}{1 + g(1-m)/\varepsilon}
       \quad\text{or, with ``approximate=True``,}\quad B = \frac{\varepsilon N}{g(1-m)}.

    Returns a real number (round it to train).

    >>> batch_size_for_noise(9.9, 0.1, 1000)
    10.0
    >>> batch_size_for_noise(10.0, 0.1, 1000, approximate=True)
    10.0
    """
    gg = _positive_array(g, "g")
    eps = _positive_array(lr, "lr")
    N = _positive_array(n_train, "n_train")
    m = _momentum(momentum)
    if approximate:
        B = eps * N / (gg * (1.0 - m))
    else:
        B = N / (1.0 + gg * (1.0 - m) / eps)
    return _result(np.round(B, 12))


def peak_location(x: Sequence[float], y: Sequence[float], log: bool = True,
                  window: int = 3) -> float:
    r"""Where a curve sampled at ``x`` peaks: the vertex of a least-squares parabola through the
    best point and its neighbours (``window`` points, in :math:`\ln x` when ``log``).

    The window is centred on the best point and shifted to stay inside the grid; the vertex is
    clipped to the window. When the best point is at an end of the grid, that end is returned
    (the peak may lie outside the grid).

    Args:
        x: increasing sample positions (positive when ``log``).
        y: the values (for example test accuracy at each batch size).
        log: fit in :math:`\ln x` (for batch sizes on a geometric grid).
        window: the number of points the parabola is fitted to (odd, at least 3); a wider window
            smooths a noisy or flat-topped curve.

    Returns:
        The estimated position of the maximum.

    >>> round(peak_location([1, 2, 4, 8, 16], [0.1, 0.5, 0.9, 0.5, 0.1]), 6)  # symmetric in ln x
    4.0
    >>> peak_location([1, 2, 4], [3.0, 2.0, 1.0])  # at the edge
    1.0
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape or xs.size < 2:
        raise ValueError("x, y: expected two 1-D sequences of the same length ≥ 2")
    if not np.all(np.isfinite(xs)) or not np.all(np.isfinite(ys)):
        raise ValueError("x, y: expected finite values")
    if np.any(np.diff(xs) <= 0):
        raise ValueError("x: expected strictly increasing values")
    if log and np.any(xs <= 0):
        raise ValueError("x: expected positive values for log=True")
    if not isinstance(window, int) or isinstance(window, bool) or window < 3 or window % 2 == 0:
        raise ValueError(f"window: expected an odd integer ≥ 3, got {window!r}")
    t = np.log(xs) if log else xs
    i = int(np.argmax(ys))
    if i == 0 or i == len(xs) - 1:
        return float(xs[i])
    w = min(window, len(xs) - (1 - len(xs) % 2))
    lo = min(max(i - w // 2, 0), len(xs) - w)
    sl = slice(lo, lo + w)
    a, b, _ = np.polyfit(t[sl], ys[sl], 2)
    vertex = t[i] if a >= 0 else -b / (2 * a)
    vertex = float(np.clip(vertex, t[sl][0], t[sl][-1]))
    return float(np.exp(vertex)) if log else vertex


@dataclass
class PowerLawFit:
    """Result of :func:`loglog_fit`: :math:`y \\approx c\\, x^{\\text{slope}}`.

    Attributes:
        slope: the least-squares slope of ``ln y`` on ``ln x``.
        stderr: its standard error (``nan`` with two points).
        intercept: ``ln c``.
    """

    slope: float
    stderr: float
    intercept: float


def loglog_fit(x: Sequence[float], y: Sequence[float]) -> PowerLawFit:
    r"""Least-squares fit of :math:`\ln y = \ln c + s \ln x`, with the slope's standard error
    :math:`\hat\sigma / \sqrt{\sum_i (\ln x_i - \overline{\ln x})^2}`.

    >>> fit = loglog_fit([1, 2, 4, 8], [3, 6, 12, 24])
    >>> round(fit.slope, 6), round(fit.stderr, 6)
    (1.0, 0.0)
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape or xs.size < 2:
        raise ValueError("x, y: expected two 1-D sequences of the same length ≥ 2")
    if np.any(~np.isfinite(xs)) or np.any(~np.isfinite(ys)) or np.any(xs <= 0) or np.any(ys <= 0):
        raise ValueError("x, y: expected positive finite values")
    lx, ly = np.log(xs), np.log(ys)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    if sxx == 0:
        raise ValueError("x: expected at least two distinct values")
    slope = float(np.sum((lx - lx.mean()) * (ly - ly.mean())) / sxx)
    intercept = float(ly.mean() - slope * lx.mean())
    n = xs.size
    if n > 2:
        resid = ly - (intercept + slope * lx)
        stderr = math.sqrt(float(np.sum(resid ** 2)) / (n - 2) / sxx)
    else:
        stderr = math.nan
    return PowerLawFit(slope, stderr, intercept)
