r"""The large-batch chapter's measurements and claims (Keskar et al. 2017; Yao et al. 2018).

* :func:`seed_values` and :func:`seed_measurement` pair a small-batch and a large-batch group of
  sweep records seed by seed and turn the per-seed ratios or differences into a
  :class:`~flatness.claims.Measurement` with a bootstrap interval over seeds;
* :func:`large_batch_measurements` computes every number the chapter's claims rest on, and
  :func:`large_batch_claims` builds the claims from them (:data:`LARGE_BATCH_CLAIMS` holds each
  claim's sentence, the papers' numbers and their sources); the expected outcomes are written in
  the chapter;
* :func:`independent_test_set`, :func:`correctness` and :func:`paired_accuracy_gap`: a large
  fresh MNIST-1D test set, each model's per-example correctness on it, and the SB − LB accuracy
  difference with a bootstrap interval that resamples seeds and test examples together;
* :func:`late_median`: the median :math:`\lambda_{\max}` over the last part of training;
* :func:`grid_exponents`: the exponents of :math:`\lambda_{\max} \propto \eta^b B^c` over an
  :math:`\eta\times B` grid, with intervals over seeds;
* :func:`adam_preconditioner` and :func:`preconditioned_sharpness`: Adam's preconditioned
  sharpness :math:`\lambda_{\max}(P^{-1}H)` (Cohen et al. 2022);
* :func:`stop_epoch`: where a common-loss or a plateau stopping rule stops a recorded history.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .checks import check_positive, evaluation, materialize
from .claims import Claim, Measurement, all_of, interval_above, interval_below, within_tolerance
from .krylov import lanczos
from .operators import HessianOperator
from .params import ParameterLayout

__all__ = ["seed_values", "seed_measurement", "independent_test_set", "correctness",
           "paired_accuracy_gap", "late_median", "stop_epoch", "grid_exponents",
           "adam_preconditioner", "preconditioned_sharpness", "adam_stability_bound", "cell",
           "warm_start_band_figure", "measurement_text",
           "large_batch_measurements", "LARGE_BATCH_CLAIMS", "large_batch_claims"]


def seed_values(records: Iterable[Mapping], metric: str) -> Dict[Any, float]:
    """The mean of ``metric`` over each seed's runs: ``{seed: mean}``, by first appearance.

    A group such as "SB" may pool several batch sizes; its value for a seed is the mean over
    that seed's runs.

    Raises:
        ValueError: a record without ``seed`` or without ``metric``.

    >>> seed_values([{"seed": 0, "a": 1.0}, {"seed": 1, "a": 3.0}, {"seed": 0, "a": 2.0}], "a")
    {0: 1.5, 1: 3.0}
    """
    out: Dict[Any, List[float]] = {}
    for r in records:
        for name in ("seed", metric):
            if name not in r:
                raise ValueError(f"records: a record without {name!r}")
        out.setdefault(r["seed"], []).append(float(r[metric]))
    return {s: sum(v) / len(v) for s, v in out.items()}

def seed_measurement(name: str, small: Iterable[Mapping], large: Iterable[Mapping], metric: str,
                     statistic: str = "ratio") -> Measurement:
    r"""A paired-by-seed comparison of two groups of runs as a :class:`~flatness.claims.Measurement`.

    For every seed that both groups ran, with :math:`s_i` and :math:`l_i` the means of
    ``metric`` over the seed's runs in ``small`` and ``large`` (:func:`seed_values`), the
    per-seed value is :math:`l_i/s_i` (``"ratio"``, Keskar et al.'s LB/SB ratio),
    :math:`s_i - l_i` (``"difference"``, the gap SB − LB) or :math:`l_i` (``"large"``: the large
    group alone; ``small`` is then ignored and may be empty). The measurement is their mean with
    its 95 % percentile-bootstrap interval over seeds
    (:meth:`~flatness.claims.Measurement.bootstrap`); one seed gives no interval, so a claim
    decided on it is not testable.

    Args:
        name: what is measured.
        small, large: the runs of the two groups (records with ``seed`` and ``metric``).
        metric: the record field.
        statistic: ``"ratio"``, ``"difference"`` or ``"large"``.

    Returns:
        The measurement, over the seeds both groups share.

    Raises:
        ValueError: an unknown ``statistic``, or no seed in common.

    >>> sb = [{"seed": 0, "m": 1.0}, {"seed": 1, "m": 2.0}]
    >>> lb = [{"seed": 0, "m": 3.0}, {"seed": 1, "m": 2.0}]
    >>> m = seed_measurement("LB/SB", sb, lb, "m")
    >>> m.estimate, m.n, m.interval
    (2.0, 2, (1.0, 3.0))
    """
    if statistic not in ("ratio", "difference", "large"):
        raise ValueError(f"statistic: expected 'ratio', 'difference' or 'large', got {statistic!r}")
    lv = seed_values(large, metric)
    sv = seed_values(small, metric) if statistic != "large" else lv
    seeds = [s for s in lv if s in sv]
    if not seeds:
        raise ValueError("small, large: no seed in common")
    op = {"ratio": lambda a, b: b / a, "difference": lambda a, b: a - b, "large": lambda a, b: b}
    return Measurement.bootstrap(name, [op[statistic](sv[s], lv[s]) for s in seeds])

def independent_test_set(n: int = 10_000, seed: int = 43):
    r"""``n`` fresh MNIST-1D signals, drawn with another generator seed than the training data.

    :func:`flatness.data.mnist1d` with ``seed`` generates ``n`` signals of the same distribution
    as the book's data set (seed 42): the same ten templates, with their own random
    transformations and noise. The chapter scores every model on them: with ``n = 10000`` the
    sampling error of an accuracy near 65 % is :math:`\sqrt{p(1-p)/n} \approx 0.5` points.

    Args:
        n: the number of signals (≥ 20, even).
        seed: the generator's seed (not 42, the training data's).

    Returns:
        ``(X, y)`` with ``X`` of shape ``(n, 40)``.

    Raises:
        ValueError: ``n`` not an even integer ≥ 20, or ``seed == 42``.

    >>> X, y = independent_test_set(100)
    >>> tuple(X.shape), int(y.max()) < 10
    ((100, 40), True)
    """
    from .data import mnist1d

    if isinstance(n, bool) or not isinstance(n, int) or n < 20 or n % 2:
        raise ValueError(f"n: expected an even integer ≥ 20, got {n!r}")
    if seed == 42:
        raise ValueError("seed: 42 generates the training data; choose another seed")
    split = mnist1d(num_samples=n, train_fraction=0.5, seed=seed)
    return (torch.cat([split.X_train, split.X_test]), torch.cat([split.y_train, split.y_test]))


def correctness(model: nn.Module, data, batch_size: int = 4096) -> np.ndarray:
    """Whether ``model`` classifies each example of ``data`` correctly (argmax of the logits).

    Args:
        model: a classifier (evaluated in eval mode, without gradients; its mode is restored).
        data: an ``(X, y)`` pair.
        batch_size: examples per forward pass.

    Returns:
        A boolean array of length ``N``.

    >>> net = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.eye(2))
    >>> correctness(net, (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))).tolist()
    [True, False]
    """
    check_positive(batch_size, "batch_size", integer=True)
    X, y = data
    out = []
    with evaluation(model, True), torch.no_grad():
        for s in range(0, len(y), batch_size):
            out.append((model(X[s:s + batch_size]).argmax(1) == y[s:s + batch_size]).cpu())
    return torch.cat(out).numpy().astype(bool)


def paired_accuracy_gap(small: Sequence[np.ndarray], large: Sequence[np.ndarray], name: str,
                        n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Measurement:
    r"""The accuracy difference SB − LB on a shared test set, paired by seed and by test example.

    ``small[s]`` and ``large[s]`` are the per-example correctness (0/1) of the two arms' models
    of seed :math:`s` on the same :math:`n` test examples; :math:`D_{sj} = a_{sj} - b_{sj}`. The
    estimate is :math:`\bar D`, the mean over seeds and examples. Each bootstrap resample draws
    seeds and examples with replacement, *independently* (a two-way bootstrap: the seed
    variation and the test-set sampling both enter), the same draws for both arms (the pairing:
    an easy example or a lucky seed cancels), and takes
    :math:`\bar D^* = \frac{1}{Sn}\,w_{\text{seed}}^\top D\,w_{\text{ex}}` with the multinomial
    counts :math:`w`. The interval is the percentile interval. With one seed the seed-to-seed
    variation is unknown and no interval is given (a claim decided on it is not testable).

    Args:
        small, large: equal-length sequences (one per seed, paired by position) of equal-length
            0/1 arrays.
        name: what is measured.
        n_resamples, seed, level: of the bootstrap.

    Returns:
        A :class:`~flatness.claims.Measurement` (``n`` = seeds × examples).

    Raises:
        ValueError: empty or mismatched arms.

    >>> a = [np.array([1, 1, 0, 1]), np.array([1, 0, 1, 1])]
    >>> m = paired_accuracy_gap(a, a, "zero")
    >>> m.estimate, m.interval
    (0.0, (0.0, 0.0))
    """
    A = np.asarray([np.asarray(v, dtype=float) for v in small])
    B = np.asarray([np.asarray(v, dtype=float) for v in large])
    if A.ndim != 2 or A.shape != B.shape or A.size == 0:
        raise ValueError(f"small, large: expected equal (seeds, examples) arrays, got "
                         f"{A.shape} and {B.shape}")
    check_positive(n_resamples, "n_resamples", integer=True)
    D = A - B
    S, n = D.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        ws = (rng.multinomial(S, np.full(S, 1.0 / S), size=r) if S > 1 else np.ones((r, 1)))
        we = rng.multinomial(n, np.full(n, 1.0 / n), size=r)
        stats[start:start + r] = np.einsum("rs,sj,rj->r", ws, D, we) / (S * n)
    if S == 1:  # the seed-to-seed variation is unknown: no interval, as for any one-seed number
        return Measurement(name, float(D.mean()), n=n, unit=f"{n} test examples, one seed")
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Measurement(name, float(D.mean()), float(min(low, D.mean())), float(max(high, D.mean())),
                       level=level, n=S * n, unit=f"{S} seeds × {n} test examples",
                       method="two-way percentile bootstrap (seeds and test examples)")


def late_median(history: Mapping, fraction: float = 0.2, key: str = "lambda_max") -> float:
    r"""The median of a tracked quantity over the last ``fraction`` of training.

    With :math:`E` the last epoch of ``history`` and ``history[key]`` a list of
    ``[epoch, value]`` pairs (:class:`flatness.curvature.SharpnessTracker`), the median of the
    values recorded at epochs :math:`e \ge (1 - \text{fraction})E`. At the edge of stability
    :math:`\lambda_{\max}` oscillates around :math:`2/\eta`, and a run stopped by an accuracy
    target often stops right after a drop; the median over the end of training is the level
    :math:`\lambda_{\max}` hovers at.

    Args:
        history: a training history with ``epochs`` and ``key``.
        fraction: the share of the epochs at the end, in (0, 1].
        key: the tracked entry.

    Returns:
        The median (the last value when only one falls in the window).

    Raises:
        ValueError: a ``fraction`` outside (0, 1], or no tracked values.

    >>> late_median({"epochs": 10, "lambda_max": [[0, 1.0], [7, 5.0], [8, 3.0], [10, 4.0]]})
    3.5
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    track = history.get(key) or []
    if not track:
        raise ValueError(f"history: no {key!r} values (train with track_sharpness_every)")
    last = history.get("epochs", track[-1][0])
    values = [v for e, v in track if e >= (1 - fraction) * last - 1e-9]
    return float(np.median(values)) if values else float(track[-1][1])


def stop_epoch(history: Mapping, target_loss: Optional[float] = None,
               patience: Optional[int] = None, rtol: float = 1e-3) -> Optional[int]:
    r"""The epoch at which a stopping rule would have stopped a recorded history.

    ``target_loss``: the first epoch whose training loss is :math:`\le` the target (a common
    training-loss level). ``patience``: the first epoch :math:`e` at which the best loss so far
    has not improved by a relative ``rtol`` for ``patience`` epochs, i.e.
    :math:`\min_{t \le e} L_t > (1 - \text{rtol})\min_{t \le e-\text{patience}} L_t` (a plateau).

    Args:
        history: a history with ``epoch`` and ``train_loss`` lists.
        target_loss, patience: exactly one of them.
        rtol: the relative improvement that counts.

    Returns:
        The epoch, or None when the rule never fires within the history.

    Raises:
        ValueError: not exactly one rule, or bad values.

    >>> h = {"epoch": [1, 2, 3, 4, 5], "train_loss": [1.0, 0.5, 0.4999, 0.4999, 0.4998]}
    >>> stop_epoch(h, target_loss=0.5), stop_epoch(h, patience=2)
    (2, 4)
    """
    if (target_loss is None) == (patience is None):
        raise ValueError("target_loss, patience: give exactly one of them")
    epochs, losses = list(history["epoch"]), list(history["train_loss"])
    if target_loss is not None:
        check_positive(target_loss, "target_loss")
        return next((e for e, v in zip(epochs, losses) if v <= target_loss), None)
    check_positive(patience, "patience", integer=True)
    best = np.minimum.accumulate(losses)
    for i in range(patience, len(losses)):
        if best[i] > (1 - rtol) * best[i - patience]:
            return epochs[i]
    return None


def grid_exponents(records: Sequence[Mapping], metric: str = "lambda_max",
                   n_resamples: int = 2000, seed: int = 0) -> Dict[str, Measurement]:
    r"""The exponents of :math:`m \propto \eta^{b} B^{c}` over an :math:`\eta\times B` grid.

    For every seed, least squares of :math:`\ln m = a + b\ln\eta + c\ln B` over the cells
    (records with ``lr``, ``batch_size``, ``seed`` and ``metric``). The estimates are the fit to
    the means over seeds of each cell's :math:`\ln m`, with percentile-bootstrap intervals from
    resampling the seeds (each resample refits the cell means of the drawn seeds). The
    edge-of-stability bound predicts :math:`b = -1` where it binds; a dependence on the noise
    scale :math:`\eta/B` alone predicts :math:`c = -b`, i.e. :math:`b + c = 0`.

    Args:
        records: the runs of the grid (at least three cells, not all on one line in
            :math:`(\ln\eta, \ln B)`); every seed should have run every cell.
        metric: the record field (positive).
        n_resamples, seed: of the bootstrap.

    Returns:
        ``{"b": ..., "c": ..., "b+c": ...}`` as :class:`~flatness.claims.Measurement`.

    Raises:
        ValueError: too few cells, a degenerate design or a non-positive metric.

    >>> recs = [{"lr": e, "batch_size": B, "seed": s, "m": 3 * e ** -1.0 * B ** 0.25}
    ...         for e in (0.1, 0.2, 0.4) for B in (64, 256) for s in (0, 1)]
    >>> {k: round(v.estimate, 6) for k, v in grid_exponents(recs, "m").items()}
    {'b': -1.0, 'c': 0.25, 'b+c': -0.75}
    """
    cells = sorted({(float(r["lr"]), int(r["batch_size"])) for r in records})
    if len(cells) < 3:
        raise ValueError(f"records: expected at least three (lr, batch_size) cells, got {len(cells)}")
    seeds = sorted({r["seed"] for r in records})
    table = np.full((len(seeds), len(cells)), np.nan)
    for r in records:
        if not r[metric] > 0:
            raise ValueError(f"records: {metric} must be positive, got {r[metric]!r}")
        table[seeds.index(r["seed"]), cells.index((float(r["lr"]), int(r["batch_size"])))] = \
            math.log(r[metric])
    design = np.array([[1.0, math.log(e), math.log(B)] for e, B in cells])
    if np.linalg.matrix_rank(design) < 3:
        raise ValueError("records: the cells lie on one line in (log lr, log batch_size)")

    def fit(rows):
        coef = np.linalg.lstsq(design, np.nanmean(rows, axis=0), rcond=None)[0]
        return coef[1], coef[2]

    b, c = fit(table)
    out = {"b": [b], "c": [c]}
    if len(seeds) > 1:
        rng = np.random.default_rng(seed)
        boot = np.array([fit(table[rng.integers(0, len(seeds), len(seeds))])
                         for _ in range(n_resamples)])
        lo, hi = np.quantile(boot, [0.025, 0.975], axis=0)
        slo, shi = np.quantile(boot.sum(1), [0.025, 0.975])
        mk = lambda name, est, l, h: Measurement(name, float(est), float(min(l, est)), float(max(h, est)),
                                                 level=0.95, n=len(seeds), unit="seeds",
                                                 method="percentile bootstrap over seeds")
        return {"b": mk(f"exponent of η in {metric}", b, lo[0], hi[0]),
                "c": mk(f"exponent of B in {metric}", c, lo[1], hi[1]),
                "b+c": mk(f"b + c in {metric}", b + c, slo, shi)}
    one = lambda name, est: Measurement(name, float(est), n=1, unit="seeds")
    return {"b": one(f"exponent of η in {metric}", b), "c": one(f"exponent of B in {metric}", c),
            "b+c": one(f"b + c in {metric}", b + c)}


def adam_preconditioner(config, model: Optional[nn.Module] = None, epochs: Optional[int] = None,
                        atol: float = 1e-4):
    r"""Adam's bias-corrected second moment :math:`\hat v` at the end of a cached run, by replay.

    A cached model keeps no optimizer state, so this replays the run of ``config``: the loop of
    :func:`flatness.training.train` (its initialization :func:`flatness.training.build_model`,
    its permutations and augmentation draws from ``torch.Generator().manual_seed(seed)``,
    ``torch.optim.Adam`` with :math:`\beta = (0.9, 0.999)`) for ``epochs`` epochs, and returns

    .. math:: \hat v = v_t / (1 - \beta_2^t), \qquad t = \text{steps},

    with the scale :math:`1 - \beta_1^t` of Cohen et al.'s preconditioner
    :math:`P = (1-\beta_1^t)\,(\mathrm{diag}\sqrt{\hat v} + \epsilon)`, and the replayed network,
    at which :math:`\hat v` belongs. A run trained by :func:`flatness.training.train` is replayed
    exactly (then ``model`` can be checked within ``atol``); a population-trained run
    (:mod:`flatness.population`) agrees with train to float32 rounding at first, but the ReLU
    dynamics can amplify that over many epochs (a weight difference of 0.09 after 78 Adam epochs
    in this book's MLP), so measure :math:`P^{-1}H` at the replayed network, not at the cached
    one.

    Args:
        config: a :class:`~flatness.training.TrainConfig` with ``optimizer="adam"``, no warm
            start, no milestones.
        model: an optional trained model to check the replay against.
        epochs: the epochs to replay (default ``config.epochs``; pass the history's
            ``epochs`` for a run stopped by a target).
        atol: the tolerance of that check.

    Returns:
        ``(network, v_hat, scale)``: the replayed network (eval mode), a flat tensor in
        :class:`flatness.params.ParameterLayout` order and :math:`1 - \beta_1^t`.

    Raises:
        ValueError: a configuration that is not a plain Adam run, no ``epochs``, or a replay that
            does not reproduce ``model``.
    """
    from .data import from_spec
    from .training import augment_signals, build_model

    if config.optimizer != "adam" or config.init is not None or config.milestones:
        raise ValueError("config: expected a plain Adam run (no warm start, no milestones)")
    epochs = config.epochs if epochs is None else epochs
    if epochs is None or isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
    X, y = from_spec(config.data).to(config.device).train
    net = build_model(config).to(config.device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=float(config.lr), weight_decay=float(config.weight_decay))
    gen = torch.Generator().manual_seed(int(config.seed))
    N = len(y)
    B = N if config.batch_size is None else min(int(config.batch_size), N)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(N, generator=gen).to(X.device)
        for s in range(0, N, B):
            idx = perm[s:s + B]
            xb = X[idx] if not config.augment else augment_signals(X[idx], gen, **config.augment)
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xb), y[idx]).backward()
            opt.step()
    if model is not None:
        a = ParameterLayout(net).to_vector(net).detach()
        b = ParameterLayout(model).to_vector(model).detach().to(a)
        if float((a - b).abs().max()) > atol * (1.0 + float(b.abs().max())):
            raise ValueError(f"model: the replay does not reproduce it (max |Δθ| = "
                             f"{float((a - b).abs().max()):.3g})")
    t = int(opt.state[params[0]]["step"])
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params]) / (1 - 0.999 ** t)
    net.eval()
    return net, v.detach(), 1 - 0.9 ** t


def adam_stability_bound(lr: float, beta1: float = 0.9) -> float:
    r"""Adam's stability bound for the preconditioned sharpness (Cohen et al. 2022):
    :math:`\lambda_{\max}(P^{-1}H) < (2 + 2\beta_1)/(\eta(1 - \beta_1))`, :math:`38/\eta` at
    :math:`\beta_1 = 0.9`.

    >>> round(adam_stability_bound(0.002), 6)
    19000.0
    """
    check_positive(lr, "lr")
    return (2 + 2 * beta1) / (lr * (1 - beta1))


def preconditioned_sharpness(model: nn.Module, loss_fn, data, second_moment: torch.Tensor,
                             eps: float = 1e-8, tol: float = 1e-3, seed: int = 0,
                             scale: float = 1.0) -> float:
    r"""The top eigenvalue of :math:`P^{-1}H`, Adam's preconditioned sharpness.

    With :math:`P = s\,\mathrm{diag}(\sqrt{v} + \epsilon)` (Cohen et al. 2022's preconditioner
    with :math:`v = \hat v` and :math:`s = 1 - \beta_1^t`, :func:`adam_preconditioner`),
    :math:`P^{-1}H` is similar to the
    symmetric :math:`P^{-1/2} H P^{-1/2}`, whose top eigenvalue Lanczos finds from
    Hessian-vector products (:class:`flatness.operators.HessianOperator`).

    Args:
        model, loss_fn, data: the network (not changed), a mean-reduced loss and the data.
        second_moment: :math:`v`, flat, in the parameter layout (:func:`adam_preconditioner`).
        scale: :math:`s`.
        eps: Adam's ε.
        tol: Lanczos's relative tolerance.
        seed: seeds the start vector.

    Returns:
        :math:`\lambda_{\max}(P^{-1}H)`.

    Raises:
        ValueError: a ``second_moment`` of the wrong size or with negative entries.

    >>> net = nn.Linear(2, 1, bias=False)
    >>> X, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
    >>> # H = diag(1, 4) for the mean squared error; P = diag(1, 2): P⁻¹H = diag(1, 2)
    >>> round(preconditioned_sharpness(net, nn.MSELoss(), (X, y), torch.tensor([1.0, 4.0]), eps=0.0), 4)
    2.0
    """
    H = HessianOperator(model, loss_fn, data)
    n = H.shape[0]
    v = torch.as_tensor(second_moment).reshape(-1)
    if v.numel() != n or bool((v < 0).any()):
        raise ValueError(f"second_moment: expected {n} non-negative entries, got {v.numel()}")
    check_positive(scale, "scale")
    d = (scale * (v.to(device=H.device, dtype=H.dtype).sqrt() + eps)).rsqrt()
    res = lanczos(lambda w: d * (H @ (d * w)), dim=n, k=1, tol=tol, seed=seed, device=H.device)
    return float(res.eigenvalues[0])


def cell(records: Iterable[Mapping], lr: float, batch_size: int, opt: str = "sgd",
         variant: str = "plain") -> List[Mapping]:
    """The runs of one cell: optimizer, learning rate (to relative 1e-9), batch size and
    ``variant`` (``"plain"``; ``"augmented"``; ``"loss"``: stopped at a common training loss).

    >>> cell([{"opt": "sgd", "lr": 0.2, "batch_size": 64, "variant": "plain"}], 0.2, 64) != []
    True
    """
    return [r for r in records if r.get("opt", "sgd") == opt and r["batch_size"] == batch_size
            and math.isclose(r["lr"], lr, rel_tol=1e-9) and r.get("variant", "plain") == variant]


def _not_run(name: str) -> Measurement:
    """A placeholder for a comparison whose runs this build does not make (not testable)."""
    return Measurement(name, 0.0, n=1, unit="not run in this build")


def _ratio(name: str, small: Sequence[Mapping], large: Sequence[Mapping], metric: str,
           statistic: str = "ratio") -> Measurement:
    """:func:`seed_measurement`, or :func:`_not_run` when a group is empty."""
    if not large or (statistic != "large" and not small):
        return _not_run(name)
    return seed_measurement(name, small, large, metric, statistic)


def _gap(name: str, small: Sequence[Mapping], large: Sequence[Mapping]) -> Measurement:
    """SB − LB test accuracy paired by seed and test example (:func:`paired_accuracy_gap`)."""
    if not small or not large:
        return _not_run(name)
    lb = {r["seed"]: r for r in large}
    seeds = [r["seed"] for r in small if r["seed"] in lb]
    if not seeds:
        raise ValueError(f"{name}: no seed in common")
    sb = {r["seed"]: r for r in small}
    return paired_accuracy_gap([sb[s]["test_correct"] for s in seeds],
                               [lb[s]["test_correct"] for s in seeds], name)


def large_batch_measurements(records: Sequence[Mapping], *, sb=(0.2, 64), lb=(0.2, 400),
                             sqrt_lb=(0.5, 400), one_rate=(0.8, 256, 4000),
                             kaur=((0.2, 64), (0.8, 256)), adam=(2e-3, 256, 4000)
                             ) -> Dict[str, Measurement]:
    r"""The numbers the large-batch claims rest on.

    Cells are ``(lr, batch_size)`` of SGD runs (:func:`cell`); ratios are paired by seed
    (:func:`seed_measurement`, LB/SB), accuracy gaps SB − LB paired by seed and test example
    (:func:`paired_accuracy_gap`, records with ``test_correct``).

    Args:
        records: every run (records of :func:`flatness.sweeps.run_sweep` with ``opt`` and
            ``variant``; Adam runs with ``precond_lambda``, tracked runs with
            ``lambda_late``).
        sb, lb: Keskar et al.'s one-rate comparison, SB and LB at one learning rate.
        sqrt_lb: the LB cell with :math:`\eta \propto \sqrt{B}` (its SB is ``sb``).
        one_rate: ``(lr, smallest B, largest B)`` of the one-rate sweep (Yao et al.).
        kaur: two cells with the same :math:`\eta/B` (Kaur et al. 2023).
        adam: ``(lr, SB, LB)`` of the Adam runs.

    Returns:
        ``const-lam`` (final λ_max), ``const-late`` (median over the last 20 %), ``const-kes``:
        LB/SB ratios at one rate; ``const-gap``; ``loss-lam``, ``loss-kes``, ``loss-gap``: the
        same for runs stopped at a common training loss (variant ``"loss"``); ``edge-lb``: LB's late
        :math:`\eta\lambda_{\max}`; ``edge-ratio``: SB's over LB's; ``sqrt-lam``, ``sqrt-gap``;
        ``one-rate-lam``, ``one-rate-gap``; ``grid-b``, ``grid-c``, ``grid-b+c`` (over every
        SGD cell without augmentation, :func:`grid_exponents`); ``kaur-lam``, ``kaur-gap``;
        ``aug-lam`` (augmented LB / augmented SB), ``aug-gap`` (augmented SB − augmented LB),
        ``aug-gain`` (augmented SB − SB); ``adam-lam``, ``adam-gap``, ``adam-edge``
        (:math:`\lambda_{\max}(P^{-1}H)` of Adam's LB over its bound :math:`38/\eta`);
        ``kes-ratio``: :math:`\phi(10^{-3})/\phi(5\cdot10^{-4})` at SB and LB (4 for a
        quadratic, 2 for a linear function); ``kes-first``: the first-order share at
        :math:`10^{-3}`. A comparison whose runs are absent (a quick build) is a placeholder
        without interval (``unit`` "not run in this build"), so its claim is not testable.
    """
    r = records
    SB, LB = cell(r, *sb), cell(r, *lb)
    SQ, OS, OL = cell(r, *sqrt_lb), cell(r, one_rate[0], one_rate[1]), cell(r, one_rate[0], one_rate[2])
    KA, KB = cell(r, *kaur[0]), cell(r, *kaur[1])
    AS, AL = cell(r, *sb, variant="augmented"), cell(r, *lb, variant="augmented")
    LS, LL = cell(r, *sb, variant="loss"), cell(r, *lb, variant="loss")
    DS, DL = cell(r, adam[0], adam[1], "adam"), cell(r, adam[0], adam[2], "adam")
    grid = grid_exponents([x for x in r if x.get("opt", "sgd") == "sgd" and x.get("variant", "plain") == "plain"])
    kes = "keskar_full_0.001"
    both = [dict(x, kes_ratio=x[kes] / x["keskar_full_0.0005"], kes_first=x[kes + "_first"] / x[kes])
            for x in SB + LB]
    bound = adam_stability_bound(adam[0])
    return {"const-lam": _ratio("LB/SB λ_max (final), one rate", SB, LB, "lambda_max"),
            "const-late": _ratio("LB/SB λ_max (late median), one rate", SB, LB, "lambda_late"),
            "const-kes": _ratio("LB/SB Keskar ε=1e-3, one rate", SB, LB, kes),
            "const-gap": _gap("SB − LB test accuracy, one rate", SB, LB),
            "loss-lam": _ratio("LB/SB λ_max, one rate, common training loss", LS, LL, "lambda_max"),
            "loss-kes": _ratio("LB/SB Keskar ε=1e-3, one rate, common training loss", LS, LL, kes),
            "loss-gap": _gap("SB − LB test accuracy, one rate, common training loss", LS, LL),
            "edge-lb": _ratio("η·λ_max of LB (late median)", [], LB, "eta_lambda_late", "large"),
            "edge-ratio": _ratio("η·λ_max SB / LB (late medians)", LB, SB, "eta_lambda_late"),
            "sqrt-lam": _ratio("LB/SB λ_max, η ∝ √B", SB, SQ, "lambda_max"),
            "sqrt-gap": _gap("SB − LB test accuracy, η ∝ √B", SB, SQ),
            "one-rate-lam": _ratio("largest/smallest B λ_max, one rate (Yao)", OS, OL, "lambda_max"),
            "one-rate-gap": _gap("smallest − largest B test accuracy, one rate (Yao)", OS, OL),
            "grid-b": grid["b"], "grid-c": grid["c"], "grid-b+c": grid["b+c"],
            "kaur-lam": _ratio("λ_max ratio at equal η/B", KA, KB, "lambda_max"),
            "kaur-gap": _gap("test accuracy difference at equal η/B", KA, KB),
            "aug-lam": _ratio("augmented LB / augmented SB λ_max", AS, AL, "lambda_max"),
            "aug-gap": _gap("augmented SB − augmented LB test accuracy", AS, AL),
            "aug-gain": _gap("augmented SB − SB test accuracy", AS, SB),
            "adam-lam": _ratio("Adam LB/SB λ_max", DS, DL, "lambda_max"),
            "adam-gap": _gap("Adam SB − LB test accuracy", DS, DL),
            "adam-edge": _ratio("Adam LB λ_max(P⁻¹H) / (38/η)", [],
                                          [dict(x, e=x["precond_lambda"] / bound) for x in DL], "e", "large"),
            "kes-ratio": _ratio("φ(1e-3)/φ(5e-4), SB and LB", [], both, "kes_ratio", "large"),
            "kes-first": _ratio("first-order share of φ(1e-3), SB and LB", [], both,
                                          "kes_first", "large")}

#: The claims of the large-batch chapter: id -> (the claim, the paper's number, its source, the
#: section of the chapter that tests it). The decisions are :func:`large_batch_claims`'.
LARGE_BATCH_CLAIMS = {
    "same-criterion": ("Every compared run reaches the training-accuracy target, with λ_max converged.",
                       "train accuracy ≈ 99–100 % for SB and LB", "Keskar et al. (2017), Table 2",
                       "The experiment"),
    "lb-sharper": ("At one learning rate, large batches converge to sharper minima.",
                   "F1 (MNIST MLP): 1.23 SB / 205.14 LB, full space ε = 1e-3",
                   "Keskar et al. (2017), Tables 3–4", "Keskar et al.'s comparison: SB against LB"),
    "lb-gap": ("At one learning rate, large batches test worse.",
               "F1: 98.03 % SB / 97.81 % LB test accuracy", "Keskar et al. (2017), Table 2",
               "Keskar et al.'s comparison: SB against LB"),
    "lb-sharper-common-loss": ("Stopped at a common training loss instead, large batches still "
                               "converge to sharper minima and test worse.",
                               "F1: 1.23 SB / 205.14 LB; 98.03 % / 97.81 %",
                               "Keskar et al. (2017), Tables 2–4", "Keskar et al.'s comparison: SB against LB"),
    "edge-of-stability": ("Large batches train at the edge of stability, η·λ_max ≈ 2; small batches "
                          "stay below.", "λ_max rises to 2/η and hovers there (full-batch GD)",
                          "Cohen et al. (2021), Fig. 1 [from the abstract, not verified]",
                          "The edge-of-stability confounder"),
    "yao-one-rate": ("At one learning rate, λ_max grows with the batch size (full batch included).",
                     "λ₁ 0.64 at B = 16 to 80.18 at B = 2048 (CIFAR-10)",
                     "Yao et al. (2018), via the slide deck's table [parenthesized column unverified]",
                     "Yao et al.'s table: accuracy and λ₁ against the batch size"),
    "yao-sharper": ("With η ∝ √B, larger batches still converge to a larger λ_max.",
                    "λ₁ 0.64 at B = 16 to 80.18 at B = 2048 (CIFAR-10)",
                    "Yao et al. (2018), via the slide deck's table [parenthesized column unverified]",
                    "Yao et al.'s table: accuracy and λ₁ against the batch size"),
    "sqrt-gap": ("With η ∝ √B, large batches still test worse.",
                 "F1: 98.03 % SB / 97.81 % LB test accuracy", "Keskar et al. (2017), Table 2",
                 "Keskar et al.'s comparison: SB against LB"),
    "step-sets-sharpness": ("Across the η × B grid the step size sets λ_max (exponent of η below 0).",
                            "λ_max → 2/η", "Cohen et al. (2021), Fig. 1 [from the abstract]",
                            "Step size, batch size or noise scale?"),
    "noise-scale": ("λ_max depends on η and B only through the noise scale η/B (b + c within ±0.25 of 0).",
                    "the SGD noise scale g ≈ εN/B sets the minimum reached",
                    "Smith & Le (2018); Jastrzębski et al. (2018)", "Step size, batch size or noise scale?"),
    "kaur-equal-ratio": ("Scaling η and B together changes λ_max without changing test accuracy "
                         "(λ_max ratio away from 1, accuracy within ±1 point).",
                         "finding (2): λ_max changes, generalization does not [no number quoted]",
                         "Kaur, Cohen & Lipton (2023), abstract", "Step size, batch size or noise scale?"),
    "augmented-lb": ("Augmented large batches stay sharper than augmented SB yet test at least as well.",
                     "C2: 90.26 % augmented LB / 89.82 % SB, sharpness 468.65 at ε = 1e-3",
                     "Keskar et al. (2017), Table 6",
                     "Keskar et al.'s Table 6: large batches with data augmentation"),
    "adam-aeos": ("Adam's LB trains at its edge of stability: λ_max(P⁻¹H) within 20 % of 38/η.",
                  "λ₁(P⁻¹H) equilibrates at 38/η (β₁ = 0.9)",
                  "Cohen et al. (2022), abstract", "Adam and the preconditioned sharpness"),
    "keskar-quadratic": ("Keskar's sharpness behaves like a quadratic form here: φ(1e-3)/φ(5e-4) within ±0.5 of 4.",
                         "φ ≈ quadratic in ε for a small box (the chapter's earlier reading)",
                         "Keskar et al. (2017), Metric 2.1", "Keskar et al.'s comparison: SB against LB")}


def large_batch_claims(measured: Mapping[str, Measurement], compared: Sequence[Mapping],
                       expected: Mapping[str, str], chapter: str = "02_large_batch") -> List[Claim]:
    r"""The large-batch chapter's claims (:data:`LARGE_BATCH_CLAIMS`), decided on ``measured``.

    The rules (each at 95 %): ``same-criterion``: every run of ``compared`` reached its target
    and its :math:`\lambda_{\max}` converged; ``lb-sharper``: the LB/SB ratios of the late
    :math:`\lambda_{\max}` above 1.5 and of Keskar's sharpness above 1; ``lb-sharper-common-loss``:
    at a common training loss, both ratios above 1 and the gap above 0; ``lb-gap``,
    ``sqrt-gap``: the gap above 0; ``edge-of-stability``: LB's late
    :math:`\eta\lambda_{\max}` inside (1.6, 2.2) and SB's below 3/4 of LB's;
    ``yao-one-rate``, ``yao-sharper``: the ratio above 1; ``step-sets-sharpness``: the
    exponent of :math:`\eta` below 0; ``noise-scale``: :math:`b + c` within ±0.25 of 0;
    ``kaur-equal-ratio``: the :math:`\lambda_{\max}` ratio outside (0.8, 1.25) (above 1.25 or
    below 0.8) and the accuracy difference within ±0.01; ``augmented-lb``: the augmented ratio
    above 1 and the augmented gap below 0; ``adam-aeos``: within 0.2 of 1;
    ``keskar-quadratic``: within 0.5 of 4.

    Args:
        measured: from :func:`large_batch_measurements`.
        compared: every run the claims compare (records with ``reached`` and
            ``lambda_max_converged``).
        expected: ``{claim id: expected outcome}`` for every claim, written in the chapter.
        chapter: the chapter's file stem.

    Returns:
        The claims, in the order of :data:`LARGE_BATCH_CLAIMS`.

    Raises:
        ValueError: ``expected`` does not name exactly the claims' ids, or ``compared`` is empty.
    """
    if set(expected) != set(LARGE_BATCH_CLAIMS):
        raise ValueError(f"expected: give an outcome for exactly {sorted(LARGE_BATCH_CLAIMS)}")
    if not compared:
        raise ValueError("compared: expected at least one run")
    m = measured
    ok = min(float(bool(r["reached"]) and bool(r["lambda_max_converged"])) for r in compared)
    kaur_moves = interval_above(m["kaur-lam"], threshold=1.25)
    if kaur_moves.outcome != "held":
        kaur_moves = interval_below(m["kaur-lam"], threshold=0.8)
    decisions = {
        "same-criterion": interval_above(Measurement("every run reached (1) or not (0)", ok),
                                         threshold=0.5),
        "lb-sharper": all_of(interval_above(m["const-late"], threshold=1.5),
                             interval_above(m["const-kes"], threshold=1.0)),
        "lb-gap": interval_above(m["const-gap"], threshold=0.0),
        "lb-sharper-common-loss": all_of(interval_above(m["loss-lam"], threshold=1.0),
                                         interval_above(m["loss-kes"], threshold=1.0),
                                         interval_above(m["loss-gap"], threshold=0.0)),
        "edge-of-stability": all_of(interval_above(m["edge-lb"], threshold=1.6),
                                    interval_below(m["edge-lb"], threshold=2.2),
                                    interval_below(m["edge-ratio"], threshold=0.75)),
        "yao-one-rate": interval_above(m["one-rate-lam"], threshold=1.0),
        "yao-sharper": interval_above(m["sqrt-lam"], threshold=1.0),
        "sqrt-gap": interval_above(m["sqrt-gap"], threshold=0.0),
        "step-sets-sharpness": interval_below(m["grid-b"], threshold=0.0),
        "noise-scale": within_tolerance(m["grid-b+c"], target=0.0, tolerance=0.25),
        "kaur-equal-ratio": all_of(kaur_moves, within_tolerance(m["kaur-gap"], target=0.0,
                                                                tolerance=0.01)),
        "augmented-lb": all_of(interval_above(m["aug-lam"], threshold=1.0),
                               interval_below(m["aug-gap"], threshold=0.0)),
        "adam-aeos": within_tolerance(m["adam-edge"], target=1.0, tolerance=0.2),
        "keskar-quadratic": within_tolerance(m["kes-ratio"], target=4.0, tolerance=0.5)}
    return [Claim(chapter, cid, statement, paper, source, decisions[cid], expected[cid],
                  section=section)
            for cid, (statement, paper, source, section) in LARGE_BATCH_CLAIMS.items()]


def warm_start_band_figure(warm: Mapping[int, Sequence[Mapping]], reference: Sequence[Mapping],
                           bound: Optional[float] = None, figsize=(8.6, 3.2)):
    r"""Keskar et al.'s Figure 5 over seeds: mean and ±1 standard deviation band against ``k``.

    Left: :math:`\lambda_{\max}` of the network that large-batch training reaches after ``k``
    small-batch epochs (linear axis from 0, so that the spread is seen at its size); right: its
    test accuracy in per cent, on an axis at least 4 points tall centred on the data. Dotted
    lines and grey bands are the ``reference`` runs (small batch only, to the target), the dashed
    line ``bound`` (the stability bound :math:`2/\eta` of the large-batch phase).

    Args:
        warm: ``{k: records}`` with ``lambda_max`` and ``test_acc``, one record per seed.
        reference: the small-batch records.
        bound: an optional horizontal line on the left panel.
        figsize: the figure size.

    Returns:
        The figure (not shown or closed).

    Raises:
        ValueError: no warm-started run.
    """
    import matplotlib.pyplot as plt

    if not warm or not reference:
        raise ValueError("warm, reference: expected runs")
    ks = sorted(warm)
    fig, axes = plt.subplots(1, 2, figsize=figsize)
    for ax, metric, scale in ((axes[0], "lambda_max", 1.0), (axes[1], "test_acc", 100.0)):
        vals = [np.array([scale * r[metric] for r in warm[k]]) for k in ks]
        mean, sd = np.array([v.mean() for v in vals]), np.array([v.std() for v in vals])
        ax.fill_between(ks, mean - sd, mean + sd, color="C0", alpha=0.25, lw=0)
        ax.plot(ks, mean, "-o", color="C0", label="SB for k epochs, then LB")
        ref = np.array([scale * r[metric] for r in reference])
        ax.axhspan(ref.mean() - ref.std(), ref.mean() + ref.std(), color="grey", alpha=0.2, lw=0)
        ax.axhline(ref.mean(), color="grey", ls=":", label="SB only, to the target")
        if metric == "lambda_max":
            if bound is not None:
                ax.axhline(bound, color="k", ls="--", lw=0.8, label="2/η")
            ax.set_ylim(0, 1.1 * max(np.max(mean + sd), bound or 0, ref.max()))
        else:
            lo, hi = min(np.min(mean - sd), ref.min()), max(np.max(mean + sd), ref.max())
            mid, half = (lo + hi) / 2, max(2.0, 0.6 * (hi - lo))
            ax.set_ylim(mid - half, mid + half)
        ax.set(xlabel="SB epochs k before LB", ylabel="λ_max" if metric == "lambda_max" else "test accuracy, %")
        ax.legend(fontsize=7)
    return fig


def measurement_text(m: Measurement, scale: float = 1.0, digits: int = 2) -> str:
    """A measurement as prose: ``"2.16 [1.90, 2.41]"`` (estimate and 95 % interval, times
    ``scale``), ``"2.16 (one seed, no interval)"``, or ``"not run in this build"``.

    >>> measurement_text(Measurement("r", 2.0, 1.5, 2.5, level=0.95, n=5))
    '2.00 [1.50, 2.50]'
    >>> measurement_text(Measurement("gap", 0.012, n=1000), scale=100, digits=1)
    '1.2 (one seed, no interval)'
    >>> measurement_text(_not_run("x"))
    'not run in this build'
    """
    if m.unit == "not run in this build":
        return m.unit
    f = lambda x: f"{scale * x:.{digits}f}"
    if m.interval is None:
        return f(m.estimate) + (" (one seed, no interval)" if m.n else "")
    return f"{f(m.estimate)} [{f(m.low)}, {f(m.high)}]"
