r"""Statistics of experiments: groups of runs, peaks, power laws and their uncertainty.

* :func:`by_batch` and :func:`compare_groups` summarize runs per batch size and compare a
  small-batch group with a large-batch group against the spread over seeds;
* :func:`peak_location` finds where a curve peaks (on a log axis by default), between grid
  points, by a parabola through the best point and its neighbours;
* :func:`loglog_fit` fits :math:`y = c\,x^b` by least squares in log–log coordinates.

These are the only places where the book turns measurements into summary numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

__all__ = ["by_batch", "GroupComparison", "compare_groups", "peak_location", "PowerLawFit",
           "loglog_fit"]


def _values(records: Sequence[Mapping], metric: str) -> None:
    if not records:
        raise ValueError("records: expected at least one record")
    for r in records:
        if "batch_size" not in r:
            raise ValueError(f"records: every record needs a 'batch_size', got keys {sorted(r)}")
        if metric not in r:
            raise ValueError(f"metric: {metric!r} is not in the records (keys: {sorted(r)})")


def by_batch(records: Sequence[Mapping], metric: str) -> List[Tuple[int, float, float, int]]:
    """Mean and standard deviation over seeds of ``metric`` for every batch size.

    Args:
        records: one mapping per run with a ``batch_size`` and the metric.
        metric: the key to summarize.

    Returns:
        ``[(batch_size, mean, std, n), ...]`` by increasing batch size; ``std`` is the sample
        standard deviation (``ddof=1``), NaN for a single run.

    >>> rs = [{"batch_size": 64, "acc": 0.8}, {"batch_size": 64, "acc": 0.9},
    ...       {"batch_size": 16, "acc": 0.7}]
    >>> [(B, round(m, 3), n) for B, m, s, n in by_batch(rs, "acc")]
    [(16, 0.7, 1), (64, 0.85, 2)]
    """
    _values(records, metric)
    groups: Dict[int, List[float]] = {}
    for r in records:
        groups.setdefault(int(r["batch_size"]), []).append(float(r[metric]))
    rows = []
    for B in sorted(groups):
        v = np.asarray(groups[B])
        rows.append((B, float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, v.size))
    return rows


@dataclass(frozen=True)
class GroupComparison:
    """A small-batch (SB) group against a large-batch (LB) group, from :func:`compare_groups`.

    Attributes:
        small_mean, small_std, large_mean, large_std: mean and sample standard deviation of the
            metric over all runs of each group (NaN std for a single run).
        ratio: ``large_mean / small_mean`` (Keskar et al.'s LB/SB sharpness ratio).
        gap: ``small_mean - large_mean`` (the generalization gap when the metric is accuracy).
        seed_spread: the standard deviation over seeds at a fixed batch size, pooled over the
            batch sizes of both groups: the noise against which ``gap`` is judged (NaN without
            repeated seeds).
        n_small, n_large: numbers of runs.
    """

    small_mean: float
    small_std: float
    large_mean: float
    large_std: float
    ratio: float
    gap: float
    seed_spread: float
    n_small: int
    n_large: int


def compare_groups(records: Sequence[Mapping], metric: str, small: Iterable[int],
                   large: Iterable[int]) -> GroupComparison:
    r"""Compare ``metric`` between the runs with batch sizes in ``small`` and in ``large``.

    The seed spread pools the within-batch-size sample variances :math:`s_B^2` of every batch
    size with at least two runs, weighted by their degrees of freedom:

    .. math:: s_{\text{seed}}^2 = \frac{\sum_B (n_B - 1)\, s_B^2}{\sum_B (n_B - 1)}.

    Args:
        records: one mapping per run with a ``batch_size`` and the metric.
        metric: the key to compare.
        small, large: the batch sizes of each group (disjoint).

    Returns:
        A :class:`GroupComparison`.

    Raises:
        ValueError: overlapping groups, a group without runs, or a missing metric.

    >>> rs = [{"batch_size": B, "acc": a} for B, a in
    ...       [(64, 0.80), (64, 0.82), (4000, 0.70), (4000, 0.74)]]
    >>> c = compare_groups(rs, "acc", small=[64], large=[4000])
    >>> round(c.gap, 3), round(c.seed_spread, 4), round(c.ratio, 3)
    (0.09, 0.0224, 0.889)
    """
    _values(records, metric)
    small, large = {int(b) for b in small}, {int(b) for b in large}
    if small & large:
        raise ValueError(f"small, large: the groups share batch sizes {sorted(small & large)}")
    groups = {}
    for name, sizes in (("small", small), ("large", large)):
        v = np.asarray([float(r[metric]) for r in records if int(r["batch_size"]) in sizes])
        if v.size == 0:
            raise ValueError(f"{name}: no run has a batch size in {sorted(sizes)}")
        groups[name] = v
    ss, dof = 0.0, 0
    pooled = [r for r in records if int(r["batch_size"]) in small | large]
    for _, _, std, n in by_batch(pooled, metric):
        if n > 1:
            ss += (n - 1) * std ** 2
            dof += n - 1
    s, l_ = groups["small"], groups["large"]
    sd = lambda v: float(v.std(ddof=1)) if v.size > 1 else math.nan  # noqa: E731
    ratio = float(l_.mean() / s.mean()) if s.mean() != 0 else math.nan
    return GroupComparison(float(s.mean()), sd(s), float(l_.mean()), sd(l_), ratio,
                           float(s.mean() - l_.mean()), math.sqrt(ss / dof) if dof else math.nan,
                           int(s.size), int(l_.size))


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
