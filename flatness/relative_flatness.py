r"""Relative flatness of the last layer (Petzka, Kamp, Adilova, Sminchisescu & Boley 2021).

Write the network as :math:`f(x) = \psi(W\phi(x))` with :math:`\phi(x) \in \mathbb{R}^m` the
features of the penultimate layer and :math:`W \in \mathbb{R}^{d\times m}` the weight matrix of
the layer that reads them, with rows :math:`w_s` (one per output neuron :math:`s`). Petzka et
al.'s trace relative flatness is

.. math:: \kappa^\phi_{Tr}(W) = \sum_{s,s'=1}^{d} \langle w_s, w_{s'}\rangle\,
          \mathrm{Tr}\big(H_{s,s'}(W)\big),

with :math:`H_{s,s'} = \partial^2 L / \partial w_s\,\partial w_{s'}` the :math:`m\times m` block
of the Hessian of the full-data loss with respect to :math:`W`. For the last layer
(:math:`z = W\phi + b` is the model's output), the loss is a sum over samples of a function of
:math:`z_i`, so with :math:`h_i = \partial^2 L/\partial z_i^2` (:math:`d\times d`, including the
:math:`1/N` of the mean)

.. math:: H_{(s,a),(s',a')} = \sum_i (h_i)_{ss'}\,\phi_{ia}\phi_{ia'}, \qquad
          \kappa^\phi_{Tr} = \sum_i \lVert\phi_i\rVert^2\,\mathrm{Tr}(W W^\top h_i),

which is what :func:`relative_flatness` computes (exactly; :math:`C` Hessian-vector products
in the output space give every :math:`h_i`). The bias :math:`b` is not part of :math:`W`.

**Invariance.** α-scale multiplies :math:`W` by :math:`\alpha` and the features by
:math:`1/\alpha`, so :math:`\langle w_s, w_{s'}\rangle` gains :math:`\alpha^2` and
:math:`\mathrm{Tr}\,H_{s,s'}` loses it: invariant. Per-neuron rescaling of the penultimate
units (:math:`\phi_a \mapsto c_a\phi_a`, column :math:`a` of :math:`W` divided by :math:`c_a`)
rescales the two factors by different weighted sums over :math:`a`, so the measure moves (the
paper treats layer-wise reparametrizations). The measure depends only on :math:`W` and
:math:`\phi`, so a reparametrization that leaves both alone (the radial direction of weight
normalization, where ``layer.weight`` is the effective :math:`g\,v/\lVert v\rVert`) leaves it
unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .checks import check_finite, check_labels, check_reduction, evaluation, materialize
from .operators import _loss_weight

__all__ = ["relative_flatness", "last_linear_layer"]


def last_linear_layer(model: nn.Module) -> str:
    """The name of the last ``nn.Linear`` module of ``model`` (in module order).

    Raises:
        ValueError: the model has no ``nn.Linear``.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("model: it has no nn.Linear layer to take the relative flatness of")
    return names[-1]


def relative_flatness(model: nn.Module, loss_fn, data, layer: Optional[str] = None, *,
                      eval_mode: Optional[bool] = None) -> float:
    r"""Petzka et al.'s :math:`\kappa^\phi_{Tr}` of the layer that maps the penultimate features
    to the output (see the module docstring).

    Features and outputs are captured by a forward hook (removed afterwards) on a float64 copy
    of the model, so the model is not changed.

    Args:
        model: the network (not changed).
        loss_fn: a mean-reduced loss of the outputs.
        data: an ``(X, y)`` pair or an iterable of batches (the full-data mean loss).
        layer: the name of an ``nn.Linear`` module whose output is the model's output (default
            the last ``nn.Linear``).
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        :math:`\kappa^\phi_{Tr}` (a float).

    Raises:
        ValueError: ``layer`` not the name of an ``nn.Linear`` of the model, or one whose output
            is not the model's output; bad data; a loss that is not mean-reduced.

    >>> net = torch.nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad(): _ = net.weight.copy_(torch.tensor([[1.0, 2.0]]))
    >>> X, y = torch.tensor([[1.0, 1.0]]), torch.zeros(1, 1)   # L = (w.x)^2, H = 2 x x^T
    >>> relative_flatness(net, torch.nn.MSELoss(), (X, y))     # |w|^2 Tr H = 5 * 4
    20.0
    """
    import copy

    check_reduction(loss_fn)
    modules = dict(model.named_modules())
    name = last_linear_layer(model) if layer is None else layer
    if not isinstance(name, str) or not isinstance(modules.get(name), nn.Linear):
        raise ValueError(f"layer: expected the name of an nn.Linear module of the model, got "
                         f"{layer!r}")
    net = copy.deepcopy(model).double()
    target = dict(net.named_modules())[name]
    captured = {}

    def hook(module, inputs, output):
        captured["phi"], captured["z"] = inputs[0].detach(), output

    batches = materialize(data)
    f64 = torch.float64
    weights = [_loss_weight(loss_fn, X, y) for X, y in batches]
    total = sum(weights)
    if not total > 0:
        raise ValueError("data: every sample has weight 0 in the loss (all labels ignored)")
    handle = target.register_forward_hook(hook)
    kappa, loss = 0.0, 0.0
    try:
        with evaluation(net, eval_mode), torch.no_grad():
            W = target.weight.detach()
            gram = W @ W.T
            for (X, y), wb in zip(batches, weights):
                if wb == 0:
                    continue
                X = X.to(f64) if X.is_floating_point() else X
                y = y.to(f64) if y.is_floating_point() else y
                out = net(X)
                if captured.get("z") is not out:
                    raise ValueError(f"layer: the output of {name!r} is not the model's output; "
                                     "relative flatness is taken of the layer that reads the "
                                     "penultimate features (pass the last layer)")
                check_labels(out, y, loss_fn)
                phi = captured["phi"].reshape(out.shape[0], -1)
                z = out.detach().reshape(out.shape[0], -1)
                C = z.shape[1]
                with torch.enable_grad():
                    zz = z.clone().requires_grad_(True)
                    value = loss_fn(zz.reshape(out.shape), y) * (wb / total)
                    (g,) = torch.autograd.grad(value, zz, create_graph=True)
                    loss += float(value.detach())
                    # h[i, :, c] = d^2 L / dz_i dz_{i,c}: one product per output coordinate
                    h = torch.stack([torch.autograd.grad(g[:, c].sum(), zz, retain_graph=True)[0]
                                     for c in range(C)], dim=2)
                kappa += float(((phi ** 2).sum(1) * (gram[None] * h).sum((1, 2))).sum())
    finally:
        handle.remove()
    check_finite(loss)
    return kappa
