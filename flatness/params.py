"""params."""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from .checks import (
    trainable_parameters,
)

__all__ = ["parameter_slices", "flat_parameters", "unflatten_parameters"]


def parameter_slices(model: nn.Module) -> Dict[str, slice]:
    """Where each trainable parameter lies in the flat vector of ``model.parameters()``.

    The order is that of :func:`flatness.params.flat_parameters` and of the rows of
    :func:`flatness.operators.dense_hessian`.

    >>> from flatness.models import mlp
    >>> for name, where in parameter_slices(mlp(2, (3,), 2)).items():
    ...     print(name, where.start, where.stop)
    0.weight 0 6
    0.bias 6 9
    2.weight 9 15
    2.bias 15 17
    """
    out, offset = {}, 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[name] = slice(offset, offset + p.numel())
            offset += p.numel()
    return out


def flat_parameters(model: nn.Module) -> Tensor:
    """All trainable parameters of ``model`` as one detached vector (in ``parameters()`` order)."""
    return torch.cat([p.detach().reshape(-1) for p in trainable_parameters(model)])


def unflatten_parameters(model: nn.Module, vector: Tensor) -> Dict[str, Tensor]:
    """Split a flat vector (ordered as :func:`flat_parameters`) into tensors shaped like the
    model's trainable parameters, keyed by name, for ``torch.func.functional_call``.

    The pieces are views of ``vector``, so gradients flow back to it.

    >>> net = torch.nn.Linear(2, 3)
    >>> {k: tuple(v.shape) for k, v in unflatten_parameters(net, torch.arange(9.)).items()}
    {'weight': (3, 2), 'bias': (3,)}
    """
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for _, p in named)
    if vector.ndim != 1 or vector.numel() != total:
        raise ValueError(f"vector: expected a flat tensor of {total} entries, got shape "
                         f"{tuple(vector.shape)}")
    out, offset = {}, 0
    for k, p in named:
        out[k] = vector[offset:offset + p.numel()].reshape(p.shape)
        offset += p.numel()
    return out
