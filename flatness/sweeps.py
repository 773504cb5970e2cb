r"""Batch-size sweeps: learning-rate scaling, warm starts and flatness summaries.

The tools behind the large-batch experiments of Keskar et al. (2017) and Yao et al. (2018):

* :func:`scaled_lr` and :func:`batch_sweep` build the :class:`~flatness.training.TrainConfig` of
  every run of a sweep over batch sizes and seeds, with the learning rate scaled with the batch
  size and an epoch cap that gives every run the same learning-rate budget;
* :func:`warm_start` builds Keskar et al.'s Figure 5 runs: ``k`` epochs of small-batch training,
  then large-batch training to the same criterion;
* :func:`flatness_summary` measures one trained network: accuracies, :math:`\lambda_{\max}` of
  the Hessian with respect to the parameters and to the input, and Keskar's sharpness.

Nothing here trains a model by itself: training goes through
:func:`flatness.cache.load_or_train`, which caches every run. The statistics of a sweep's
records are in :mod:`flatness.stats`.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Sequence, Tuple

from torch import nn

from .checks import check_positive, evaluation
from .curvature import input_hessian_top_eigenvalues, top_eigenvalues
from .sharpness import keskar_sharpness
from .training import TrainConfig, evaluate

__all__ = ["LR_RULES", "scaled_lr", "batch_sweep", "warm_start", "sharpness_key",
           "flatness_summary"]

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


def batch_sweep(base: TrainConfig, batch_sizes: Sequence[int], seeds: Sequence[int],
                base_batch: int = 64, rule: str = "sqrt",
                max_lr: Optional[float] = None) -> Dict[Tuple[int, int], TrainConfig]:
    r"""The configurations of a sweep over batch sizes and seeds.

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
    >>> runs = batch_sweep(base, [16, 256], seeds=[0, 1])
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
                     eval_mode: Optional[bool] = None) -> Dict[str, float]:
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
      :func:`sharpness_key`.

    Args:
        model: the trained network (not changed; its mode is restored).
        train_data, test_data: ``(X, y)`` pairs.
        loss_fn: a mean-reduced loss (default cross-entropy).
        eps: the box sizes of Keskar's sharpness.
        subspace_dims: ``None`` (full space) and/or subspace dimensions ``p``.
        lanczos_tol: relative tolerance of the eigenvalue solver.
        seed: seeds the Lanczos start vector, the sharpness start points and subspaces.
        eval_mode: see :func:`flatness.checks.evaluation`.

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
        out["input_lambda_max"] = float(
            input_hessian_top_eigenvalues(model, loss_fn, test_data, eval_mode=eval_mode).mean())
        for p in subspace_dims:
            for e in eps:
                out[sharpness_key(e, p)] = float(keskar_sharpness(
                    model, loss_fn, train_data, eps=e, subspace_dim=p, seed=seed,
                    eval_mode=eval_mode))
    return out
