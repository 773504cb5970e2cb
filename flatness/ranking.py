r"""Ranking flatness measures over a population of trained networks (chapter 08).

Jiang et al. (2020) judge a generalization measure :math:`\mu` by how well it *ranks* networks by
their generalization gap :math:`g`: Kendall's

.. math:: \tau_b(\mu, g) = \frac{\sum_{i<j}\operatorname{sgn}(\mu_i-\mu_j)\operatorname{sgn}(g_i-g_j)}
          {\sqrt{\bigl(\sum_{i<j}\operatorname{sgn}(\mu_i-\mu_j)^2\bigr)
                 \bigl(\sum_{i<j}\operatorname{sgn}(g_i-g_j)^2\bigr)}}

over all networks, and the *granulated* coefficient :math:`\Psi`, which asks whether the measure
ranks networks correctly when only one hyperparameter changes: for hyperparameter :math:`h`,
:math:`\psi_h` is the mean of :math:`\tau` over the groups of networks that agree in every other
hyperparameter, and :math:`\Psi = \frac1H\sum_h\psi_h`.

Intervals are percentile bootstraps (:func:`flatness.stats.bootstrap_ci`): over networks for
:math:`\tau`, over groups for :math:`\psi_h`, over groups within every hyperparameter for
:math:`\Psi`.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import data as data_module
from .stats import BootstrapInterval, bootstrap_ci
from .training import TrainConfig, _progress_enabled, _tqdm, train

__all__ = ["kendall_tau", "kendall_ci", "kendall_difference_ci", "Granulated", "granulated_tau",
           "population_grid", "measure_population", "MeasureRanking", "rank_measures",
           "ranking_rows", "ResidualMLP", "train_module"]


def _pair(x, y) -> Tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"x, y: expected two 1-D sequences of the same length ≥ 2, got shapes "
                         f"{x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x, y: expected finite values")
    return x, y


def _signs(x: np.ndarray) -> np.ndarray:
    return np.sign(x[:, None] - x[None, :]).astype(np.int8)


def _tau_from_signs(Sx: np.ndarray, Sy: np.ndarray, idx: np.ndarray, chunk: int = 64) -> np.ndarray:
    """τ_b of every row of indices ``idx`` (resamples), from the sign matrices."""
    out = np.empty(idx.shape[0])
    for s in range(0, idx.shape[0], chunk):
        I = idx[s:s + chunk]
        A = Sx[I[:, :, None], I[:, None, :]].astype(np.int32)
        B = Sy[I[:, :, None], I[:, None, :]].astype(np.int32)
        num = (A * B).sum((1, 2))
        den = np.sqrt((A * A).sum((1, 2)).astype(np.float64) * (B * B).sum((1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + chunk] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return out


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    r"""Kendall's :math:`\tau_b` of two paired samples (ties handled as in SciPy's default).

    Returns NaN when one sample is constant.

    Raises:
        ValueError: samples of different lengths, fewer than two values, non-finite values.

    >>> kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])   # 5 concordant, 1 discordant pair of 6
    0.6666666666666666
    """
    x, y = _pair(x, y)
    return float(_tau_from_signs(_signs(x), _signs(y), np.arange(x.size)[None, :])[0])


def _resampled_tau_statistic(x: np.ndarray, y: np.ndarray, others=()):
    Sx, Sy = _signs(x), _signs(y)
    So = [_signs(o) for o in others]

    def statistic(idx, axis=None):
        idx = np.asarray(idx)
        rows = idx.astype(np.int64).reshape(-1, idx.shape[-1])
        t = np.abs(_tau_from_signs(Sx, Sy, rows)) if So else _tau_from_signs(Sx, Sy, rows)
        for S in So:
            t = t - np.abs(_tau_from_signs(Sx, S, rows))
        return t if idx.ndim == 2 else float(t[0])

    return statistic


def kendall_ci(x: Sequence[float], y: Sequence[float], level: float = 0.95,
               n_resamples: int = 2000, seed: int = 0) -> BootstrapInterval:
    r""":math:`\tau_b(x, y)` with a percentile-bootstrap interval over the units (networks):
    each resample draws ``n`` units with replacement and recomputes :math:`\tau_b` on them
    (duplicated units are ties).

    Args:
        x, y: paired values, one per network.
        level, n_resamples, seed: as for :func:`flatness.stats.bootstrap_ci`.

    Returns:
        A :class:`~flatness.stats.BootstrapInterval`.

    Raises:
        ValueError: as for :func:`kendall_tau`; a constant sample (τ undefined).
    """
    x, y = _pair(x, y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("x, y: a constant sample has no Kendall τ")
    return bootstrap_ci(np.arange(x.size, dtype=np.float64), _resampled_tau_statistic(x, y),
                        level=level, n_resamples=n_resamples, seed=seed)


def kendall_difference_ci(x: Sequence[float], y: Sequence[float], z: Sequence[float],
                          level: float = 0.95, n_resamples: int = 2000,
                          seed: int = 0) -> BootstrapInterval:
    r""":math:`|\tau_b(x, y)| - |\tau_b(x, z)|` with a paired bootstrap interval over units
    (the same resampled networks for both τ).

    Andriushchenko et al. (2023) find adaptive sharpness ranking networks by the learning rate
    rather than by generalization: with ``x`` the sharpness, ``y`` the learning rate and ``z``
    the generalization gap, an interval above 0 says the same here.

    Raises:
        ValueError: as for :func:`kendall_ci`.
    """
    x, y = _pair(x, y)
    _, z = _pair(x, z)
    if min(np.ptp(x), np.ptp(y), np.ptp(z)) == 0:
        raise ValueError("x, y, z: a constant sample has no Kendall τ")
    return bootstrap_ci(np.arange(x.size, dtype=np.float64),
                        _resampled_tau_statistic(x, y, others=(z,)), level=level,
                        n_resamples=n_resamples, seed=seed)


@dataclass(frozen=True)
class Granulated:
    r"""Jiang et al.'s granulated Kendall coefficients of one measure, from
    :func:`granulated_tau`.

    Attributes:
        psi: ``{hyperparameter: BootstrapInterval of ψ_h}`` (interval over groups; NaN ends
            with a single group).
        groups: ``{hyperparameter: number of groups}``.
        Psi: the mean :math:`\Psi` of the ψ_h with a bootstrap interval (groups resampled
            within every hyperparameter).
    """

    psi: Dict[str, BootstrapInterval]
    groups: Dict[str, int]
    Psi: BootstrapInterval


def granulated_tau(values: Sequence[float], gap: Sequence[float],
                   hyperparameters: Sequence[Mapping], names: Optional[Sequence[str]] = None,
                   level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Granulated:
    r"""Jiang et al.'s (2020) granulated Kendall coefficient :math:`\Psi` and its parts
    :math:`\psi_h`.

    For each hyperparameter :math:`h` the networks are grouped by the values of all the other
    hyperparameters (the seed counts as one); every group in which :math:`h` takes at least
    two values and both the measure and the gap vary gives one :math:`\tau_b`, and
    :math:`\psi_h` is their mean.

    Args:
        values: the measure, one value per network.
        gap: the generalization gap, one per network.
        hyperparameters: one mapping per network of its hyperparameters.
        names: the hyperparameters to granulate over (default: every key whose value varies).
        level, n_resamples, seed: as for :func:`flatness.stats.bootstrap_ci`.

    Returns:
        A :class:`Granulated`.

    Raises:
        ValueError: lengths that differ, a hyperparameter missing from a mapping, or one that
            gives no group of two networks.
    """
    v, g = _pair(values, gap)
    hps = [dict(h) for h in hyperparameters]
    if len(hps) != v.size:
        raise ValueError(f"hyperparameters: expected {v.size} mappings, got {len(hps)}")
    keys = sorted({k for h in hps for k in h})
    if any(set(h) != set(keys) for h in hps):
        raise ValueError("hyperparameters: every network needs the same keys")
    if names is None:
        names = [k for k in keys if len({repr(h[k]) for h in hps}) > 1 and k != "seed"]
    psi, counts, taus = {}, {}, {}
    for name in names:
        if name not in keys:
            raise ValueError(f"names: {name!r} is not a hyperparameter")
        groups: Dict[tuple, List[int]] = {}
        for i, h in enumerate(hps):
            groups.setdefault(tuple(repr(h[k]) for k in keys if k != name), []).append(i)
        t = []
        for members in groups.values():
            m = np.array(members)
            if len({repr(hps[i][name]) for i in members}) >= 2 and np.ptp(v[m]) > 0 \
                    and np.ptp(g[m]) > 0:
                t.append(kendall_tau(v[m], g[m]))
        if not t:
            raise ValueError(f"hyperparameters: {name!r} gives no group of networks that differ "
                             "only in it")
        taus[name] = np.array(t)
        counts[name] = len(t)
        psi[name] = bootstrap_ci(t, level=level, n_resamples=n_resamples, seed=seed)
    rng = np.random.default_rng(seed)
    reps = np.mean([t[rng.integers(0, t.size, size=(n_resamples, t.size))].mean(1)
                    for t in taus.values()], axis=0)
    est = float(np.mean([t.mean() for t in taus.values()]))
    low, high = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    Psi = BootstrapInterval(est, float(low), float(high), float(level),
                            int(sum(counts.values())), n_resamples)
    return Granulated(psi, counts, Psi)


def population_grid(base: TrainConfig, grid: Mapping[str, Sequence],
                    seeds: Sequence[int] = (0,)) -> Tuple[List[TrainConfig], List[dict]]:
    r"""The full factorial grid of configurations around ``base``.

    Args:
        base: the configuration every member starts from.
        grid: ``{name: values}``; a name is a :class:`~flatness.training.TrainConfig` field
            (``lr``, ``batch_size``, ``weight_decay``, ``momentum``, ``augment``, …), or
            ``"width"`` (every hidden width of an ``"mlp"`` model spec) or ``"n_train"``
            (the data spec's number of training samples).
        seeds: the seeds (``seed`` field) of every combination.

    Returns:
        ``(configs, hyperparameters)``: the configurations and, for each, the mapping of its
        grid values and its seed (for :func:`granulated_tau`).

    Raises:
        ValueError: an unknown name or an empty list of values.
    """
    fields = set(TrainConfig.__dataclass_fields__)
    for name, vals in grid.items():
        if name not in fields | {"width", "n_train"} or name in ("model", "data", "seed"):
            raise ValueError(f"grid: unknown or reserved hyperparameter {name!r}")
        if len(list(vals)) == 0:
            raise ValueError(f"grid: {name!r} has no values")
    configs, hps = [], []
    names = list(grid)
    for combo in itertools.product(*(list(grid[n]) for n in names)):
        for seed in seeds:
            c, h = base.replace(seed=seed), {"seed": seed}
            for name, val in zip(names, combo):
                h[name] = val
                if name == "width":
                    widths = [val] * len(base.model.get("widths", [val]))
                    c = c.replace(model={**c.model, "widths": widths})
                elif name == "n_train":
                    c = c.replace(data={**c.data, "n_train": val})
                else:
                    c = c.replace(**{name: val})
            configs.append(c)
            hps.append(h)
    return configs, hps


def measure_population(models: Sequence, loss_fn, data, measures: Mapping, seed: int = 0,
                       progress: Optional[bool] = None) -> Dict[str, np.ndarray]:
    """Every measure of every model: ``{name: array over models}``.

    Args:
        models: the trained networks.
        loss_fn: the loss.
        data: the data every measure is evaluated on (the same for all models), or a sequence
            of one dataset per model.
        measures: ``{name: Measure}`` (e.g. a selection of :data:`flatness.measures.MEASURES`).
        seed: seeds every measure.
        progress: a tqdm bar over the models (stderr).
    """
    per_model = isinstance(data, (list,)) and len(data) == len(models) \
        and not (len(data) == 2 and hasattr(data[0], "shape"))
    out = {name: np.empty(len(models)) for name in measures}
    bar = _tqdm(total=len(models), desc="measures", disable=not _progress_enabled(progress))
    try:
        for i, model in enumerate(models):
            d = data[i] if per_model else data
            for name, m in measures.items():
                out[name][i] = m(model, loss_fn, d, seed=seed)
            bar.update(1)
    finally:
        bar.close()
    return out


@dataclass(frozen=True)
class MeasureRanking:
    """How one measure ranks a population, from :func:`rank_measures`.

    Attributes:
        tau: :math:`\\tau_b` with the gap over all networks, with its bootstrap interval.
        granulated: Jiang et al.'s :math:`\\psi_h` and :math:`\\Psi` (:class:`Granulated`).
    """

    tau: BootstrapInterval
    granulated: Granulated


def rank_measures(values: Mapping[str, Sequence[float]], gap: Sequence[float],
                  hyperparameters: Sequence[Mapping], names: Optional[Sequence[str]] = None,
                  n_resamples: int = 2000, seed: int = 0) -> Dict[str, MeasureRanking]:
    """:func:`kendall_ci` and :func:`granulated_tau` of every measure against the gap.

    Args:
        values: ``{measure: one value per network}``.
        gap, hyperparameters, names, n_resamples, seed: as for :func:`granulated_tau`.
    """
    return {k: MeasureRanking(kendall_ci(v, gap, n_resamples=n_resamples, seed=seed),
                              granulated_tau(v, gap, hyperparameters, names,
                                             n_resamples=n_resamples, seed=seed))
            for k, v in values.items()}


def _interval(b: BootstrapInterval) -> str:
    if np.isnan(b.low):
        return f"{b.estimate:+.2f}"
    return f"{b.estimate:+.2f} [{b.low:+.2f}, {b.high:+.2f}]"


def ranking_rows(rankings: Mapping[str, MeasureRanking], labels: Optional[Mapping[str, str]] = None,
                 extra: Optional[Mapping[str, Sequence[str]]] = None) -> Tuple[List[str], List[list]]:
    """``(header, rows)`` of a ranking table (for :func:`flatness.tables.markdown_table`): per
    measure τ over all networks, every ψ_h and Ψ, each with its 95 % interval, and optional
    extra columns ``{measure: cells}`` (the same number for every measure)."""
    first = next(iter(rankings.values()))
    hps = list(first.granulated.psi)
    header = ["measure", "τ (all)", *[f"ψ {h}" for h in hps], "Ψ"]
    rows = []
    for name, r in rankings.items():
        row = [(labels or {}).get(name, name), _interval(r.tau),
               *[_interval(r.granulated.psi[h]) for h in hps], _interval(r.granulated.Psi)]
        rows.append(row + list((extra or {}).get(name, [])))
    return header, rows


class ResidualMLP(nn.Module):
    r"""A ReLU MLP with one skip connection, for the chapter's question whether a skip connection
    makes minima flatter: :math:`h_1 = \mathrm{relu}(W_1x + b_1)`,
    :math:`h_2 = \mathrm{relu}(W_2h_1 + b_2) + h_1`, :math:`f(x) = W_3h_2 + b_3` — the same
    parameters as :func:`flatness.models.mlp` with two hidden layers of one width.

    Args:
        input_dim, width, num_classes: the sizes.

    >>> sum(p.numel() for p in ResidualMLP(40, 100, 10).parameters())
    15210
    """

    def __init__(self, input_dim: int = 40, width: int = 100, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return self.out(torch.relu(self.fc2(h)) + h)


def train_module(model: nn.Module, config: TrainConfig, progress: Optional[bool] = False) -> dict:
    """Train a module that no model spec describes (such as :class:`ResidualMLP`) in place with
    the data and options of ``config``, as :func:`flatness.cache.load_or_train` would (not
    cached; ``config.model`` is ignored).

    Returns:
        The history of :func:`flatness.training.train`; the model is left in eval mode.

    Raises:
        ValueError: a warm start or sharpness tracking in ``config``.
    """
    if config.init is not None or config.track_sharpness_every:
        raise ValueError("config: warm starts and sharpness tracking are not supported here")
    split = data_module.from_spec(config.data)
    options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if f.name not in ("model", "data", "init", "init_seed", "device",
                                 "track_sharpness_every", "attack")}
    options["milestones"] = tuple(options["milestones"])
    if getattr(config, "attack", None) is not None:  # as load_or_train: the spec's training split
        options["attack_data"] = data_module.from_spec(config.attack).train
    history = train(model, split.train, test_data=split.test, progress=progress, **options)
    model.eval()
    return history
