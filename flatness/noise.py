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

import numpy as np

__all__ = ["noise_scale", "batch_size_for_noise"]


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


