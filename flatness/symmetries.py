r"""Symmetries that change the loss landscape but not the function: α-scale (Dinh et al. 2017).

Dinh, Pascanu, Bengio & Bengio, "Sharp Minima Can Generalize For Deep Nets" (ICML 2017), show
that the flatness of a minimum is not a property of the function a network computes: the same
function sits at minima of any sharpness.

* :func:`alpha_scale` — the α-scale transformation of a rectified network. Layer :math:`k` is
  multiplied by :math:`\alpha_k > 0` with :math:`\prod_k \alpha_k = 1`; because
  :math:`\mathrm{relu}(\alpha z) = \alpha\,\mathrm{relu}(z)` for :math:`\alpha > 0`, the
  network's function is unchanged. :func:`parameter_scaling` returns the diagonal matrix
  :math:`D` of that map on the flat parameter vector, so that :math:`\theta' = D\theta` and, by
  differentiating :math:`L(D\theta) = L(\theta)` twice,

  .. math:: \nabla^2 L(D\theta) = D^{-1}\,\nabla^2 L(\theta)\,D^{-1}.

* :func:`parameter_hessian` — the dense Hessian with respect to one parameter tensor, with
  BatchNorm optionally using batch statistics, to check the scale invariance
  :math:`L(cw) = L(w) \Rightarrow \nabla^2 L(cw) = c^{-2}\nabla^2 L(w)`.

Every function returns new objects; none changes the model it is given.
"""

from __future__ import annotations

import copy
import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from .checks import (
    NORMALIZATION,
    check_finite,
    check_labels,
    check_reduction,
    check_tensor_pair,
    evaluation,
    quiet_torch_func,
)
from .params import ParameterLayout

__all__ = ["WEIGHT_LAYERS", "HOMOGENEOUS", "weight_layers", "alpha_factors", "complete_factors",
           "alpha_scale", "parameter_scaling", "parameter_hessian"]

#: Layers whose weights (and biases) α-scale multiplies.
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Parameter-free modules that commute with multiplication by a positive number,
#: :math:`h(\alpha z) = \alpha h(z)` for :math:`\alpha > 0` (the allow-list of :func:`alpha_scale`).
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Flatten, nn.Unflatten,
               nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
               nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
               nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
               nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
               nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)

Factors = Union[float, Sequence[float], np.ndarray, Tensor]


def weight_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The weight layers of a rectified feed-forward chain, in the order they are applied.

    The model must be an ``nn.Sequential`` (nested ones are fine) — or a single weight layer —
    built from :data:`WEIGHT_LAYERS` and the positively homogeneous modules of
    :data:`HOMOGENEOUS`, so that module order is the order of computation and every hidden
    unit is rescaled consistently.

    Args:
        model: the network.

    Returns:
        ``(name, module)`` pairs for every ``nn.Linear`` / ``nn.ConvNd``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a normalization layer, an activation or module that is not positively
            homogeneous (``Tanh``, ``Sigmoid``, ``GELU``, …), a module with its own ``forward``
            (skip connections and the like), a parameter outside a weight layer, or no weight
            layer at all.

    >>> from flatness.models import mlp
    >>> [name for name, _ in weight_layers(mlp(4, (3, 3), 2))]
    ['0', '2', '4']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    layers = []
    allowed = ", ".join(t.__name__ for t in (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Flatten,
                                             nn.MaxPool1d, nn.AvgPool1d, nn.Dropout))
    seen = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) in seen:
            raise ValueError(
                f"model: the module {name} ({type(m).__name__}) is the same object as "
                f"{seen[id(m)] or 'the model'}; a module applied twice sees two different "
                "scales, so alpha_scale cannot rescale it consistently (use separate copies)")
        seen[id(m)] = name
    shared = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        if id(p) in shared:
            raise ValueError(f"model: the parameter {pname} is shared with {shared[id(p)]}; "
                             "alpha_scale needs every parameter in one layer only")
        shared[id(p)] = pname
    if getattr(nn.modules.module, "_global_forward_hooks", None) \
            or getattr(nn.modules.module, "_global_forward_pre_hooks", None):
        raise ValueError("model: global forward hooks are registered; they may change the "
                         "function, so alpha_scale refuses")
    for name, m in model.named_modules():
        label = f"{name or 'the model'} ({type(m).__name__})"
        if m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs",
                                                                None):
            raise ValueError(f"model: {label} has forward hooks, which may change its output; "
                             "alpha_scale refuses modules with hooks")
        if isinstance(m, NORMALIZATION):
            raise ValueError(
                f"model: {label} is a normalization layer; it divides out the scale of its "
                "input, so the rescaling rule of alpha_scale does not apply to the layers around "
                "it (such layers have their own symmetry, L(cw) = L(w)); alpha_scale refuses "
                "normalization layers")
        if type(m) in WEIGHT_LAYERS:
            extra = [n for n, _ in m.named_parameters(recurse=False) if n not in ("weight", "bias")]
            if extra:
                raise ValueError(f"model: {label} has parameters {extra} besides weight and bias")
            if list(m.children()):
                raise ValueError(f"model: {label} has submodules")
            layers.append((name, m))
        elif type(m) is nn.Sequential:
            if list(m.named_parameters(recurse=False)):
                raise ValueError(f"model: {label} holds parameters outside its layers")
        elif type(m) in HOMOGENEOUS:
            if list(m.parameters(recurse=False)) or list(m.children()):
                raise ValueError(f"model: {label} has parameters or submodules; alpha_scale only "
                                 "handles parameter-free activations")
        elif isinstance(m, WEIGHT_LAYERS + (nn.Sequential,) + HOMOGENEOUS):
            raise ValueError(
                f"model: {label} is a subclass of {_base_name(m)}, whose own code (its forward, "
                "a skip connection, …) alpha_scale cannot prove to be positively homogeneous; "
                "it accepts the exact torch classes only")
        elif name == "" and not isinstance(m, WEIGHT_LAYERS):
            raise ValueError(
                f"model: expected an nn.Sequential chain of weight layers and positively "
                f"homogeneous modules (or a single weight layer), got {type(m).__name__}, whose "
                "own forward may add skip connections or other non-homogeneous operations")
        else:
            raise ValueError(
                f"model: {label} is not positively homogeneous (h(αz) = αh(z) for α > 0 fails) "
                f"or is not supported; alpha_scale accepts weight layers (Linear, Conv1d/2d/3d) "
                f"and {allowed}, max/average pooling")
    if not layers:
        raise ValueError("model: it has no weight layer (Linear or Conv) to rescale")
    return layers


def _base_name(m: nn.Module) -> str:
    for base in WEIGHT_LAYERS + (nn.Sequential,) + HOMOGENEOUS:
        if isinstance(m, base):
            return f"nn.{base.__name__}"
    return type(m).__name__


def alpha_factors(num_layers: int, alpha: float, layers: Tuple[int, int] = (0, 1)
                  ) -> Tuple[float, ...]:
    r"""Dinh et al.'s :math:`T_\alpha` on two layers of a ``num_layers``-layer network.

    Layer ``layers[0]`` gets :math:`\alpha`, layer ``layers[1]`` gets :math:`\alpha^{-1}`, every
    other layer 1.

    Args:
        num_layers: the number of weight layers ``K``.
        alpha: the factor, positive.
        layers: the two (distinct) layer indices, counted from 0; negative indices count from
            the end.

    Returns:
        A tuple of ``K`` factors with product one.

    Raises:
        ValueError: ``num_layers < 2``, ``alpha ≤ 0`` or not finite, bad layer indices.

    >>> alpha_factors(3, 4.0)
    (4.0, 0.25, 1.0)
    >>> alpha_factors(3, 4.0, layers=(1, 2))
    (1.0, 4.0, 0.25)
    """
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 2:
        raise ValueError(f"num_layers: expected an integer ≥ 2, got {num_layers!r}")
    alpha = _positive_float(alpha, "alpha")
    try:
        i, j = (int(v) for v in layers)
    except (TypeError, ValueError):
        raise ValueError(f"layers: expected a pair of layer indices, got {layers!r}") from None
    if not (-num_layers <= i < num_layers and -num_layers <= j < num_layers):
        raise ValueError(f"layers: indices must lie in [-{num_layers}, {num_layers}), "
                         f"got {layers!r}")
    i, j = i % num_layers, j % num_layers
    if i == j:
        raise ValueError(f"layers: expected two distinct layers, got {layers!r}")
    factors = [1.0] * num_layers
    factors[i], factors[j] = alpha, 1.0 / alpha
    return tuple(factors)


def complete_factors(factors: Sequence[float], layer: int = -1) -> Tuple[float, ...]:
    r"""Insert at position ``layer`` the factor that makes the product one.

    Dinh et al.'s multi-layer construction: choose :math:`\alpha_k` freely for ``K − 1`` layers
    and compensate in the remaining one, :math:`\alpha_K = \prod_{k<K}\alpha_k^{-1}`.

    Args:
        factors: ``K − 1`` positive factors.
        layer: where to insert the compensating factor in the result (default: last).

    >>> complete_factors([0.5, 0.25])
    (0.5, 0.25, 8.0)
    >>> complete_factors([2.0], layer=0)
    (0.5, 2.0)
    """
    fs = [_positive_float(f, "factors") for f in _as_list(factors, "factors")]
    if not fs:
        raise ValueError("factors: expected at least one factor")
    K = len(fs) + 1
    if not isinstance(layer, int) or not -K <= layer < K:
        raise ValueError(f"layer: expected an index in [-{K}, {K}), got {layer!r}")
    comp = 1.0
    for f in fs:  # exact when the factors are powers of two
        comp /= f
    fs.insert(layer % K, comp)
    return tuple(fs)


def _as_list(values, name: str) -> List[float]:
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    elif isinstance(values, np.ndarray):
        values = values.reshape(-1).tolist()
    try:
        return list(values)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of numbers, "
                        f"got {type(values).__name__}") from None


def _positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}: expected positive numbers, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected positive, finite factors, got {value!r}")
    return value


def _check_factors(alphas: Factors, num_layers: int, rtol: float) -> List[float]:
    if isinstance(alphas, (int, float, np.floating, np.integer)) and not isinstance(alphas, bool):
        if num_layers != 2:
            raise ValueError(
                f"alphas: a single α is only unambiguous for a network with two weight layers "
                f"(Dinh et al.'s T_α = (α, 1/α)); this one has {num_layers}: pass {num_layers} "
                "factors, e.g. alpha_factors(num_layers, alpha, layers=(0, 1))")
        a = _positive_float(alphas, "alphas")
        return [a, 1.0 / a]
    factors = _as_list(alphas, "alphas")
    if len(factors) != num_layers:
        raise ValueError(f"alphas: expected one factor per weight layer ({num_layers}), "
                         f"got {len(factors)}")
    factors = [_positive_float(f, "alphas") for f in factors]
    log_product = sum(math.log(f) for f in factors)
    if abs(math.expm1(log_product)) > rtol:
        raise ValueError(f"alphas: the factors must multiply to one (relative tolerance {rtol:g}) "
                         f"for the function to be unchanged; their product is "
                         f"{math.exp(log_product):.12g}")
    return factors


def _layer_scales(factors: Sequence[float]) -> List[Tuple[float, float]]:
    """``(weight factor, bias factor)`` per layer:
    :math:`(\\alpha_k, \\prod_{j\\le k}\\alpha_j)`."""
    out, c = [], 1.0
    for a in factors:
        c *= a
        out.append((a, c))
    return out


def alpha_scale(model: nn.Module, alphas: Factors, rtol: float = 1e-9,
                probe: Optional[Tensor] = None) -> nn.Module:
    r"""Dinh et al.'s α-scale transformation: a new, observationally equivalent network.

    For weight layers :math:`k = 1..K` (in order) and factors :math:`\alpha_k > 0` with
    :math:`\prod_k\alpha_k = 1`,

    .. math:: W_k \mapsto \alpha_k W_k, \qquad b_k \mapsto \Big(\prod_{j\le k}\alpha_j\Big) b_k .

    By induction the pre-activations of layer :math:`k` are multiplied by
    :math:`c_k = \prod_{j\le k}\alpha_j`; positive homogeneity carries the factor through
    ReLU, leaky ReLU, max pooling and flattening, and :math:`c_K = 1` leaves the output
    unchanged. With powers of two as factors the output is bitwise identical.

    Args:
        model: a rectified feed-forward chain (see :func:`weight_layers`); not changed.
        alphas: one positive factor per weight layer, with product one. A single number is
            accepted for a two-layer network only, meaning :math:`T_\alpha = (\alpha,
            \alpha^{-1})` (Dinh et al.'s Definition 5); see :func:`alpha_factors` and
            :func:`complete_factors` for ``K`` layers.
        rtol: relative tolerance on the product.
        probe: inputs on which the new network's outputs are compared with the old one's
            (in eval mode) before it is returned. By default a fixed random batch whose shape
            is read off the first weight layer (for a convolution, the smallest spatial size
            up to 256 that the network accepts).

    Returns:
        A deep copy of ``model`` with rescaled parameters (same train/eval mode).

    Raises:
        ValueError: factors not positive, a product not one, a wrong number of factors, a
            scalar for a network that does not have two weight layers, every refusal of
            :func:`weight_layers` (normalization layers, non-homogeneous activations, subclasses
            with their own code, a module or parameter used twice, hooks), and outputs on the
            probe batch that differ by more than rounding,
            :math:`|f'(x) - f(x)| > \sqrt{\epsilon}\,\max_k \lVert h_k\rVert_\infty` over
            the network's intermediate values :math:`h_k`.

    >>> from flatness.models import mlp
    >>> net = mlp(5, (4,), 3)
    >>> x = torch.randn(7, 5)
    >>> bool(torch.equal(alpha_scale(net, 8.0)(x), net(x)))
    True
    """
    layers = weight_layers(model)
    factors = _check_factors(alphas, len(layers), rtol)
    new = copy.deepcopy(model)
    new_layers = weight_layers(new)
    with torch.no_grad():
        for (_, layer), (w_factor, b_factor) in zip(new_layers, _layer_scales(factors)):
            if w_factor != 1.0:
                layer.weight.mul_(w_factor)
            if layer.bias is not None and b_factor != 1.0:
                layer.bias.mul_(b_factor)
    product = math.exp(sum(math.log(f) for f in factors))
    _check_same_function(model, new, layers, probe, abs(product - 1.0))
    return new


def _chain(model: nn.Module):
    """The leaf modules of a (verified) nested ``nn.Sequential``, in the order applied."""
    if type(model) is nn.Sequential:
        for child in model:
            yield from _chain(child)
    else:
        yield model


def _probe_batch(model: nn.Module, layers, probe: Optional[Tensor]):
    """``(inputs, outputs)`` of ``model`` on the probe batch (eval mode, no gradients)."""
    first = layers[0][1]
    dtype, device = first.weight.dtype, first.weight.device
    if probe is not None:
        if not isinstance(probe, Tensor):
            raise TypeError(f"probe: expected a tensor of inputs, got {type(probe).__name__}")
        try:
            return probe, model(probe)
        except RuntimeError as err:
            raise ValueError(f"probe: the model cannot take these inputs ({err})") from None
    g = torch.Generator().manual_seed(0)
    if type(first) is nn.Linear:
        shapes = [(8, first.in_features)]
    else:
        dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(first)]
        shapes = [(4, first.in_channels) + (L,) * dims for L in range(1, 257 if dims < 3 else 33)]
    for shape in shapes:
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
        try:
            return x, model(x)
        except RuntimeError:
            continue
    raise ValueError("model: alpha_scale could not find an input shape to check the rescaled "
                     "network on; pass probe= a batch of inputs")


def _check_same_function(model: nn.Module, new: nn.Module, layers, probe,
                         deviation: float = 0.0) -> None:
    """Refuse ``new`` unless its outputs on the probe batch equal ``model``'s to rounding:
    :math:`\\sqrt\\epsilon` (plus the product's distance ``deviation`` from one, which scales
    the output) times the largest intermediate value."""
    with evaluation(model, eval_mode=True), evaluation(new, eval_mode=True), torch.no_grad():
        x, before = _probe_batch(model, layers, probe)
        after = new(x)
        h, scale = x, float(x.abs().max()) if x.is_floating_point() and x.numel() else 0.0
        for m in _chain(model):
            h = m(h)
            if h.numel():
                scale = max(scale, float(h.abs().max()))
    if before.shape != after.shape:
        raise ValueError("model: the rescaled network's output has another shape; alpha_scale "
                         "does not preserve this network's function")
    finite = torch.isfinite(before)
    if not torch.equal(finite, torch.isfinite(after)):
        raise ValueError("model: the rescaled network's outputs are not finite where the "
                         "original's are (or the reverse); alpha_scale does not preserve it")
    if not bool(finite.any()):
        return
    eps = torch.finfo(before.dtype).eps
    change = float((after[finite] - before[finite]).abs().max())
    allowed = (math.sqrt(eps) + deviation) * scale
    if change > allowed:
        raise ValueError(
            f"model: the rescaled network's outputs differ from the original's by up to "
            f"{change:.3g} on a probe batch (more than rounding, {allowed:.3g}); "
            "the network is not the positively homogeneous chain alpha_scale needs")


def parameter_scaling(model: nn.Module, alphas: Factors, rtol: float = 1e-9,
                      dtype: torch.dtype = torch.float64) -> Tensor:
    r"""The diagonal of :math:`D`, the α-scale map on the flat parameter vector.

    :math:`\theta' = D\theta` where :math:`\theta' ` are the parameters of
    ``alpha_scale(model, alphas)``, in the order of ``model.parameters()`` (trainable ones),
    and the Hessians satisfy :math:`\nabla^2 L(D\theta) = D^{-1}\nabla^2 L(\theta)D^{-1}`.

    Args:
        model, alphas, rtol: as for :func:`alpha_scale`.
        dtype: dtype of the result.

    Returns:
        A vector ``d`` with ``D = diag(d)``.

    >>> from flatness.models import mlp
    >>> parameter_scaling(mlp(1, (1,), 1), 2.0).tolist()
    [2.0, 2.0, 0.5, 1.0]
    """
    layers = weight_layers(model)
    factors = _check_factors(alphas, len(layers), rtol)
    scale = {}
    for (_, layer), (w_factor, b_factor) in zip(layers, _layer_scales(factors)):
        scale[id(layer.weight)] = w_factor
        if layer.bias is not None:
            scale[id(layer.bias)] = b_factor
    layout, params = ParameterLayout(model), dict(model.named_parameters())
    d = torch.empty(layout.numel, dtype=dtype)
    for name, where in layout.slices.items():
        d[where] = scale[id(params[name])]
    return d


def parameter_hessian(model: nn.Module, loss_fn, data, name: str,
                      batch_statistics: bool = False, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""The dense Hessian of the loss with respect to one parameter tensor (flattened).

    Args:
        model: the network; not changed (it is evaluated on a copy).
        loss_fn: a mean-reduced loss.
        data: one ``(X, y)`` pair (the whole batch: with ``batch_statistics`` the loss depends
            on it).
        name: the parameter, as in ``model.named_parameters()``.
        batch_statistics: evaluate BatchNorm with the statistics of ``data`` (train mode, the
            setting in which BatchNorm makes the loss invariant to the scale of the weights
            before it); otherwise the model is evaluated in eval mode.
        dtype: compute in this dtype.

    Returns:
        A ``(n, n)`` tensor, ``n`` the parameter's size.

    Raises:
        ValueError: an unknown ``name``; Dropout in the model with ``batch_statistics``; a loss
            or Hessian that is not finite at the point measured.
    """
    check_reduction(loss_fn)
    X, y = check_tensor_pair(data)
    params = dict(model.named_parameters())
    if name not in params:
        raise ValueError(f"name: expected one of {sorted(params)}, got {name!r}")
    net = copy.deepcopy(model).to(dtype)
    X = X.to(dtype) if X.is_floating_point() else X
    fixed = {k: v.detach() for k, v in net.named_parameters() if k != name}
    buffers = {k: v.detach().clone() for k, v in net.named_buffers()}
    shape = params[name].shape
    start = params[name].detach().to(dtype).reshape(-1)
    if batch_statistics:
        drop = [n for n, m in net.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        if drop:
            raise ValueError(f"model: Dropout ({', '.join(drop)}) makes the train-mode loss "
                             "random; remove it to use batch_statistics=True")
        net.train()
    else:
        net.eval()

    def outputs(w):
        # fresh copies of the buffers: train-mode BatchNorm updates its running statistics
        bufs = {k: v.clone() for k, v in buffers.items()}
        return functional_call(net, {**fixed, name: w.reshape(shape), **bufs}, (X,))

    with quiet_torch_func():
        with torch.no_grad():
            out = outputs(start)
            check_labels(out, y, loss_fn)
            check_finite(float(loss_fn(out, y)))
        H = torch.autograd.functional.hessian(lambda w: loss_fn(outputs(w), y), start)
    if not bool(torch.isfinite(H).all()):
        raise ValueError(f"the Hessian with respect to {name} has {int((~torch.isfinite(H)).sum())} "
                         "non-finite entries at the point measured (check the model and data)")
    return H
