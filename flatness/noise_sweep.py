r"""Where test accuracy peaks in the batch size, and how that peak moves with ε and N.

The noise-scale argument (:mod:`flatness.noise`) predicts :math:`B_{\mathrm{opt}} \propto
\varepsilon N`: the batch size with the best test accuracy after a fixed number of epochs grows
linearly with the learning rate and the training-set size, and test accuracy curves line up
when drawn against :math:`g = \varepsilon N/B`.

* :func:`final_test_accuracy` trains (or loads) one configuration; a run that diverged counts as
  chance.
* :func:`batch_peak_sweep` trains a grid of batch sizes and seeds and locates the peak
  :math:`B_{\mathrm{opt}}` of the seed-mean curve (and of each seed's curve). It is not
  :func:`flatness.sweeps.batch_sweep`, which scales the learning rate with the batch size and
  returns per-run records.
* :func:`optimum_slope` fits :math:`d\ln B_{\mathrm{opt}}/d\ln x` over sweeps;
  :func:`format_slope` prints it.
* :func:`collapse_spread` measures how well several curves line up against a variable.
* :func:`peak_table` lists the peaks with their noise scales.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .noise import noise_scale
from .stats import loglog_fit, peak_location
from .tables import MarkdownTable, markdown_table

__all__ = ["final_test_accuracy", "batch_peak_sweep", "optimum_slope", "format_slope",
           "collapse_spread", "peak_table"]


def _default_train(config):
    from .cache import load_or_train

    return load_or_train(config)


def final_test_accuracy(config, chance: float = 0.1,
                        train: Optional[Callable] = None) -> Tuple[float, bool]:
    """The last test accuracy of a training run, and whether it diverged.

    Args:
        config: a :class:`flatness.training.TrainConfig`.
        chance: the accuracy reported for a run that diverged (flatness.training raises
            ``ValueError`` on a NaN or infinite loss).
        train: ``config → (model, history)``; default :func:`flatness.cache.load_or_train`.

    Returns:
        ``(accuracy, diverged)``.
    """
    train = _default_train if train is None else train
    try:
        _, hist = train(config)
    except ValueError:
        return chance, True
    return hist["test_acc"][-1], False


def batch_peak_sweep(make_config: Callable, lr: float, n_train: int, batches: Sequence[int],
                     seeds: Sequence[int], window: int = 5, chance: float = 0.1,
                     train: Optional[Callable] = None) -> Dict:
    r"""Test accuracy over batch sizes and seeds at a fixed learning rate, and its peak.

    Args:
        make_config: ``(lr, batch_size, n_train, seed) → TrainConfig``.
        lr: the learning rate ε.
        n_train: the training-set size N; batch sizes above it are skipped.
        batches: increasing batch sizes.
        seeds: the seeds (one curve each).
        window: points of the parabola in :math:`\ln B` that locates each peak
            (:func:`flatness.stats.peak_location`).
        chance: the accuracy of a run that diverged.
        train: as for :func:`final_test_accuracy`.

    Returns:
        A dict: ``lr``, ``n_train``, ``batches`` (array), ``acc`` (seeds × batches),
        ``mean`` (over seeds), ``diverged`` (bool array), ``interior`` (whether the best mean is
        inside the grid), ``b_opt`` (the peak of the mean) and ``b_opt_seeds`` (each seed's peak).

    Raises:
        ValueError: no seeds, or fewer than two batch sizes up to ``n_train``.
    """
    used = [b for b in batches if b <= n_train]
    if len(used) < 2:
        raise ValueError(f"batches: expected at least two batch sizes ≤ n_train={n_train}, "
                         f"got {list(batches)!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    acc = np.zeros((len(seeds), len(used)))
    diverged = np.zeros_like(acc, dtype=bool)
    for i, seed in enumerate(seeds):
        for j, b in enumerate(used):
            acc[i, j], diverged[i, j] = final_test_accuracy(make_config(lr, b, n_train, seed),
                                                            chance, train)
    mean = acc.mean(0)
    best = int(np.argmax(mean))
    per_seed = [peak_location(used, a, window=window) for a in acc]
    return dict(lr=lr, n_train=n_train, batches=np.array(used), acc=acc, mean=mean,
                diverged=diverged, interior=0 < best < len(used) - 1,
                b_opt=peak_location(used, mean, window=window), b_opt_seeds=np.array(per_seed))


def optimum_slope(runs: Sequence[Dict], key: str):
    r"""The power law :math:`B_{\mathrm{opt}} \propto x^{s}` over sweeps, ``x = run[key]``.

    Only sweeps whose peak is inside the grid are used. With several seeds the slope is also
    fitted to each seed's peaks.

    Args:
        runs: results of :func:`batch_peak_sweep`.
        key: ``"lr"`` or ``"n_train"``.

    Returns:
        ``(slope, used)``: ``slope`` is ``None`` with fewer than two usable sweeps, else a dict
        with ``fit`` (a :class:`flatness.stats.PowerLawFit` of the seed-mean peaks),
        ``seed_slopes`` (array, empty for one seed) and ``x``; ``used`` the sweeps used.
    """
    used = [r for r in runs if r["interior"]]
    if len(used) < 2:
        return None, used
    x = [r[key] for r in used]
    fit = loglog_fit(x, [r["b_opt"] for r in used])
    n_seeds = used[0]["acc"].shape[0]
    seed_slopes = [loglog_fit(x, [r["b_opt_seeds"][i] for r in used]).slope
                   for i in range(n_seeds)] if n_seeds > 1 else []
    return dict(fit=fit, seed_slopes=np.array(seed_slopes), x=x), used


def format_slope(slope: Optional[Dict]) -> str:
    """``"1.02 ± 0.10 (per seed 0.9 to 1.1)"`` for a result of :func:`optimum_slope` (``—``
    for ``None``; no ``±`` when the standard error is undefined).

    >>> from flatness.stats import PowerLawFit
    >>> format_slope(dict(fit=PowerLawFit(1.0, 0.25, 0.0), seed_slopes=np.array([])))
    '1.00 ± 0.25'
    """
    if slope is None:
        return "—"
    fit = slope["fit"]
    text = f"{fit.slope:.2f} ± {fit.stderr:.2f}" if np.isfinite(fit.stderr) else f"{fit.slope:.2f}"
    if len(slope["seed_slopes"]):
        text += f" (per seed {slope['seed_slopes'].min():.2f} to {slope['seed_slopes'].max():.2f})"
    return text


def collapse_spread(xs: Sequence[Sequence[float]], ys: Sequence[Sequence[float]],
                    points: int = 25) -> float:
    r"""How well curves :math:`y_k(x)` line up: the mean gap between the highest and the lowest.

    Each curve is measured from its own maximum, :math:`y_k - \max y_k` (the question is where
    the curves peak, not how high), interpolated linearly in :math:`\ln x` on ``points`` points
    of the range all curves share; the result is the mean over that grid of
    :math:`\max_k - \min_k`. Zero when the curves coincide up to a shift in :math:`y`.

    Args:
        xs: one array of positive abscissae per curve (any order).
        ys: the values, one array per curve.
        points: grid points.

    Returns:
        The mean spread, ``nan`` when the ranges do not overlap.

    >>> collapse_spread([[1, 2, 4], [1, 2, 4]], [[0, 1, 0], [5, 6, 5]])  # the same up to a shift in y
    0.0
    """
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("xs, ys: expected the same number (≥ 2) of curves")
    xs = [np.asarray(x, dtype=np.float64) for x in xs]
    ys = [np.asarray(y, dtype=np.float64) for y in ys]
    for x, y in zip(xs, ys):
        if x.shape != y.shape or x.ndim != 1 or np.any(x <= 0):
            raise ValueError("xs, ys: expected 1-D arrays of equal length, xs positive")
    lo = max(np.log(x).min() for x in xs)
    hi = min(np.log(x).max() for x in xs)
    if hi <= lo:
        return math.nan
    grid = np.linspace(lo, hi, points)
    curves = []
    for x, y in zip(xs, ys):
        order = np.argsort(x)  # np.interp needs increasing abscissae (g falls as B grows)
        curves.append(np.interp(grid, np.log(x)[order], y[order] - y.max()))
    curves = np.array(curves)
    return float(np.mean(curves.max(0) - curves.min(0)))


def peak_table(runs: Sequence[Dict]) -> MarkdownTable:
    r"""One row per :func:`batch_peak_sweep`: :math:`B_{\mathrm{opt}}` (marked when at the edge of
    the grid), the best seed-mean test accuracy, :math:`g_{\mathrm{opt}} = \varepsilon N/B_{\mathrm{opt}}`
    and :math:`\varepsilon/B_{\mathrm{opt}}`."""
    return markdown_table(["run", "B_opt", "best test accuracy", "g_opt = εN/B_opt", "ε/B_opt"], [
        [f"ε = {r['lr']:g}, N = {r['n_train']}", f"{r['b_opt']:.1f}" + ("" if r["interior"] else " (edge)"),
         f"{100 * r['mean'].max():.1f} %",
         f"{noise_scale(r['lr'], r['n_train'], r['b_opt'], approximate=True):.0f}",
         f"{r['lr'] / r['b_opt']:.3f}"] for r in runs])
