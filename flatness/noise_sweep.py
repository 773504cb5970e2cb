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

The population design (chapter 06):

* :func:`sqrt2_grid` — batch sizes on a :math:`\sqrt2` grid;
* :func:`population_sweep` — every (ε, N, B, seed), one population per (N, B)
  (:func:`flatness.cache.load_or_train_many`), with training accuracy and
  :math:`\lambda_{\max}` of every run; curves in the format of :func:`batch_peak_sweep`;
* :func:`optimum_bootstrap` — :math:`B_{\mathrm{opt}}` of every curve and the slope of
  :math:`\ln B_{\mathrm{opt}}` with percentile-bootstrap intervals over seeds (one draw of seeds
  shared by every curve); :func:`seed_bootstrap` for any other statistic of the seeds;
* :func:`window_sensitivity` — the same for other peak windows;
* :func:`at_optimum`, :func:`run_table`, :func:`optimum_table` — what the chapter prints.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .claims import Decision, not_testable
from .noise import noise_scale
from .stats import loglog_fit, peak_location
from .tables import MarkdownTable, markdown_table

__all__ = ["final_test_accuracy", "batch_peak_sweep", "optimum_slope", "format_slope",
           "collapse_spread", "peak_table", "sqrt2_grid", "population_sweep", "optimum_bootstrap",
           "window_sensitivity", "seed_bootstrap", "seeded_decision", "at_optimum", "run_table",
           "optimum_table"]


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


# --------------------------------------------------------------------------------------------
# the population design: one population per (N, B), members = learning rates × seeds
# --------------------------------------------------------------------------------------------

def sqrt2_grid(low: float, high: float) -> List[int]:
    r"""Batch sizes :math:`\operatorname{round}(2^{k/2})` between ``low`` and ``high`` (inclusive),
    without repeats: a grid that is uniform in :math:`\ln B` with ratio :math:`\sqrt2`.

    Args:
        low, high: bounds, :math:`1 \le` ``low`` :math:`\le` ``high``.

    Returns:
        The increasing list of integer batch sizes.

    Raises:
        ValueError: bounds below 1 or ``low > high``.

    >>> sqrt2_grid(2, 64)
    [2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64]
    """
    if not (math.isfinite(low) and math.isfinite(high)) or low < 1 or high < low:
        raise ValueError(f"low, high: expected 1 <= low <= high, got {low!r}, {high!r}")
    out: List[int] = []
    k = 0
    while 2 ** (k / 2) <= high * (1 + 1e-9):
        b = int(round(2 ** (k / 2)))
        if b >= low and b <= high and (not out or b > out[-1]):
            out.append(b)
        k += 1
    return out


def _default_train_many(configs):
    from .cache import load_or_train_many

    return load_or_train_many(configs)


def _sharpness(models, n_train_data, loss_fn=None, tol: float = 1e-2):
    """λ_max of the mean training loss of every member (batched Lanczos)."""
    from torch import nn

    from .population_curvature import population_top_eigenvalues

    res = population_top_eigenvalues(models, loss_fn or nn.CrossEntropyLoss(), n_train_data, tol=tol)
    return [float(r.eigenvalues[0]) for r in res]


def population_sweep(make_config: Callable, lrs: Sequence[float], n_values: Sequence[int],
                     batches: Callable[[int], Sequence[int]], seeds: Sequence[int], *,
                     window: int = 5, chance: float = 0.1, sharpness_data: Optional[Callable] = None,
                     train_many: Optional[Callable] = None, train: Optional[Callable] = None) -> List[Dict]:
    r"""Train every (ε, N, B, seed) of a grid, one population per (N, B), and return one curve
    per (ε, N) in the format of :func:`batch_peak_sweep`, plus training accuracy and sharpness.

    Members of one population share the data (N) and the batch size (B), as
    :func:`flatness.population.train_population` requires; the learning rates and seeds vary
    inside it. If a population fails (a member's loss became NaN: training diverged), each
    learning rate's seeds are retried as a population of their own, and the members of a group
    that fails again are trained one by one (:func:`final_test_accuracy`); those that diverge are
    scored at ``chance``, with training accuracy ``chance`` and sharpness NaN.

    Args:
        make_config: ``(lr, batch_size, n_train, seed) → TrainConfig``.
        lrs: learning rates ε.
        n_values: training-set sizes N.
        batches: ``N → increasing batch sizes`` for that N (at least two).
        seeds: the seeds (init and data order), shared by every configuration, so that
            resampling seeds resamples whole rows of every curve at once.
        window: the peak window of :func:`flatness.stats.peak_location`.
        chance: the score of a diverged run.
        sharpness_data: ``N → (X, y)``: the data on which :math:`\lambda_{\max}` of each trained
            model is computed (``None``: no sharpness, NaN).
        train_many: ``configs → (models, histories)`` (default
            :func:`flatness.cache.load_or_train_many`).
        train: ``config → (model, history)`` for the one-by-one fallback.

    Returns:
        A list of dicts, one per (ε, N) in the order of ``n_values`` then ``lrs``, with the keys
        of :func:`batch_peak_sweep` and ``train_acc`` and ``sharpness`` (seeds × batches).

    Raises:
        ValueError: empty ``lrs``, ``n_values`` or ``seeds``, or fewer than two batch sizes.
    """
    lrs, n_values, seeds = list(lrs), list(n_values), list(seeds)
    if not lrs or not n_values or not seeds:
        raise ValueError("lrs, n_values, seeds: expected non-empty sequences")
    train_many = _default_train_many if train_many is None else train_many
    one = _default_train if train is None else train
    runs = []
    for n in n_values:
        bs = [int(b) for b in batches(n)]
        if len(bs) < 2 or any(b2 <= b1 for b1, b2 in zip(bs, bs[1:])):
            raise ValueError(f"batches: expected at least two increasing batch sizes for N={n}, got {bs!r}")
        shape = (len(lrs), len(seeds), len(bs))
        test, tr, sharp = np.full(shape, chance), np.full(shape, chance), np.full(shape, np.nan)
        diverged = np.zeros(shape, dtype=bool)
        for j, b in enumerate(bs):
            def fill(members, many=True):  # train members at batch size b; False if one diverged
                configs = [make_config(lrs[i], b, n, seeds[s]) for i, s in members]
                try:
                    models, hists = train_many(configs) if many else [list(x) for x in zip(*[one(c) for c in configs])]
                except ValueError:
                    return False
                for (i, s), h in zip(members, hists):
                    test[i, s, j], tr[i, s, j] = h["test_acc"][-1], h["train_acc"][-1]
                if sharpness_data is not None:  # the trained models as one population (batched Lanczos)
                    for (i, s), lam in zip(members, _sharpness(models, sharpness_data(n))):
                        sharp[i, s, j] = lam
                return True

            # all (ε, seed) at once; if a member diverges, each learning rate's seeds; then one by one
            if fill([(i, s) for i in range(len(lrs)) for s in range(len(seeds))]):
                continue
            for i in range(len(lrs)):
                if not fill([(i, s) for s in range(len(seeds))]):
                    for s in range(len(seeds)):
                        diverged[i, s, j] = not fill([(i, s)], many=False)
        for i, lr in enumerate(lrs):
            acc, mean = test[i], test[i].mean(0)
            best = int(np.argmax(mean))
            runs.append(dict(lr=lr, n_train=n, batches=np.array(bs), acc=acc, mean=mean,
                             train_acc=tr[i], sharpness=sharp[i], diverged=diverged[i],
                             interior=0 < best < len(bs) - 1,
                             b_opt=peak_location(bs, mean, window=window),
                             b_opt_seeds=np.array([peak_location(bs, a, window=window) for a in acc])))
    return runs


# --------------------------------------------------------------------------------------------
# statistics over seeds
# --------------------------------------------------------------------------------------------

def _slope(x, y) -> float:
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def optimum_bootstrap(runs: Sequence[Dict], key: str, window: int = 5, n_resamples: int = 2000,
                      level: float = 0.95, seed: int = 0) -> Dict:
    r"""Percentile-bootstrap intervals over seeds for every curve's :math:`B_{\mathrm{opt}}` and
    for the slope :math:`d\ln B_{\mathrm{opt}}/d\ln x`, ``x = run[key]``.

    Each resample draws the seeds with replacement, **the same draw for every curve** (a seed
    fixes the initialization and the data order of all of its runs), averages each curve over
    the drawn seeds, locates each peak (:func:`flatness.stats.peak_location`, ``window``
    points; a peak at an edge of its grid is that edge, and is flagged) and fits the
    least-squares slope of :math:`\ln B_{\mathrm{opt}}` against :math:`\ln x` over all curves.

    Args:
        runs: curves of :func:`population_sweep` (or :func:`batch_peak_sweep`) with the same
            seeds; at least two distinct values of ``key``.
        key: ``"lr"`` or ``"n_train"``.
        window: the peak window.
        n_resamples: bootstrap resamples.
        level: the interval's coverage.
        seed: seeds the resampling.

    Returns:
        A dict: ``x``; ``b_opt`` (estimates from all seeds), ``b_low``, ``b_high`` (intervals),
        ``edge`` (bool: peak at an edge of the grid); ``slope`` (estimate), ``slope_low``,
        ``slope_high``, ``slope_replicates``; ``n_seeds``. With one seed the intervals are NaN.

    Raises:
        ValueError: fewer than two distinct ``x`` or curves with different numbers of seeds.
    """
    runs = list(runs)
    x = [r[key] for r in runs]
    if len(set(x)) < 2:
        raise ValueError(f"runs: expected at least two distinct values of {key!r}, got {x!r}")
    n_seeds = {r["acc"].shape[0] for r in runs}
    if len(n_seeds) != 1:
        raise ValueError(f"runs: expected the same number of seeds in every curve, got {sorted(n_seeds)}")
    S = n_seeds.pop()

    def peaks(idx):
        return [peak_location(r["batches"], r["acc"][idx].mean(0), window=window) for r in runs]

    est = peaks(np.arange(S))
    edge = np.array([b in (r["batches"][0], r["batches"][-1]) for b, r in zip(est, runs)])
    out = dict(x=x, b_opt=np.array(est), edge=edge, slope=_slope(x, est), n_seeds=S)
    if S < 2:
        nan = np.full(len(runs), np.nan)
        return dict(out, b_low=nan, b_high=nan.copy(), slope_low=math.nan, slope_high=math.nan,
                    slope_replicates=np.array([]))
    rng = np.random.default_rng(seed)
    reps = np.array([peaks(rng.integers(0, S, S)) for _ in range(n_resamples)])
    slopes = np.array([_slope(x, row) for row in reps])
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    b_low, b_high = np.percentile(reps, q, axis=0)
    s_low, s_high = np.percentile(slopes, q)
    return dict(out, b_low=b_low, b_high=b_high, slope_low=float(s_low), slope_high=float(s_high),
                slope_replicates=slopes)


def window_sensitivity(runs: Sequence[Dict], key: str, windows: Sequence[int] = (3, 5, 7)) -> Dict[int, Dict]:
    r"""How :math:`B_{\mathrm{opt}}` and the slope depend on the peak-fitting window:
    ``{window: {"b_opt": [...], "slope": s}}`` from the seed-mean curves."""
    out = {}
    for w in windows:
        b = [peak_location(r["batches"], r["mean"], window=w) for r in runs]
        out[int(w)] = dict(b_opt=np.array(b), slope=_slope([r[key] for r in runs], b))
    return out


def seed_bootstrap(n_seeds: int, statistic: Callable[[np.ndarray], float], n_resamples: int = 2000,
                   level: float = 0.95, seed: int = 0) -> Tuple[float, float, float]:
    r"""A statistic of a seeded experiment, with a percentile bootstrap over seeds.

    ``statistic(idx)`` computes the number from the seeds ``idx`` (an integer array, repeats
    allowed: average every curve over ``run["acc"][idx]`` etc.); the estimate uses all seeds and
    each resample a draw of ``n_seeds`` seeds with replacement, shared by every curve inside
    ``statistic`` (as in :func:`optimum_bootstrap`).

    Args:
        n_seeds: the number of seeds :math:`S`.
        statistic: ``idx → float``.
        n_resamples, level, seed: as for :func:`optimum_bootstrap`.

    Returns:
        ``(estimate, low, high)``; NaN bounds with one seed.

    Raises:
        ValueError: ``n_seeds`` < 1.

    >>> acc = np.array([0.0, 2.0])
    >>> seed_bootstrap(2, lambda idx: float(acc[idx].mean()), n_resamples=200)[0]
    1.0
    >>> seed_bootstrap(1, lambda idx: 0.5)
    (0.5, nan, nan)
    """
    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"n_seeds: expected a positive integer, got {n_seeds!r}")
    est = float(statistic(np.arange(n_seeds)))
    if n_seeds < 2:
        return est, math.nan, math.nan
    rng = np.random.default_rng(seed)
    reps = [statistic(rng.integers(0, n_seeds, n_seeds)) for _ in range(n_resamples)]
    lo, hi = np.percentile(reps, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return est, float(lo), float(hi)


def seeded_decision(rule: Callable, n_seeds: int, statistic: Callable[[np.ndarray], float], name: str,
                    **kwargs) -> Decision:
    r"""A claims decision on a statistic of the seeds, with its bootstrap interval.

    ``rule(estimate, (low, high), n=n_seeds, name=name, **kwargs)`` with the numbers of
    :func:`seed_bootstrap`; one seed gives no interval (the rule reports *not testable*), and a
    statistic that is not finite on this data (a spread of curves whose ranges do not overlap,
    the sharpness of a run that diverged) gives :func:`flatness.claims.not_testable`.

    Args:
        rule: a decision rule of :mod:`flatness.claims` (``interval_above``, ``interval_below``,
            ``within_tolerance``, …).
        n_seeds, statistic: as for :func:`seed_bootstrap`.
        name: what is measured.
        **kwargs: the rule's other arguments (``threshold=``, ``target=``, ``tolerance=``).

    Returns:
        A :class:`flatness.claims.Decision`.

    >>> from flatness.claims import interval_above
    >>> acc = np.array([0.6, 0.7, 0.8])
    >>> seeded_decision(interval_above, 3, lambda i: float(acc[i].mean()), "acc", threshold=0.5).outcome
    'held'
    >>> seeded_decision(interval_above, 3, lambda i: float("nan"), "acc", threshold=0.5).outcome
    'not testable here'
    """
    est, lo, hi = seed_bootstrap(n_seeds, statistic)
    if not math.isfinite(est) or (n_seeds > 1 and not (math.isfinite(lo) and math.isfinite(hi))):
        return not_testable(f"{name}: not defined on this data")
    return rule(est, (lo, hi), n=n_seeds, name=name, **kwargs)


def at_optimum(run: Dict, field: str, idx: Optional[np.ndarray] = None) -> float:
    """The mean over seeds ``idx`` (default all) of ``run[field]`` (``train_acc``,
    ``sharpness``, …) at the grid point where the mean test accuracy over those seeds is best.

    >>> r = dict(acc=np.array([[0.1, 0.5, 0.2]]), train_acc=np.array([[0.5, 0.9, 1.0]]))
    >>> at_optimum(r, "train_acc")
    0.9
    """
    idx = np.arange(run["acc"].shape[0]) if idx is None else idx
    j = int(np.argmax(run["acc"][idx].mean(0)))
    return float(np.asarray(run[field])[idx, j].mean())


def run_table(runs: Sequence[Dict], momentum: float = 0.0) -> MarkdownTable:
    r"""Every run of a :func:`population_sweep`, one row per (N, ε, B), seed means: test and
    training accuracy, :math:`\varepsilon\lambda_{\max}` against the stability bound
    :math:`2(1+m)` and the noise scale :math:`g = \varepsilon N/(B(1-m))`."""
    rows = []
    for r in runs:
        lam = np.nanmean(r["sharpness"], 0) if np.isfinite(r["sharpness"]).any() else np.full(len(r["batches"]), np.nan)
        for j, b in enumerate(r["batches"]):
            rows.append([f"{r['n_train']}", f"{r['lr']:g}", f"{b}", f"{100 * r['mean'][j]:.1f}",
                         f"{100 * r['train_acc'][:, j].mean():.1f}", f"{r['lr'] * lam[j]:.2f}",
                         f"{noise_scale(r['lr'], r['n_train'], b, momentum, approximate=True):.1f}"
                         + (" (diverged)" if r["diverged"][:, j].any() else "")])
    return markdown_table(["N", "ε", "B", "test acc. (%)", "train acc. (%)",
                           f"ε·λ_max (stable < {2 * (1 + momentum):g})", "g = εN/(B(1−m))"], rows)


def optimum_table(runs: Sequence[Dict], boot_by_run: Sequence[Tuple[float, float, float]],
                  momentum: float = 0.0) -> MarkdownTable:
    r"""One row per curve: :math:`B_{\mathrm{opt}}` with its bootstrap interval (``(edge)`` when
    the peak is at an end of the grid), the best test accuracy, the training accuracy and
    :math:`\varepsilon\lambda_{\max}` there, :math:`g_{\mathrm{opt}}` and
    :math:`\varepsilon/B_{\mathrm{opt}}`."""
    rows = []
    for r, (b, lo, hi) in zip(runs, boot_by_run):
        ci = f" [{lo:.1f}, {hi:.1f}]" if np.isfinite(lo) else ""
        edge = " (edge)" if b in (r["batches"][0], r["batches"][-1]) else ""
        rows.append([f"ε = {r['lr']:g}, N = {r['n_train']}", f"{b:.1f}{ci}{edge}",
                     f"{100 * r['mean'].max():.1f}", f"{100 * at_optimum(r, 'train_acc'):.1f}",
                     f"{r['lr'] * at_optimum(r, 'sharpness'):.2f}",
                     f"{noise_scale(r['lr'], r['n_train'], b, momentum, approximate=True):.0f}",
                     f"{r['lr'] / b:.4f}"])
    return markdown_table(["curve", "B_opt [95 % CI]", "best test acc. (%)", "train acc. there (%)",
                           "ε·λ_max there", "g_opt = εN/(B_opt(1−m))", "ε/B_opt"], rows)
