r"""Batch-size sweeps: learning-rate scaling, warm starts and flatness summaries.

The tools behind the large-batch experiments of Keskar et al. (2017) and Yao et al. (2018):

* :func:`scaled_lr` and :func:`sweep_configs` build the :class:`~flatness.training.TrainConfig`
  of every run of a sweep over batch sizes and seeds, with the learning rate scaled with the
  batch size and an epoch cap that gives every run the same learning-rate budget;
* :func:`warm_start` builds Keskar et al.'s Figure 5 runs: ``k`` epochs of small-batch training,
  then large-batch training to the same criterion;
* :func:`flatness_summary` measures one trained network: accuracies, :math:`\lambda_{\max}` of
  the Hessian with respect to the parameters and to the input, and Keskar's sharpness;
* :func:`run_sweep` trains (through the cache) and measures every run of a sweep and returns one
  record (a flat ``dict``) per run;
* :func:`select` and :func:`flatness.stats.group_records` pick and group records by their fields, and
  :func:`records_table` turns groups of records into a Markdown table, one row per group, with
  cells built by :func:`mean_std_cell`, :func:`value_cell`, :func:`fraction_cell`,
  :func:`correlation_cell` and :func:`join_cells`;
* :func:`comparison_table` and :func:`gap_table` show Keskar et al.'s SB-against-LB comparison
  (:func:`flatness.stats.compare_by_group`) and the gap against its noise.

Training goes through :func:`flatness.cache.load_or_train_many`, which caches every run and
trains the uncached ones as batched populations. The
statistics of a sweep's records are in :mod:`flatness.stats`.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

from torch import nn
from tqdm import tqdm

from . import data as data_module
from .cache import load_or_train_many
from .checks import check_positive, evaluation
from .curvature import input_hessian_top_eigenvalues, top_eigenvalues
from .large_batch import correctness, late_median
from .sharpness import keskar_first_order, keskar_sharpness
from .stats import GroupComparison, group_records, rank_correlation
from .tables import MarkdownTable, format_number, markdown_table, mean_pm
from .training import TrainConfig, _progress_enabled, evaluate

__all__ = ["LR_RULES", "scaled_lr", "sweep_configs", "warm_start", "sharpness_key",
           "flatness_summary", "run_sweep", "select", "records_table",
           "mean_std_cell", "value_cell", "fraction_cell", "join_cells", "correlation_cell",
           "COLUMNS", "comparison_table", "gap_table"]

#: The learning-rate scaling rules of :func:`scaled_lr`: the exponent of ``B / B0``.
LR_RULES = {"constant": 0.0, "sqrt": 0.5, "linear": 1.0}


def scaled_lr(base_lr: float, batch_size: int, base_batch: int = 64, rule: str = "sqrt",
              max_lr: Optional[float] = None) -> float:
    r"""The learning rate for batch size ``B`` under a scaling rule.

    .. math:: \eta(B) = \min\Bigl(\eta_0 \bigl(B / B_0\bigr)^{\kappa},\ \eta_{\max}\Bigr),
              \qquad \kappa = 0,\ \tfrac12,\ 1

    for the ``"constant"`` rule (Keskar et al. 2017 keep the learning rate), the ``"sqrt"`` rule
    (Hoffer et al. 2017: it keeps the covariance of the SGD update,
    :math:`\eta^2\Sigma/B`, fixed) and the ``"linear"`` rule (Goyal et al. 2017).

    Args:
        base_lr: the learning rate :math:`\eta_0` at the base batch size.
        batch_size: the batch size ``B``.
        base_batch: the base batch size :math:`B_0`.
        rule: ``"constant"``, ``"sqrt"`` or ``"linear"``.
        max_lr: an optional cap :math:`\eta_{\max}`.

    Returns:
        The learning rate.

    Raises:
        ValueError: a non-positive rate or batch size, or an unknown rule.

    >>> scaled_lr(0.1, 256, base_batch=64, rule="sqrt")
    0.2
    >>> scaled_lr(0.1, 256, base_batch=64, rule="linear", max_lr=0.3)
    0.3
    """
    check_positive(base_lr, "base_lr")
    check_positive(batch_size, "batch_size", integer=True)
    check_positive(base_batch, "base_batch", integer=True)
    if rule not in LR_RULES:
        raise ValueError(f"rule: expected one of {sorted(LR_RULES)}, got {rule!r}")
    lr = base_lr * (batch_size / base_batch) ** LR_RULES[rule]
    if max_lr is not None:
        check_positive(max_lr, "max_lr")
        lr = min(lr, max_lr)
    return float(lr)


def sweep_configs(base: TrainConfig, batch_sizes: Sequence[int], seeds: Sequence[int],
                  base_batch: int = 64, rule: str = "sqrt",
                  max_lr: Optional[float] = None) -> Dict[Tuple[int, int], TrainConfig]:
    r"""The configurations of a sweep over batch sizes and seeds (nothing is trained).

    (Formerly ``batch_sweep``; renamed so that the name is not confused with a function that
    runs a sweep, like :func:`run_sweep` or :func:`flatness.noise_sweep.batch_peak_sweep`.)

    ``base.lr`` is the learning rate at ``base_batch`` and is scaled by :func:`scaled_lr`.
    ``base.max_epochs`` is the epoch cap at ``base_batch``; at batch size ``B`` the cap becomes

    .. math:: E_{\max}(B) = \Bigl\lceil E_{\max}(B_0)\,\frac{B}{B_0}\,
              \frac{\eta(B_0)}{\eta(B)} \Bigr\rceil,

    so that every run may spend the same learning-rate budget
    :math:`\sum_t \eta_t = \eta(B)\,E\,N/B` (the "time" of the gradient flow the runs follow)
    before it is stopped.

    Args:
        base: the configuration of one run (model, data, optimizer, stopping rule, ...).
        batch_sizes: the batch sizes.
        seeds: the seeds; each sets the weight initialization and the data order.
        base_batch, rule, max_lr: see :func:`scaled_lr`.

    Returns:
        ``{(batch_size, seed): config}`` in the order of ``batch_sizes`` then ``seeds``.

    Raises:
        ValueError: an empty or repeated list, or bad batch sizes or seeds.

    >>> base = TrainConfig(model={"name": "mlp"}, data={"name": "mnist1d"}, lr=0.1,
    ...                    target_train_acc=0.99, max_epochs=100)
    >>> runs = sweep_configs(base, [16, 256], seeds=[0, 1])
    >>> [(B, s, c.lr, c.max_epochs) for (B, s), c in runs.items()]
    [(16, 0, 0.05, 50), (16, 1, 0.05, 50), (256, 0, 0.2, 200), (256, 1, 0.2, 200)]
    """
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base: expected a TrainConfig, got {type(base).__name__}")
    batch_sizes, seeds = list(batch_sizes), list(seeds)
    for name, values in (("batch_sizes", batch_sizes), ("seeds", seeds)):
        if not values or len(set(values)) != len(values):
            raise ValueError(f"{name}: expected a non-empty list without repeats, got {values}")
    for B in batch_sizes:
        check_positive(B, "batch_sizes", integer=True)
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise ValueError(f"seeds: expected non-negative integers, got {s!r}")
    base_lr = scaled_lr(base.lr, base_batch, base_batch, rule, max_lr)
    runs = {}
    for B in batch_sizes:
        lr = scaled_lr(base.lr, B, base_batch, rule, max_lr)
        cap = int(math.ceil(base.max_epochs * (B / base_batch) * (base_lr / lr) - 1e-9))
        for s in seeds:
            runs[(B, s)] = base.replace(batch_size=B, lr=lr, max_epochs=max(1, cap), seed=s)
    return runs


def warm_start(small: TrainConfig, large: TrainConfig, epochs: int) -> TrainConfig:
    """Keskar et al.'s warm start (their Figure 5): ``epochs`` epochs of ``small``, then ``large``.

    The returned configuration trains like ``large`` (its batch size, learning rate and stopping
    rule) from the weights that ``small`` reaches after ``epochs`` epochs. ``epochs=0`` returns
    ``large`` itself, so the cold-start run is shared with the sweep.

    Args:
        small: the small-batch configuration (its stopping rule is replaced by ``epochs``).
        large: the large-batch configuration.
        epochs: the number ``k`` of small-batch epochs.

    Returns:
        A :class:`~flatness.training.TrainConfig` with ``init`` set.

    Raises:
        ValueError: a negative ``epochs``, or configurations of different models or data.

    >>> sb = TrainConfig(model={"name": "mlp"}, data={"name": "mnist1d"}, batch_size=64,
    ...                  target_train_acc=0.99)
    >>> lb = sb.replace(batch_size=4000)
    >>> ws = warm_start(sb, lb, 5)
    >>> ws.batch_size, ws.init.batch_size, ws.init.epochs, ws.init.target_train_acc
    (4000, 64, 5, None)
    """
    for name, cfg in (("small", small), ("large", large)):
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"{name}: expected a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs: expected a non-negative integer, got {epochs!r}")
    if small.model != large.model or small.data != large.data:
        raise ValueError("small, large: expected configurations of the same model and data")
    if epochs == 0:
        return large
    start = small.replace(epochs=epochs, target_train_acc=None)
    return large.replace(init=start)


def sharpness_key(eps: float, subspace_dim: Optional[int] = None) -> str:
    """The key under which :func:`flatness_summary` stores Keskar's sharpness.

    >>> sharpness_key(1e-3), sharpness_key(5e-4, 100)
    ('keskar_full_0.001', 'keskar_p100_0.0005')
    """
    return f"keskar_{'full' if subspace_dim is None else f'p{subspace_dim}'}_{eps:g}"


def flatness_summary(model: nn.Module, train_data, test_data, loss_fn=None,
                     eps: Iterable[float] = (1e-3, 5e-4),
                     subspace_dims: Iterable[Optional[int]] = (None, 100),
                     lanczos_tol: float = 1e-3, seed: int = 0,
                     eval_mode: Optional[bool] = None, input_hessian: bool = True,
                     first_order: bool = False) -> Dict[str, float]:
    r"""Accuracies and the flatness measures of the large-batch papers for one trained network.

    * ``lambda_max``: the largest eigenvalue of :math:`\nabla^2_\theta L` of the full training
      loss (:func:`flatness.curvature.top_eigenvalues`, Lanczos to relative tolerance
      ``lanczos_tol``; Yao et al. 2018 stop power iteration at 1e-3);
    * ``input_lambda_max``: the mean over the test inputs of
      :math:`\lambda_{\max}(\nabla^2_x \ell(f_\theta(x_i), y_i))`
      (:func:`flatness.curvature.input_hessian_top_eigenvalues`, Yao et al. 2018);
    * ``keskar_...``: Keskar et al.'s sharpness
      :math:`\phi_{x,f}(\epsilon, A)` of the training loss for every ``eps`` and subspace
      (:func:`flatness.sharpness.keskar_sharpness`; ``None`` is the full space), keyed by
      :func:`sharpness_key`;
    * with ``first_order=True``, ``gradient_norm`` :math:`\lVert\nabla f\rVert_2` and, per
      Keskar entry, ``<key>_first``: the maximum of the linearized loss over the same box
      (:func:`flatness.sharpness.keskar_first_order`), the part of the sharpness the gradient
      alone explains.

    Args:
        model: the trained network (not changed; its mode is restored).
        train_data, test_data: ``(X, y)`` pairs.
        loss_fn: a mean-reduced loss (default cross-entropy).
        eps: the box sizes of Keskar's sharpness.
        subspace_dims: ``None`` (full space) and/or subspace dimensions ``p``.
        lanczos_tol: relative tolerance of the eigenvalue solver.
        seed: seeds the Lanczos start vector, the sharpness start points and subspaces.
        eval_mode: see :func:`flatness.checks.evaluation`.
        input_hessian: measure ``input_lambda_max`` (the slowest measurement on a large test
            set; without it the entry is absent).
        first_order: add the gradient norm and the first-order parts of Keskar's sharpness.

    Returns:
        A dict of floats: ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``,
        ``lambda_max``, ``lambda_max_converged`` (1.0 or 0.0), ``input_lambda_max`` and one
        ``keskar_...`` entry per (eps, subspace) pair.

    Raises:
        ValueError: bad ``eps``, ``subspace_dims`` or ``lanczos_tol``, and every error of the
            measurements.
    """

    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    eps, subspace_dims = list(eps), list(subspace_dims)
    for e in eps:
        check_positive(e, "eps")
    for p in subspace_dims:
        if p is not None:
            check_positive(p, "subspace_dims", integer=True)
    check_positive(lanczos_tol, "lanczos_tol")
    with evaluation(model, eval_mode):  # checks the mode once; every call restores it too
        out: Dict[str, float] = {}
        for part, pair in (("train", train_data), ("test", test_data)):
            out[f"{part}_loss"], out[f"{part}_acc"] = evaluate(model, pair, loss_fn,
                                                                 eval_mode=eval_mode)
        res = top_eigenvalues(model, loss_fn, train_data, k=1, tol=lanczos_tol, seed=seed,
                              eval_mode=eval_mode)
        out["lambda_max"] = float(res.eigenvalues[0])
        out["lambda_max_converged"] = float(res.converged)
        if input_hessian:
            out["input_lambda_max"] = float(input_hessian_top_eigenvalues(
                model, loss_fn, test_data, eval_mode=eval_mode).mean())
        for p in subspace_dims:
            for e in eps:
                out[sharpness_key(e, p)] = float(keskar_sharpness(
                    model, loss_fn, train_data, eps=e, subspace_dim=p, seed=seed,
                    eval_mode=eval_mode))
                if first_order:
                    lin = keskar_first_order(model, loss_fn, train_data, eps=e, subspace_dim=p,
                                             seed=seed, eval_mode=eval_mode)
                    out[sharpness_key(e, p) + "_first"] = lin["first_order"]
                    out["gradient_norm"] = lin["gradient_norm"]
    return out


# --- running a sweep and reading its records -----------------------------------------------------

def run_sweep(configs: Mapping[Hashable, TrainConfig], fields: Sequence[str] = (),
              seed: int = 0, progress: Optional[bool] = None, test_data=None,
              late_fraction: float = 0.2, **summary_options) -> List[Dict[str, Any]]:
    r"""Train (through the cache) and measure every run of a sweep: one record per run.

    The configurations are trained with :func:`flatness.cache.load_or_train_many`: cached runs
    are only loaded, and the uncached ones that share a model, data, optimizer and batch size
    are trained together as one batched population (:mod:`flatness.population`), each member
    on the trajectory :func:`flatness.training.train` would follow, to float32 rounding;
    configurations that track :math:`\lambda_{\max}` (``track_sharpness_every``) or warm-start
    (``init``) are trained one by one by :func:`flatness.cache.load_or_train`. Every model is
    cached under its own configuration's key either way. Each run is measured with
    :func:`flatness_summary` on the clean training and test sets of its data specification
    (:func:`flatness.data.from_spec`; augmentation, if any, is part of training only). Runs with
    equal :meth:`~flatness.training.TrainConfig.key` are trained and measured once.

    The record of run ``key`` holds, in this order:

    * ``dict(zip(fields, key))`` (a key that is not a tuple counts as a 1-tuple);
    * ``batch_size``, ``seed`` and ``lr`` of the configuration (unless ``fields`` named them);
    * ``epochs``, ``steps`` (optimizer steps), ``reached`` (the training-accuracy target) from the
      training history, and ``history``, the history itself (its ``"lambda_max"`` entry holds the
      :math:`\lambda_{\max}` trajectory when the configuration tracks it);
    * with a tracked trajectory, ``lambda_late``: its median over the last ``late_fraction``
      of the epochs (:func:`flatness.large_batch.late_median`) and ``eta_lambda_late``
      :math:`= \eta\,` ``lambda_late``;
    * with ``test_data``, ``test_correct``: the boolean per-example correctness on it
      (:func:`flatness.large_batch.correctness`), and ``test_loss``/``test_acc`` are measured
      on it instead of the data specification's test split;
    * every entry of :func:`flatness_summary`, and ``eta_lambda``
      :math:`= \eta\,\lambda_{\max}`, the distance to the stability bound 2 of plain gradient
      descent (:func:`flatness.stability.stability_threshold`).

    Args:
        configs: ``{key: config}``; records come in this order.
        fields: names of the components of every key.
        seed: the measurement seed of :func:`flatness_summary`.
        progress: a tqdm bar over the runs on stderr (default: on unless ``FLATNESS_PROGRESS=0``);
            training itself runs without a bar.
        test_data: an optional ``(X, y)`` test set to measure every run on (moved to each
            run's device).
        late_fraction: the window of ``lambda_late``.
        **summary_options: passed to :func:`flatness_summary` (``eps``, ``subspace_dims``, ...).

    Returns:
        A list of records (dicts), one per configuration.

    Raises:
        TypeError: a value of ``configs`` that is not a :class:`~flatness.training.TrainConfig`.
        ValueError: a key whose length differs from ``len(fields)``.
    """
    fields = list(fields)
    for key, cfg in configs.items():
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"configs: expected TrainConfig values, got {type(cfg).__name__} "
                            f"at {key!r}")
        parts = key if isinstance(key, tuple) else (key,)
        if len(parts) != len(fields):
            raise ValueError(f"fields: {len(fields)} names for the key {key!r} of {len(parts)} "
                             "components")
    splits: Dict[str, Any] = {}
    measured: Dict[str, Dict[str, float]] = {}
    records = []
    trained = (list(zip(*load_or_train_many(list(configs.values()), progress=False)))
               if configs else [])
    bar = tqdm(list(zip(configs.items(), trained)), desc="runs", file=sys.stderr, leave=False,
               disable=not _progress_enabled(progress))
    for (key, cfg), (model, history) in bar:
        if cfg.key() not in measured:
            spec = json.dumps([cfg.data, str(cfg.device)], sort_keys=True)
            if spec not in splits:  # the data on the model's device
                splits[spec] = data_module.from_spec(cfg.data).to(cfg.device)
            split = splits[spec]
            test = split.test if test_data is None else tuple(t.to(cfg.device) for t in test_data)
            measured[cfg.key()] = flatness_summary(model, split.train, test, seed=seed,
                                                   **summary_options)
            if test_data is not None:
                measured[cfg.key()]["test_correct"] = correctness(model, test)
        summary = measured[cfg.key()]
        record: Dict[str, Any] = dict(zip(fields, key if isinstance(key, tuple) else (key,)))
        for name in ("batch_size", "seed", "lr"):
            record.setdefault(name, getattr(cfg, name))
        record.update(epochs=history["epochs"], steps=history["total_steps"],
                      reached=history["reached_target"], history=history, **summary)
        record["eta_lambda"] = cfg.lr * summary["lambda_max"]
        if history.get("lambda_max"):
            record["lambda_late"] = late_median(history, late_fraction)
            record["eta_lambda_late"] = cfg.lr * record["lambda_late"]
        records.append(record)
    return records


def select(records: Iterable[Mapping], **equal) -> List[Mapping]:
    """The records whose fields equal the given values, in their order.

    Args:
        records: mappings (one per run).
        **equal: ``field=value`` conditions, all of which must hold.

    Returns:
        A list of the matching records (the same objects).

    Raises:
        ValueError: a field that no record has (a misspelt condition would select nothing).

    >>> rs = [{"rule": "sqrt", "batch_size": 64}, {"rule": "constant", "batch_size": 64}]
    >>> select(rs, rule="sqrt")
    [{'rule': 'sqrt', 'batch_size': 64}]
    """
    records = list(records)
    for name in equal:
        if not any(name in r for r in records):
            raise ValueError(f"{name}: no record has this field")
    return [r for r in records if all(name in r and r[name] == v for name, v in equal.items())]


#: A cell of :func:`records_table`: a field name or a function of a group's records.
Cell = Any


def mean_std_cell(metric: str, scale: float = 1.0, digits: int = 2) -> Callable:
    """A :func:`records_table` cell: ``"mean ± std"`` of ``scale * metric`` over the group.

    The standard deviation is the sample one (``ddof=1``) and is left out for a single record
    (:func:`flatness.tables.mean_pm`). Records without ``metric`` are skipped; a group
    without it gives ``"—"``.

    >>> mean_std_cell("acc", scale=100, digits=1)([{"acc": 0.5}, {"acc": 0.7}])
    '60.0 ± 14.1'
    >>> mean_std_cell("acc")([{"loss": 1.0}])
    '—'
    """
    def cell(rows):
        values = [r[metric] for r in rows if metric in r]
        return mean_pm(values, digits=digits, scale=scale) if values else "—"
    return cell


def value_cell(metric: str, fmt: str = "{}") -> Callable:
    """A :func:`records_table` cell: ``fmt`` applied to the first record's value of ``metric``.

    For values that are equal within a group (the learning rate of a batch size, say), or
    groups of one record.

    >>> value_cell("lr", "{:.3g}")([{"lr": 0.50001}, {"lr": 0.50001}])
    '0.5'
    """
    return lambda rows: fmt.format(rows[0][metric])


def fraction_cell(metric: str) -> Callable:
    """A :func:`records_table` cell: ``"k/n"``, the number of records whose ``metric`` is true.

    >>> fraction_cell("reached")([{"reached": True}, {"reached": False}])
    '1/2'
    """
    return lambda rows: f"{sum(bool(r[metric]) for r in rows)}/{len(rows)}"


def join_cells(template: str, *cells: Cell) -> Callable:
    """A :func:`records_table` cell that formats the texts of other cells into ``template``.

    >>> rows = [{"train": 0.99, "test": 0.64}]
    >>> join_cells("{} ({})", mean_std_cell("train", 100, 1), mean_std_cell("test", 100, 1))(rows)
    '99.0 (64.0)'
    """
    return lambda rows: template.format(*(_cell_text(c, rows) for c in cells))


def correlation_cell(x: str, metric: str, p_from: int = 10) -> Callable:
    """A :func:`records_table` cell: Spearman's rank correlation of ``x`` and ``metric`` over the
    group (:func:`flatness.stats.rank_correlation`), as ``"+0.52 (p = 0.027, n = 18)"``, the
    p-value only with at least ``p_from`` records.

    >>> rows = [{"B": B, "lam": l} for B, l in [(64, 3.0), (400, 2.0), (4000, 1.0)]]
    >>> correlation_cell("B", "lam")(rows)
    '-1.00 (n = 3)'
    """
    return lambda rows: rank_correlation(rows, x, metric).describe(p_from)


def _stability_bound_cell(rows: Sequence[Mapping]) -> str:
    return f"{2 / rows[0]['lr']:.2f}"


#: The standard columns of :func:`run_sweep`'s records for :func:`records_table`, by header:
#: the batch size, the learning rate, the stability bound :math:`2/\eta` of plain gradient
#: descent, the mean ± std over the group of the epochs and steps, the fraction of runs that
#: reached the target, the accuracies in percent, :math:`\lambda_{\max}` (of the parameter and
#: of the input Hessian), :math:`\eta\lambda_{\max}` and Keskar's sharpness.
COLUMNS: Dict[str, Cell] = {
    "B": "batch_size",
    "η": value_cell("lr", "{:.3g}"),
    "2/η": _stability_bound_cell,
    "epochs": mean_std_cell("epochs", digits=0),
    "steps": mean_std_cell("steps", digits=0),
    "target reached": fraction_cell("reached"),
    "train acc, %": mean_std_cell("train_acc", 100, 1),
    "test acc, %": mean_std_cell("test_acc", 100, 1),
    "λ_max": mean_std_cell("lambda_max"),
    "input λ_max": mean_std_cell("input_lambda_max", digits=1),
    "η·λ_max": mean_std_cell("eta_lambda"),
    "Keskar ε=1e-3": mean_std_cell(sharpness_key(1e-3)),
    "Keskar ε=5e-4": mean_std_cell(sharpness_key(5e-4)),
    "Keskar p=100 ε=1e-3": mean_std_cell(sharpness_key(1e-3, 100)),
    "Keskar p=100 ε=5e-4": mean_std_cell(sharpness_key(5e-4, 100)),
}


def _cell_text(cell: Cell, rows: Sequence[Mapping]) -> str:
    if isinstance(cell, str):
        if cell in COLUMNS:
            return _cell_text(COLUMNS[cell], rows)
        if cell not in rows[0]:
            raise ValueError(f"columns: {cell!r} is neither a standard column nor a field of "
                             f"the records (keys: {sorted(rows[0])})")
        return format_number(rows[0][cell])
    if callable(cell):
        value = cell(rows)
        return value if isinstance(value, str) else format_number(value)
    raise TypeError(f"columns: expected a field name or a function of the records, got "
                    f"{type(cell).__name__}")


def _columns(columns) -> List[Tuple[str, Cell]]:
    if isinstance(columns, Mapping):
        items = list(columns.items())
    elif isinstance(columns, (str, bytes)):
        raise TypeError("columns: expected a mapping or a sequence of columns, got a string")
    else:
        items = []
        for c in columns:
            if isinstance(c, str):
                items.append((c, c))
            elif isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str):
                items.append(c)
            else:
                raise TypeError(f"columns: expected a name or a (header, cell) pair, got {c!r}")
    if not items:
        raise ValueError("columns: expected at least one column")
    return items


def records_table(records: Iterable[Mapping], columns,
                  by: Sequence[str] = ("batch_size",)) -> MarkdownTable:
    """A Markdown table of sweep records: one row per group of records, one column per cell.

    The records are grouped by the fields ``by`` (:func:`flatness.stats.group_records`, rows in order of first
    appearance). A cell is

    * a string: the name of a standard column (:data:`COLUMNS`: ``"B"``, ``"η"``,
      ``"epochs"``, ``"test acc, %"``, ``"λ_max"``, ``"Keskar ε=1e-3"``, ...), or else a field,
      whose value in the group's first record is shown (:func:`flatness.tables.format_number`;
      the grouping fields, say);
    * or a function of the group's list of records that returns a string or a number,
      typically :func:`mean_std_cell`, :func:`value_cell`, :func:`fraction_cell`,
      :func:`correlation_cell` or :func:`join_cells`.

    Args:
        records: mappings (one per run).
        columns: ``{header: cell}``, or a sequence of column names (the header is the name; the
            cell is the standard column or the field of that name) and ``(header, cell)`` pairs,
            in column order.
        by: the grouping fields.

    Returns:
        A :class:`flatness.tables.MarkdownTable`.

    Raises:
        ValueError: no records, no columns, a record without a grouping field, or a string
            cell that is neither a standard column nor a field.
        TypeError: a cell that is neither a string nor callable.

    >>> rs = [{"batch_size": 64, "test_acc": 0.80, "reached": True, "opt": "sgd"},
    ...       {"batch_size": 64, "test_acc": 0.84, "reached": True, "opt": "sgd"},
    ...       {"batch_size": 400, "test_acc": 0.75, "reached": False, "opt": "sgd"}]
    >>> print(records_table(rs, ["B", "test acc, %", ("done", "target reached"), "opt"]))
    | B | test acc, % | done | opt |
    |---|---|---|---|
    | 64 | 82.0 ± 2.8 | 2/2 | sgd |
    | 400 | 75.0 | 0/1 | sgd |
    """
    records = list(records)
    if not records:
        raise ValueError("records: expected at least one record")
    items = _columns(columns)
    rows = [[_cell_text(cell, group) for _, cell in items]
            for group in group_records(records, by).values()]
    return markdown_table([h for h, _ in items], rows)


def _spread_text(c: GroupComparison, scale: float) -> str:
    return "n/a" if math.isnan(c.seed_spread) else f"{scale * c.seed_spread:.1f}"


def _label(key: tuple, label: Optional[Callable]) -> str:
    return " ".join(map(str, key)) if label is None else str(label(*key))


def comparison_table(comparisons: Mapping[tuple, Mapping[str, GroupComparison]],
                     metrics: Mapping[str, str], label: Optional[Callable] = None,
                     accuracy: str = "test_acc") -> MarkdownTable:
    """Keskar et al.'s Tables 2–4 for a sweep: SB against LB, one row per setting and LB size.

    Columns: the setting, the large batch size, the SB and LB test accuracy in percent, the gap
    SB − LB in percentage points with the seed spread in parentheses (``n/a`` without repeated
    seeds), then ``"SB / LB (ratio×)"`` (:meth:`flatness.stats.GroupComparison.ratio_text`) for
    every metric.

    Args:
        comparisons: the output of :func:`flatness.stats.compare_by_group`,
            ``{(*group, LB): {metric: GroupComparison}}``; it must compare ``accuracy`` and
            every key of ``metrics``.
        metrics: ``{metric: column label}`` of the sharpness columns.
        label: a function of the group's values (the key without LB) that names the setting
            (default: the values joined by spaces).
        accuracy: the accuracy metric (a fraction).

    Returns:
        A :class:`flatness.tables.MarkdownTable`.

    Raises:
        KeyError: a metric the comparisons do not hold.
    """
    rows = []
    for key, comp in comparisons.items():
        acc = comp[accuracy]
        rows.append([_label(key[:-1], label), key[-1],
                     f"{100 * acc.small_mean:.1f} / {100 * acc.large_mean:.1f}",
                     f"{100 * acc.gap:+.1f} ({_spread_text(acc, 100)})"]
                    + [comp[m].ratio_text() for m in metrics])
    header = (["setting", "LB", "test acc SB / LB, %", "gap (seed spread), pp"]
              + [f"{name}: SB / LB (ratio)" for name in metrics.values()])
    return markdown_table(header, rows)


def gap_table(comparisons: Mapping[tuple, Mapping[str, GroupComparison]], n_test: int,
              label: Optional[Callable] = None, accuracy: str = "test_acc") -> MarkdownTable:
    """The generalization gap SB − LB of every setting against its two yardsticks.

    Columns: the setting, the large batch size, the gap in percentage points, the seed spread
    (``n/a`` without repeated seeds), the sampling error of a difference of two accuracies on
    ``n_test`` examples (:meth:`flatness.stats.GroupComparison.sampling_error`), and whether
    ``|gap|`` exceeds the larger of the two (:meth:`flatness.stats.GroupComparison.noise`).

    Args:
        comparisons: the output of :func:`flatness.stats.compare_by_group`.
        n_test: the number of test examples each accuracy was measured on.
        label: see :func:`comparison_table`.
        accuracy: the accuracy metric.

    Returns:
        A :class:`flatness.tables.MarkdownTable`.
    """
    rows = []
    for key, comp in comparisons.items():
        c = comp[accuracy]
        rows.append([_label(key[:-1], label), key[-1], f"{100 * c.gap:+.1f}",
                     _spread_text(c, 100), f"{100 * c.sampling_error(n_test):.1f}",
                     "yes" if abs(c.gap) > c.noise(n_test) else "no"])
    return markdown_table(["setting", "LB", "gap SB − LB, pp", "seed spread, pp",
                           "sampling error, pp", "gap beyond the noise?"], rows)
