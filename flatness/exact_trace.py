r"""The exact Hessian trace of a piecewise-linear network, without Hessian products.

For the cross-entropy of a network built from linear layers, convolutions, ReLUs and pooling,
every logit is piecewise linear in each single parameter, so the diagonal of the Hessian equals
the diagonal of its Gauss–Newton part and the trace follows exactly from per-sample Jacobians
(:func:`piecewise_linear_trace`).
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch.func import functional_call, jacrev, vmap

from .checks import (
    check_labels,
    check_positive,
    check_reduction,
    evaluation,
    materialize,
    num_samples,
)

__all__ = ["piecewise_linear_trace"]

#: Modules under which every output is piecewise linear in each single parameter.
_PIECEWISE_LINEAR = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                     torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.Flatten, torch.nn.Identity,
                     torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.AvgPool1d,
                     torch.nn.AvgPool2d)


def piecewise_linear_trace(model: torch.nn.Module, loss_fn, data, chunk: int = 32,
                           dtype: Optional[torch.dtype] = None) -> float:
    r"""The exact trace of the cross-entropy Hessian of a piecewise-linear network, without
    Hessian products.

    With :math:`H = \frac1N\sum_n J_n^\top \Lambda_n J_n + \frac1N\sum_{n,c}
    \frac{\partial \ell_n}{\partial f_c}\nabla^2_\theta f_{nc}` (Gauss–Newton part plus
    residual), each logit of a network built from linear layers, convolutions, ReLUs and max
    pooling is piecewise linear in every *single* parameter, so the residual's diagonal is zero
    and

    .. math:: \operatorname{Tr} H = \frac1N\sum_n \operatorname{Tr}(\Lambda_n J_n J_n^\top),
              \qquad \Lambda_n = \operatorname{diag}(p_n) - p_n p_n^\top,

    from the per-sample Jacobians :math:`J_n` of the logits (``torch.func``), in chunks of
    ``chunk`` samples. The cost is about one backward pass per class over the data.

    Args:
        model: an ``nn.Sequential`` (possibly nested) of ``Linear``, ``Conv``, ``ReLU``,
            ``LeakyReLU``, ``Flatten``, ``Identity``, max or average pooling modules.
        loss_fn: ``nn.CrossEntropyLoss()`` with mean reduction and no label smoothing or weights.
        data: an ``(X, y)`` pair or an iterable of pairs.
        chunk: samples per Jacobian batch (memory: ``chunk × classes × P`` numbers).
        dtype: compute in this dtype on a copy (default the model's).

    Returns:
        :math:`\operatorname{Tr}\nabla^2 L`.

    Raises:
        ValueError: a module that is not piecewise linear, another loss, or bad data.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    >>> t = piecewise_linear_trace(net, torch.nn.CrossEntropyLoss(), (X, y), dtype=torch.float64)
    >>> from flatness.operators import dense_hessian
    >>> abs(t - float(dense_hessian(net, torch.nn.CrossEntropyLoss(), (X, y)).trace())) < 1e-10
    True
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Sequential):
            continue
        if not isinstance(m, _PIECEWISE_LINEAR) or (
                isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))
                and m.padding_mode != "zeros"):
            raise ValueError(f"model: module {name or type(m).__name__} ({type(m).__name__}) is "
                             "not known to be piecewise linear in each parameter; use "
                             "hessian_trace's estimators instead")
    if type(loss_fn) is not torch.nn.CrossEntropyLoss or loss_fn.weight is not None \
            or loss_fn.label_smoothing != 0:
        raise ValueError("loss_fn: expected a plain nn.CrossEntropyLoss()")
    check_reduction(loss_fn)
    check_positive(chunk, "chunk", integer=True)
    batches = materialize(data)
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    if not params:
        raise ValueError("model: it has no parameters that require gradients")
    N = num_samples(batches)

    def logits(p, x):
        return functional_call(model, {**p, **frozen}, (x.unsqueeze(0),)).squeeze(0)

    total = 0.0
    with evaluation(model), torch.no_grad():
        for X, y in batches:
            if dtype is not None and X.is_floating_point():
                X = X.to(dtype)
            for i in range(0, X.shape[0], chunk):
                xb = X[i:i + chunk]
                out = model(xb)
                check_labels(out, y[i:i + chunk], loss_fn)
                J = vmap(jacrev(logits), in_dims=(None, 0))(params, xb)
                Jf = torch.cat([j.reshape(xb.shape[0], out.shape[1], -1) for j in J.values()], -1)
                G = (Jf @ Jf.transpose(1, 2)).double()
                p = torch.softmax(out.double(), 1)
                lam = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
                total += float((lam * G).sum())
    value = total / N
    if not math.isfinite(value):
        raise ValueError(f"the trace at the point measured is {value}; check the model and data")
    return value
