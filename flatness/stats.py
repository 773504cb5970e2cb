r"""Statistics of experiments: groups of runs, peaks, power laws and their uncertainty.

* :func:`by_batch` and :func:`compare_groups` summarize runs per batch size and compare a
  small-batch group with a large-batch group against the spread over seeds (and, for
  accuracies, the sampling error of the test set: :meth:`GroupComparison.noise`);
  :func:`compare_by_group` does so within every setting of a sweep;
* :func:`rank_correlation`: Spearman's rank correlation of two fields over runs;
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
from scipy.stats import spearmanr

__all__ = ["group_records", "by_batch", "GroupComparison", "compare_groups", "peak_location", "PowerLawFit",
           "loglog_fit", "compare_by_group", "RankCorrelation", "rank_correlation",
           "BootstrapInterval", "bootstrap_ci", "paired_bootstrap_ci", "SignFlipResult",
           "sign_flip_test"]


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

    def sampling_error(self, n: int) -> float:
        r"""The sampling standard error of :attr:`gap` when both means are accuracies measured
        on ``n`` independent test examples each:

        .. math:: \sqrt{\bigl(p_1(1-p_1) + p_2(1-p_2)\bigr) / n},
                  \qquad p_1 = \text{small\_mean},\ p_2 = \text{large\_mean}.

        Args:
            n: the number of test examples.

        Returns:
            The standard error.

        Raises:
            ValueError: a non-positive ``n``, or means outside [0, 1].

        >>> c = GroupComparison(0.5, math.nan, 0.5, math.nan, 1.0, 0.0, math.nan, 1, 1)
        >>> round(c.sampling_error(100), 6)  # sqrt(0.5 / 100)
        0.070711
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n: expected a positive integer, got {n!r}")
        for name, p in (("small_mean", self.small_mean), ("large_mean", self.large_mean)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: expected an accuracy in [0, 1], got {p}")
        return math.sqrt((self.small_mean * (1 - self.small_mean)
                          + self.large_mean * (1 - self.large_mean)) / n)

    def noise(self, n: int) -> float:
        """The yardstick of :attr:`gap`: the larger of :meth:`sampling_error` and
        :attr:`seed_spread` (the sampling error alone without repeated seeds).

        Args:
            n: the number of test examples.

        Returns:
            The noise level.
        """
        sampling = self.sampling_error(n)
        return sampling if math.isnan(self.seed_spread) else max(sampling, self.seed_spread)

    def ratio_text(self) -> str:
        """``"small / large (ratio×)"`` with three significant digits, the ratio with two decimals.

        >>> GroupComparison(2.0, 0.1, 5.0, 0.2, 2.5, -3.0, 0.1, 2, 2).ratio_text()
        '2 / 5 (2.50×)'
        """
        return f"{self.small_mean:.3g} / {self.large_mean:.3g} ({self.ratio:.2f}×)"


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


def group_records(records: Iterable[Mapping], by: Sequence[str]) -> Dict[tuple, List[Mapping]]:
    """The records grouped by the values of the fields ``by``, in order of first appearance.

    Args:
        records: mappings (one per run).
        by: field names; every record must have them.

    Returns:
        ``{(value, ...): [record, ...]}``, one entry per distinct tuple of values.

    Raises:
        ValueError: a record without one of the fields, or an empty ``by``.

    >>> rs = [{"B": 400, "s": 0}, {"B": 64, "s": 0}, {"B": 400, "s": 1}]
    >>> {k: len(v) for k, v in group_records(rs, ["B"]).items()}
    {(400,): 2, (64,): 1}
    """
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise ValueError("by: expected at least one field")
    groups: Dict[tuple, List[Mapping]] = {}
    for r in records:
        missing = [name for name in by if name not in r]
        if missing:
            raise ValueError(f"by: field {missing[0]!r} is missing from a record with keys "
                             f"{sorted(r)}")
        groups.setdefault(tuple(r[name] for name in by), []).append(r)
    return groups


def compare_by_group(records: Sequence[Mapping], metrics: Sequence[str], small: Iterable[int],
                     large: Iterable[int], by: Sequence[str]
                     ) -> Dict[tuple, Dict[str, GroupComparison]]:
    """Keskar et al.'s SB-against-LB comparison within every group of runs (a setting).

    The records are grouped by the fields ``by`` (in order of first appearance). Within a group,
    the small-batch group is every run with a batch size in ``small`` and each large batch size
    in ``large`` that the group has run is compared with it by :func:`compare_groups`, for every
    metric.

    Args:
        records: one mapping per run with a ``batch_size``, the fields ``by`` and the metrics.
        metrics: the keys to compare.
        small: the small batch sizes (pooled; a group needs at least one of them).
        large: the large batch sizes (each compared separately; absent ones are skipped).
        by: the fields that define a group.

    Returns:
        ``{(*group values, large batch size): {metric: GroupComparison}}``, groups in order of
        first appearance and large batch sizes increasing.

    Raises:
        ValueError: a record without a field of ``by``, a group without a small-batch run, and
            every error of :func:`compare_groups`.

    >>> rs = [{"opt": o, "batch_size": B, "acc": a} for o, B, a in
    ...       [("sgd", 64, 0.8), ("sgd", 400, 0.7), ("sgd", 4000, 0.6), ("adam", 64, 0.9),
    ...        ("adam", 400, 0.9)]]
    >>> {k: round(v["acc"].gap, 3) for k, v in compare_by_group(rs, ["acc"], [64],
    ...                                                         [400, 4000], ["opt"]).items()}
    {('sgd', 400): 0.1, ('sgd', 4000): 0.2, ('adam', 400): 0.0}
    """
    small, large = [int(b) for b in small], sorted({int(b) for b in large})
    groups = group_records(records, by)
    out: Dict[tuple, Dict[str, GroupComparison]] = {}
    for key, rows in groups.items():
        present = {int(r["batch_size"]) for r in rows}
        for lb in (b for b in large if b in present):
            out[key + (lb,)] = {m: compare_groups(rows, m, small, [lb]) for m in metrics}
    return out


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rank correlation of two quantities over runs, from :func:`rank_correlation`.

    Attributes:
        rho: Spearman's :math:`\\rho` (NaN when one quantity is constant).
        pvalue: the two-sided p-value of :math:`\\rho = 0` (SciPy's; asymptotic, so only
            meaningful for about ten runs or more).
        n: the number of runs.
    """

    rho: float
    pvalue: float
    n: int

    def describe(self, p_from: int = 10) -> str:
        """``"+0.52 (p = 0.027, n = 18)"``; the p-value only with at least ``p_from`` runs.

        >>> RankCorrelation(-1.0, 0.0, 3).describe()
        '-1.00 (n = 3)'
        >>> RankCorrelation(0.5234, 0.0271, 18).describe()
        '+0.52 (p = 0.027, n = 18)'
        """
        p = f"p = {self.pvalue:.2g}, " if self.n >= p_from else ""
        return f"{self.rho:+.2f} ({p}n = {self.n})"


def rank_correlation(records: Sequence[Mapping], x: str, y: str) -> RankCorrelation:
    r"""Spearman's rank correlation of the fields ``x`` and ``y`` over the records:
    Pearson's correlation of their ranks (ties get their mean rank),

    .. math:: \rho = \frac{\operatorname{cov}(R_x, R_y)}{\sigma_{R_x}\sigma_{R_y}}.

    Args:
        records: one mapping per run with both fields.
        x, y: the field names (for example ``"batch_size"`` and ``"lambda_max"``).

    Returns:
        A :class:`RankCorrelation`.

    Raises:
        ValueError: fewer than two records, or a record without a field.

    >>> rs = [{"B": B, "lam": l} for B, l in [(16, 3.0), (64, 2.0), (256, 2.5), (4000, 1.0)]]
    >>> round(rank_correlation(rs, "B", "lam").rho, 12)  # 1 - 6 * 18 / (4 * 15)
    -0.8
    """
    records = list(records)
    if len(records) < 2:
        raise ValueError(f"records: expected at least two records, got {len(records)}")
    for name, field in (("x", x), ("y", y)):
        if any(field not in r for r in records):
            raise ValueError(f"{name}: {field!r} is missing from a record")
    res = spearmanr([r[x] for r in records], [r[y] for r in records])
    return RankCorrelation(float(res.statistic), float(res.pvalue), len(records))


# --- Bootstrap intervals and paired tests over seeds or test examples (issue 12: claims) -------

@dataclass(frozen=True)
class BootstrapInterval:
    r"""A statistic with its percentile-bootstrap interval, from :func:`bootstrap_ci` or
    :func:`paired_bootstrap_ci`.

    Attributes:
        estimate: the statistic of the data themselves, :math:`\hat\theta = T(x)`.
        low, high: the interval's end points (NaN with a single value: no interval).
        level: its nominal coverage, e.g. 0.95.
        n: the number of values resampled (seeds, or test examples).
        n_resamples: the number of bootstrap resamples.
    """

    estimate: float
    low: float
    high: float
    level: float
    n: int
    n_resamples: int

    @property
    def ci(self) -> Tuple[float, float]:
        """``(low, high)``."""
        return (self.low, self.high)


def _sample(values, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of numbers, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: expected finite values")
    return v


def _resampling_args(level, n_resamples, seed) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    if not isinstance(n_resamples, int) or isinstance(n_resamples, bool) or n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an integer, got {type(seed).__name__}")


def _rowwise(statistic, samples: np.ndarray) -> np.ndarray:
    """``statistic`` of every row of ``samples``: through ``axis=1`` when it takes one."""
    try:
        out = np.asarray(statistic(samples, axis=1), dtype=np.float64)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.asarray([float(statistic(row)) for row in samples])


def _bootstrap_replicates(arrays: Sequence[np.ndarray], statistic, n_resamples: int,
                          seed: int) -> np.ndarray:
    r"""``n_resamples`` replicates :math:`T(x_{I}) - T(y_{I}) \dots`: one index draw per
    resample shared by every array (a paired resampling), ``arrays[0]`` minus ``arrays[1]``."""
    n = arrays[0].size
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)
    reps = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        r = _rowwise(statistic, arrays[0][idx])
        if len(arrays) == 2:
            r = r - _rowwise(statistic, arrays[1][idx])
        reps.append(r)
    return np.concatenate(reps)


def _percentile_interval(arrays, statistic, level, n_resamples, seed, estimate) -> BootstrapInterval:
    n = arrays[0].size
    if n == 1:
        return BootstrapInterval(estimate, math.nan, math.nan, float(level), 1, n_resamples)
    reps = _bootstrap_replicates(arrays, statistic, n_resamples, seed)
    alpha = 1.0 - level
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return BootstrapInterval(estimate, float(low), float(high), float(level), int(n), n_resamples)


def bootstrap_ci(values: Sequence[float], statistic=np.mean, level: float = 0.95,
                 n_resamples: int = 10_000, seed: int = 0) -> BootstrapInterval:
    r"""A statistic of ``values`` (one per seed, say) with its percentile-bootstrap interval.

    Each resample draws :math:`n` indices :math:`I_1, \dots, I_n` uniformly with replacement
    from :math:`\{1, \dots, n\}`; the replicate is :math:`T^*_r = T(x_{I_1}, \dots, x_{I_n})`.
    The interval is the :math:`\alpha/2` and :math:`1-\alpha/2` empirical quantiles of the
    :math:`R` replicates, :math:`\alpha = 1 - \text{level}`:

    .. math:: \bigl[\,Q_{\alpha/2}(T^*),\; Q_{1-\alpha/2}(T^*)\,\bigr].

    With few seeds the interval is narrower than its nominal level (with :math:`n = 5` the
    bootstrap distribution of the mean has only 126 distinct values); it measures the spread
    over the seeds at hand, not a population's.

    Args:
        values: the measurements, e.g. one per seed.
        statistic: a function of a 1-D array to a number; called as ``statistic(a, axis=1)`` on
            a batch of resamples when it accepts ``axis`` (as ``np.mean`` and ``np.median`` do).
        level: the nominal coverage.
        n_resamples: :math:`R`.
        seed: seed of the resampling generator (the result is a function of the inputs).

    Returns:
        A :class:`BootstrapInterval`; with a single value its end points are NaN (no interval).

    Raises:
        ValueError: empty or non-finite values, a level outside (0, 1), a bad ``n_resamples``.
        TypeError: a non-integer seed.

    >>> b = bootstrap_ci([1.0, 3.0])   # resampled means: 1, 2, 3 with probabilities 1/4, 1/2, 1/4
    >>> b.estimate, b.ci
    (2.0, (1.0, 3.0))
    """
    v = _sample(values, "values")
    _resampling_args(level, n_resamples, seed)
    return _percentile_interval([v], statistic, level, n_resamples, seed, float(statistic(v)))


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], statistic=np.mean,
                        level: float = 0.95, n_resamples: int = 10_000,
                        seed: int = 0) -> BootstrapInterval:
    r"""The difference :math:`T(a) - T(b)` of two paired arms with its percentile-bootstrap
    interval, the pairs resampled together.

    Pairs :math:`(a_i, b_i)` share a unit: the same seed, or the same test example scored by two
    models. Each resample draws indices :math:`I_1, \dots, I_n` and takes
    :math:`T^*_r = T(a_{I}) - T(b_{I})` with the *same* indices for both arms, so that what the
    units share (an easy or a hard test example) cancels. For the mean,
    :math:`T(a_I) - T(b_I)` is the mean of the paired differences :math:`d_i = a_i - b_i`.

    Args:
        a, b: the two arms, paired by position (same length).
        statistic, level, n_resamples, seed: as in :func:`bootstrap_ci`.

    Returns:
        A :class:`BootstrapInterval` of :math:`T(a) - T(b)`.

    Raises:
        ValueError: arms of different lengths, or as in :func:`bootstrap_ci`.

    >>> paired_bootstrap_ci([2.0, 5.0, 9.0, 4.0], [1.0, 4.0, 8.0, 3.0]).ci   # every d_i = 1
    (1.0, 1.0)
    """
    x, y = _sample(a, "a"), _sample(b, "b")
    if x.size != y.size:
        raise ValueError(f"a, b: expected paired arms of the same length, got {x.size} and {y.size}")
    _resampling_args(level, n_resamples, seed)
    estimate = float(statistic(x)) - float(statistic(y))
    return _percentile_interval([x, y], statistic, level, n_resamples, seed, estimate)


@dataclass(frozen=True)
class SignFlipResult:
    r"""A paired sign-flip test, from :func:`sign_flip_test`.

    Attributes:
        statistic: the observed mean difference :math:`\bar d`.
        p_value: the test's p-value.
        n: the number of pairs.
        exact: whether every sign pattern was enumerated (else Monte Carlo).
        alternative: ``"greater"``, ``"less"`` or ``"two-sided"``.
    """

    statistic: float
    p_value: float
    n: int
    exact: bool
    alternative: str


def sign_flip_test(a: Sequence[float], b: "Sequence[float] | None" = None,
                   alternative: str = "greater", n_resamples: int = 10_000, seed: int = 0,
                   exact_up_to: int = 16) -> SignFlipResult:
    r"""Paired sign-flip (randomization) test of the mean difference :math:`\bar d`,
    :math:`d_i = a_i - b_i` (or :math:`d_i = a_i` without ``b``).

    Under the null hypothesis every :math:`d_i` is symmetric about 0, so flipping signs,
    :math:`T_s = \frac1n \sum_i s_i d_i` with :math:`s \in \{-1, 1\}^n`, leaves the distribution
    of :math:`\bar d` unchanged. The p-value is the fraction of sign patterns at least as extreme
    as the observed one (which counts itself):

    .. math:: p_{>} = \frac{\#\{s : T_s \ge \bar d\}}{2^n}, \quad
              p_{<} = \frac{\#\{s : T_s \le \bar d\}}{2^n}, \quad
              p_{\ne} = \frac{\#\{s : |T_s| \ge |\bar d|\}}{2^n},

    enumerated exactly for :math:`n \le` ``exact_up_to``; above, with :math:`R` random sign
    patterns, :math:`p = (1 + \#\{\text{as extreme}\}) / (R + 1)`, which is never zero and keeps
    the test's level.

    Args:
        a: the first arm (or the differences when ``b`` is None).
        b: the second arm, paired with ``a`` by position.
        alternative: ``"greater"`` (:math:`a` larger), ``"less"`` or ``"two-sided"``.
        n_resamples: :math:`R` for the Monte Carlo test.
        seed: seed of its generator.
        exact_up_to: the largest :math:`n` that is enumerated (:math:`2^n` patterns).

    Returns:
        A :class:`SignFlipResult`.

    Raises:
        ValueError: a bad ``alternative``, arms of different lengths, bad values.

    >>> sign_flip_test([0.3, 0.1, 0.2, 0.5, 0.4]).p_value   # all five positive: only s = 1 ties
    0.03125
    """
    d = _sample(a, "a")
    if b is not None:
        y = _sample(b, "b")
        if y.size != d.size:
            raise ValueError(f"a, b: expected paired arms of the same length, got {d.size} and {y.size}")
        d = d - y
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative: expected 'greater', 'less' or 'two-sided', got {alternative!r}")
    _resampling_args(0.5, n_resamples, seed)
    if not isinstance(exact_up_to, int) or isinstance(exact_up_to, bool) or not 0 <= exact_up_to <= 24:
        raise ValueError(f"exact_up_to: expected an integer in [0, 24], got {exact_up_to!r}")
    n = d.size
    observed = float(np.ones(n) @ d / n)
    tol = 1e-12 * float(np.sum(np.abs(d))) / n   # ties up to rounding count as ties

    def extreme(t: np.ndarray) -> np.ndarray:
        if alternative == "greater":
            return t >= observed - tol
        if alternative == "less":
            return t <= observed + tol
        return np.abs(t) >= abs(observed) - tol

    exact = n <= exact_up_to
    if exact:
        count, total = 0, 0
        codes = np.arange(2 ** n, dtype=np.int64)
        for start in range(0, codes.size, 65_536):
            bits = (codes[start:start + 65_536, None] >> np.arange(n)) & 1
            t = (1.0 - 2.0 * bits) @ d / n
            count += int(np.sum(extreme(t)))
            total += t.size
        p = count / total
    else:
        rng = np.random.default_rng(seed)
        count, chunk = 0, max(1, 2_000_000 // n)
        for start in range(0, n_resamples, chunk):
            s = rng.integers(0, 2, size=(min(chunk, n_resamples - start), n)) * 2.0 - 1.0
            count += int(np.sum(extreme(s @ d / n)))
        p = (1 + count) / (n_resamples + 1)
    return SignFlipResult(observed, float(p), int(n), exact, alternative)
