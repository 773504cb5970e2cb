r"""The Fisher–Rao norm (Liang, Poggio, Rakhlin & Stokes 2019).

.. math:: \lVert\theta\rVert_{fr}^2 = \theta^\top F(\theta)\,\theta
          = \mathbb{E}\big[\langle\theta, \nabla_\theta\,\ell(f_\theta(x), y)\rangle^2\big],

here with the empirical expectation over the data's own ``(x, y)`` (the empirical Fisher
:math:`F = \mathbb{E}[\nabla\ell\,\nabla\ell^\top]`, as in Jiang et al.'s "fisher-rao" measure;
Liang et al. also discuss the model's predictive distribution for :math:`y`). The inner product
is a directional derivative, computed with one forward-mode product per batch:
:math:`\langle\theta, \nabla_\theta\ell_i\rangle = \langle\partial\ell_i/\partial f, J_i\theta\rangle`
with :math:`J_i\theta = \frac{d}{dt}f_{(1+t)\theta}(x_i)\big|_{t=0}`.

**The identity for ReLU networks without biases.** Such a network with :math:`L+1` weight
layers is positively homogeneous of degree :math:`L+1` in its parameters,
:math:`f_{c\theta} = c^{L+1}f_\theta`, so :math:`J\theta = (L+1)f` (Euler) and

.. math:: \lVert\theta\rVert_{fr}^2 = (L+1)^2\,\mathbb{E}\big[\langle\partial\ell/\partial f,
          f_\theta(x)\rangle^2\big]

(Liang et al.'s Lemma 2.1); ``method="output"`` computes this form.

**Invariance.** For a positive diagonal symmetry :math:`\theta' = D\theta` (α-scale, neuron
rescaling, the radial direction of weight normalization) :math:`\nabla_{\theta'}\ell =
D^{-1}\nabla_\theta\ell`, so :math:`\langle\theta', \nabla_{\theta'}\ell\rangle =
\langle\theta, \nabla_\theta\ell\rangle` sample by sample: exactly invariant to all three.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .checks import (check_labels, check_reduction, evaluation, materialize, quiet_torch_func,
                     sample_weights)
from .params import ParameterLayout, _fixed_tensors
from .symmetries import weight_layers

__all__ = ["fisher_rao_norm", "fisher_rao_inner_products"]


def _output_gradients(loss_fn, out: Tensor, y: Tensor, w: Tensor) -> Tensor:
    r"""Per-sample :math:`\partial\ell_i/\partial f_i` from a mean-reduced batch loss:
    :math:`L = \sum_i w_i\ell_i / \sum_i w_i`, so :math:`\partial\ell_i/\partial f_i =
    (\sum_j w_j / w_i)\,\partial L/\partial f_i` (zero for samples of weight 0)."""
    with torch.enable_grad():
        o = out.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(o, y), o)
    w = w.to(g.dtype)
    scale = torch.where(w > 0, w.sum() / torch.where(w > 0, w, torch.ones_like(w)), 0.0)
    return g * scale.reshape((-1,) + (1,) * (g.ndim - 1))


def _jvp(f, theta: Tensor):
    r"""``(f(θ), J_f(θ) θ)`` by two reverse-mode products (:math:`J\theta = \nabla_u
    \langle J^\top u, \theta\rangle`), which also works for modules without forward-mode
    derivatives (weight normalization)."""
    with torch.enable_grad():
        point = theta.detach().requires_grad_(True)
        out = f(point)
        u = torch.zeros_like(out, requires_grad=True)
        (jtu,) = torch.autograd.grad(out, point, u, create_graph=True)
        (tangent,) = torch.autograd.grad(jtu, u, theta)
    return out.detach(), tangent.detach()


def fisher_rao_inner_products(model: nn.Module, data, loss_fn=None, *, method: str = "gradient",
                              eval_mode: Optional[bool] = None):
    r"""The per-sample :math:`s_i = \langle\theta, \nabla_\theta\ell_i\rangle` and weights
    :math:`w_i` (the loss's sample weights, 1 unless class weights or ignored labels), in
    float64: :func:`fisher_rao_norm` is :math:`\sum_i w_i s_i^2/\sum_i w_i`.

    Args:
        model, data, loss_fn, method, eval_mode: as for :func:`fisher_rao_norm`.

    Returns:
        ``(s, w)``, two float64 tensors of one entry per sample.
    """
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    check_reduction(loss_fn)
    if method not in ("gradient", "output"):
        raise ValueError(f"method: expected 'gradient' or 'output', got {method!r}")
    layout = ParameterLayout(model)
    degree = None
    if method == "output":
        layers = weight_layers(model)  # refuses anything but a rectified chain
        if any(m.bias is not None for _, m in layers):
            raise ValueError("method: 'output' uses the identity (L+1)^2 E<dl/df, f>^2, which "
                             "holds only for ReLU networks without biases; this model has biases "
                             "(use method='gradient')")
        degree = len(layers)
    f64 = torch.float64
    theta = layout.to_vector(model, "model").to(device=layout.device, dtype=f64)
    fixed = _fixed_tensors(model, layout, theta)
    scores, weights = [], []
    with evaluation(model, eval_mode):
        for X, y in materialize(data):
            X = X.to(device=theta.device, dtype=f64) if X.is_floating_point() else X.to(theta.device)
            y = y.to(device=theta.device, dtype=f64) if y.is_floating_point() else y.to(theta.device)

            def f(v):
                with quiet_torch_func():
                    return functional_call(model, {**fixed, **layout.to_dict(v)}, (X,))

            if degree is None:
                out, tangent = _jvp(f, theta)
            else:
                with torch.no_grad():
                    out = f(theta)
                tangent = degree * out
            check_labels(out, y, loss_fn)
            w = sample_weights(loss_fn, y).to(theta.device)
            g = _output_gradients(loss_fn, out, y, w)
            scores.append((g * tangent).reshape(g.shape[0], -1).sum(1))
            weights.append(w)
    return torch.cat(scores), torch.cat(weights)


def fisher_rao_norm(model: nn.Module, data, loss_fn=None, *, method: str = "gradient",
                    eval_mode: Optional[bool] = None) -> float:
    r"""The squared Fisher–Rao norm :math:`\mathbb{E}[\langle\theta, \nabla_\theta\ell\rangle^2]`
    of the model's trainable parameters over ``data`` (see the module docstring).

    Args:
        model: the network (not changed).
        data: an ``(X, y)`` pair or an iterable of batches.
        loss_fn: a mean-reduced loss (default ``nn.CrossEntropyLoss()``); the per-sample loss is
            recovered from its mean (class weights weigh the samples as in the mean).
        method: ``"gradient"`` (the definition, any network) or ``"output"`` (Liang et al.'s
            identity :math:`(L+1)^2\mathbb{E}\langle\partial\ell/\partial f, f\rangle^2`, for
            bias-free rectified chains only).
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        :math:`\lVert\theta\rVert_{fr}^2` (a float, computed in float64).

    Raises:
        ValueError: an unknown ``method``; ``method="output"`` on a model with biases or that is
            not a rectified chain; bad data or labels; a loss that is not mean-reduced.

    >>> net = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad(): _ = net.weight.fill_(3.0)
    >>> X, y = torch.ones(2, 1), torch.zeros(2, 1)            # l = (w x)^2, <w, dl/dw> = 2 w^2
    >>> fisher_rao_norm(net, (X, y), torch.nn.MSELoss())      # (2 * 9)^2
    324.0
    """
    s, w = fisher_rao_inner_products(model, data, loss_fn, method=method, eval_mode=eval_mode)
    total = w.sum()
    if not total > 0:
        raise ValueError("data: every sample has weight 0 in the loss (all labels ignored)")
    return float((w * s ** 2).sum() / total)
