r"""Loss landscapes: 1-D interpolation between two minima and 2-D filter-normalized surfaces.

Every function evaluates the network functionally (``torch.func.functional_call``, through
:func:`flatness.training.evaluate`) at points of the flat vector of its trainable parameters
(:class:`flatness.params.ParameterLayout`), in eval mode, so the model passed in is never
perturbed.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .checks import check_positive, materialize, quiet_torch_func
from .params import ParameterLayout, loss_at
from .training import evaluate

__all__ = ["evaluate_at", "interpolate", "filter_normalized_direction", "loss_surface",
           "filter_normalized_sharpness"]


def evaluate_at(model: nn.Module, params: Dict[str, Tensor], data, loss_fn=None,
                eval_mode: Optional[bool] = None):
    """Mean loss and accuracy of ``model`` with its parameters replaced by ``params``.

    This is :func:`flatness.training.evaluate` with ``params`` (the same loss and the same
    accuracy rule: argmax of ``C ≥ 2`` logits, or logit > 0 for a one-logit head), evaluated by
    ``torch.func.functional_call``; the model is not changed, and its buffers are used.

    Args:
        model: the network.
        params: tensors keyed as in ``model.named_parameters()`` (those not given keep the
            model's values).
        data: an ``(X, y)`` pair or a DataLoader.
        loss_fn: a mean-reduced loss (default cross-entropy).
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        ``(loss, accuracy)``.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict of tensors keyed like the model's parameters, "
                        f"got {type(params).__name__}")
    with quiet_torch_func():
        return evaluate(model, data, loss_fn, eval_mode=eval_mode, params=params)


def interpolate(model_a: nn.Module, model_b: nn.Module, alphas: Sequence[float], data,
                loss_fn=None, eval_mode: Optional[bool] = None) -> Dict[str, np.ndarray]:
    r"""Loss and accuracy along :math:`\theta(\alpha) = (1-\alpha)\theta_a + \alpha\theta_b`.

    Keskar et al.'s Figure 3 uses :math:`\alpha \in [-1, 2]` with :math:`\theta_a` the
    small-batch and :math:`\theta_b` the large-batch minimizer.

    Args:
        model_a, model_b: two networks of the same architecture.
        alphas: the interpolation coefficients.
        data: an ``(X, y)`` pair or a DataLoader.
        loss_fn: a mean-reduced loss (default cross-entropy).

    Only the trainable parameters are interpolated (:class:`flatness.params.ParameterLayout`);
    frozen parameters and buffers are ``model_a``'s. Neither model is changed.

    Returns:
        ``{"alpha", "loss", "accuracy"}`` arrays.

    Raises:
        ValueError: the two models have different trainable parameter names or shapes.
    """
    layout, other = ParameterLayout(model_a), ParameterLayout(model_b)
    if layout.names != other.names or layout.shapes != other.shapes:
        raise ValueError("model_a, model_b: expected two networks of the same architecture "
                         "(the same trainable parameter names and shapes)")
    alphas = [float(a) for a in np.asarray(alphas, dtype=float).reshape(-1)]
    materialize(data)
    va, vb = layout.to_vector(model_a, "model_a"), layout.to_vector(model_b, "model_b").to(layout.device)
    losses, accs = [], []
    for a in alphas:
        point = layout.to_dict((1 - a) * va + a * vb)
        loss, acc = evaluate_at(model_a, point, data, loss_fn, eval_mode)
        losses.append(loss)
        accs.append(acc)
    return {"alpha": np.asarray(alphas, dtype=float), "loss": np.asarray(losses),
            "accuracy": np.asarray(accs)}


def filter_normalized_direction(model: nn.Module, seed: int = 0, bias: str = "zero"
                                ) -> Dict[str, Tensor]:
    r"""A Gaussian direction rescaled filter by filter to the norms of the model's filters
    (Li et al. 2018): for every output unit (row of a linear weight, output channel of a
    convolution) :math:`d \leftarrow d\,\lVert\theta_{\text{filter}}\rVert / \lVert d\rVert`.

    Args:
        model: the network whose weights set the scale.
        seed: seeds the Gaussian draw.
        bias: ``"zero"`` (Li et al.'s choice: biases and other 1-D parameters do not move) or
            ``"scaled"`` (each bias entry scaled to its own magnitude).

    Returns:
        A direction as a dict of tensors keyed like the model's trainable parameters (the
        names of :class:`flatness.params.ParameterLayout`), on the model's device. The draw is
        made on the CPU, so it does not depend on the device.
    """
    if bias not in ("zero", "scaled"):
        raise ValueError(f"bias: expected 'zero' or 'scaled', got {bias!r}")
    layout = ParameterLayout(model)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(seed)
    direction = {}
    for name in layout.names:
        p = params[name]
        d = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)
        if p.ndim <= 1:
            d = torch.zeros_like(p) if bias == "zero" else d / d.abs().clamp_min(1e-12) * p.detach().abs()
        else:
            flat_d, flat_p = d.reshape(p.shape[0], -1), p.detach().reshape(p.shape[0], -1)
            scale = flat_p.norm(dim=1, keepdim=True) / flat_d.norm(dim=1, keepdim=True).clamp_min(1e-12)
            d = (flat_d * scale).reshape(p.shape)
        direction[name] = d
    return direction


def _direction_vector(layout: ParameterLayout, direction) -> Tensor:
    """A direction (dict of tensors or flat vector) as a flat vector, checked against ``layout``."""
    if isinstance(direction, Tensor):
        layout.check_vector(direction, "directions")
        return direction.detach()
    if not isinstance(direction, dict):
        raise TypeError(f"directions: expected dicts of tensors keyed like the model's trainable "
                         f"parameters (or flat vectors), got {type(direction).__name__}")
    return layout.to_vector(direction, "directions")


def loss_surface(model: nn.Module, data, loss_fn=None, directions=None, span: float = 1.0,
                 steps: int = 21, seed: int = 0, eval_mode: Optional[bool] = None
                 ) -> Dict[str, np.ndarray]:
    r"""The loss on a 2-D grid :math:`\theta + a\,d_1 + b\,d_2`, :math:`a, b \in [-s, s]`.

    Args:
        model: the network at the centre.
        data: the dataset.
        loss_fn: a mean-reduced loss (default cross-entropy).
        directions: two directions (dicts as from :func:`filter_normalized_direction`, or flat
            vectors); by default two filter-normalized Gaussian directions seeded by ``seed``
            and ``seed+1``.
        span: half-width ``s`` of the grid.
        steps: grid points per axis.
        seed: seeds the default directions.
        eval_mode: see :func:`flatness.checks.evaluation`.

    Only the trainable parameters move; the model is not changed.

    Returns:
        ``{"a", "b", "loss", "accuracy"}``; ``loss[i, j]`` is at ``(a[i], b[j])``.

    Raises:
        ValueError: ``directions`` not two dicts keyed and shaped like the model's trainable
            parameters (or two flat vectors of their total size), ``span ≤ 0``, ``steps`` not
            a positive integer.
        TypeError: a direction that is neither a dict nor a tensor.
    """
    check_positive(span, "span")
    check_positive(steps, "steps", integer=True)
    layout = ParameterLayout(model)
    if directions is None:
        directions = (filter_normalized_direction(model, seed), filter_normalized_direction(model, seed + 1))
    if not isinstance(directions, (tuple, list)) or len(directions) != 2:
        size = f" of length {len(directions)}" if isinstance(directions, (tuple, list)) else ""
        raise ValueError("directions: expected a pair (d1, d2) of directions, got "
                         f"{type(directions).__name__}{size}")
    base = layout.to_vector(model, "model")
    d1, d2 = (_direction_vector(layout, d).to(device=base.device, dtype=base.dtype) for d in directions)
    grid = np.linspace(-span, span, steps)
    loss = np.zeros((steps, steps))
    acc = np.zeros((steps, steps))
    for i, a in enumerate(grid):
        for j, b in enumerate(grid):
            point = layout.to_dict(base + a * d1 + b * d2)
            loss[i, j], acc[i, j] = evaluate_at(model, point, data, loss_fn, eval_mode)
    return {"a": grid, "b": grid.copy(), "loss": loss, "accuracy": acc}


def filter_normalized_sharpness(model: nn.Module, loss_fn, data, *, radius: float,
                                num_points: int, seed: int = 0, bias: str = "zero",
                                eval_mode: Optional[bool] = None) -> float:
    r"""1-D filter-normalized sharpness: the largest loss increase along a filter-normalized
    random direction (Li et al. 2018),

    .. math:: \max_{t \in T} L(\theta + t\,d) - L(\theta), \qquad
              T = \{-r, \dots, r\} \text{ (num\_points evenly spaced)},

    with :math:`d` from :func:`filter_normalized_direction` (seed ``seed``): a Gaussian
    direction whose every filter (row of a linear weight, output channel of a convolution) has
    the norm of the model's filter. Li et al. define the direction for plots; this scalar reads
    the 1-D plot's worst point inside the radius.

    **Bias/BatchNorm policy.** With ``bias="zero"`` (the default, Li et al.'s choice) every
    parameter with at most one dimension — biases, BatchNorm's weight and bias — has direction 0
    and does not move; BatchNorm's running statistics are buffers and are never perturbed (in
    eval mode they are used as they are). ``bias="scaled"`` moves each 1-D entry by its own
    magnitude instead.

    **Invariance.** A symmetry that multiplies whole filters by positive factors,
    :math:`\theta_j \mapsto c_j\theta_j`, multiplies their directions by the same factors, so
    :math:`\theta' + t d' = D(\theta + t d)` and the curve is unchanged: α-scale of whole
    layers (biases do not move under ``bias="zero"`` and move in proportion to themselves under
    ``"scaled"``, so either policy keeps it) and the radial rescaling of
    weight-normalized rows are symmetries of this kind. Per-neuron rescaling is not: dividing
    the input columns of the next layer by :math:`c_a` changes the norms of its filters
    non-proportionally, so the measure moves.

    Args:
        model: the network (not changed).
        loss_fn: a mean-reduced loss.
        data: an ``(X, y)`` pair or an iterable of batches.
        radius: the half-width :math:`r > 0` (in units of the filter norms).
        num_points: grid points (≥ 2; an odd number includes :math:`t = 0`).
        seed: seeds the direction.
        bias: ``"zero"`` or ``"scaled"`` (see above).
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        The sharpness (a loss difference, in float64).

    Raises:
        ValueError: ``radius`` not positive, ``num_points`` not an integer ≥ 2, a bad ``bias``,
            bad data.

    >>> net = torch.nn.Linear(2, 1, bias=False)
    >>> X, y = torch.eye(2), net(torch.eye(2)).detach()        # an exact minimum, L = 0
    >>> s = filter_normalized_sharpness(net, torch.nn.MSELoss(), (X, y), radius=1.0, num_points=3)
    >>> abs(s - 0.5 * float(net.weight.norm()) ** 2) < 1e-6    # t = ±1: |d|^2 / 2 = |w|^2 / 2
    True
    """
    check_positive(radius, "radius")
    check_positive(num_points, "num_points", integer=True)
    if num_points < 2:
        raise ValueError(f"num_points: expected an integer >= 2, got {num_points!r}")
    layout = ParameterLayout(model)
    direction = layout.to_vector(filter_normalized_direction(model, seed, bias), "direction")
    f64 = torch.float64
    batches = [(X.to(f64) if X.is_floating_point() else X, y.to(f64) if y.is_floating_point() else y)
               for X, y in materialize(data)]
    theta = layout.to_vector(model, "model").to(f64)
    direction = direction.to(theta)
    f0 = loss_at(model, loss_fn, batches, theta, layout=layout, eval_mode=eval_mode)
    worst = f0
    for t in np.linspace(-radius, radius, num_points):
        worst = max(worst, loss_at(model, loss_fn, batches, theta + float(t) * direction,
                                   layout=layout, eval_mode=eval_mode, check=False))
    return worst - f0
