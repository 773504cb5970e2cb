r"""Loss landscapes: 1-D interpolation between two minima and 2-D filter-normalized surfaces.

Every function evaluates the network functionally (``torch.func.functional_call``) at the
requested points, in eval mode, so the model passed in is never perturbed.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from .checks import (
    check_labels,
    evaluation,
    iter_batches,
    materialize,
    quiet_torch_func,
)

__all__ = ["evaluate_at", "interpolate", "filter_normalized_direction", "loss_surface"]


def _named_params(model: nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def evaluate_at(model: nn.Module, params: Dict[str, Tensor], data, loss_fn=None,
                eval_mode: Optional[bool] = None):
    """Mean loss and accuracy of ``model`` with its parameters replaced by ``params``."""
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    total, loss_sum, correct = 0, 0.0, 0
    with evaluation(model, eval_mode), torch.no_grad(), quiet_torch_func():
        for X, y in iter_batches(data, 4096):
            out = functional_call(model, ({**params, **buffers}), (X,))
            check_labels(out, y, loss_fn)
            loss_sum += float(loss_fn(out, y)) * X.shape[0]
            correct += int((out.argmax(1) == y).sum()) if out.ndim == 2 else 0
            total += X.shape[0]
    return loss_sum / total, correct / total


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

    Returns:
        ``{"alpha", "loss", "accuracy"}`` arrays.

    Raises:
        ValueError: the two models have different parameter names or shapes.
    """
    pa, pb = _named_params(model_a), _named_params(model_b)
    if pa.keys() != pb.keys() or any(pa[k].shape != pb[k].shape for k in pa):
        raise ValueError("model_a, model_b: expected two networks of the same architecture")
    materialize(data)
    losses, accs = [], []
    for a in alphas:
        point = {k: (1 - a) * pa[k] + a * pb[k] for k in pa}
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
        A direction as a dict of tensors keyed like ``model.named_parameters()``.
    """
    if bias not in ("zero", "scaled"):
        raise ValueError(f"bias: expected 'zero' or 'scaled', got {bias!r}")
    g = torch.Generator().manual_seed(seed)
    direction = {}
    for name, p in model.named_parameters():
        d = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if p.ndim <= 1:
            d = torch.zeros_like(p) if bias == "zero" else d / d.abs().clamp_min(1e-12) * p.detach().abs()
        else:
            flat_d, flat_p = d.reshape(p.shape[0], -1), p.detach().reshape(p.shape[0], -1)
            scale = flat_p.norm(dim=1, keepdim=True) / flat_d.norm(dim=1, keepdim=True).clamp_min(1e-12)
            d = (flat_d * scale).reshape(p.shape)
        direction[name] = d
    return direction


def loss_surface(model: nn.Module, data, loss_fn=None, directions=None, span: float = 1.0,
                 steps: int = 21, seed: int = 0, eval_mode: Optional[bool] = None
                 ) -> Dict[str, np.ndarray]:
    r"""The loss on a 2-D grid :math:`\theta + a\,d_1 + b\,d_2`, :math:`a, b \in [-s, s]`.

    Args:
        model: the network at the centre.
        data: the dataset.
        directions: two directions (dicts as from :func:`filter_normalized_direction`); by
            default two filter-normalized Gaussian directions seeded by ``seed`` and ``seed+1``.
        span: half-width ``s`` of the grid.
        steps: grid points per axis.

    Returns:
        ``{"a", "b", "loss", "accuracy"}``; ``loss[i, j]`` is at ``(a[i], b[j])``.
    """
    if directions is None:
        directions = (filter_normalized_direction(model, seed), filter_normalized_direction(model, seed + 1))
    d1, d2 = directions
    base = _named_params(model)
    grid = np.linspace(-span, span, steps)
    loss = np.zeros((steps, steps))
    acc = np.zeros((steps, steps))
    for i, a in enumerate(grid):
        for j, b in enumerate(grid):
            point = {k: base[k] + a * d1[k] + b * d2[k] for k in base}
            loss[i, j], acc[i, j] = evaluate_at(model, point, data, loss_fn, eval_mode)
    return {"a": grid, "b": grid.copy(), "loss": loss, "accuracy": acc}
