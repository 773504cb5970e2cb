r"""Transformations that change the loss landscape but not the function (Dinh et al. 2017).

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

* Reparametrizations :math:`\theta = g(\eta)`, each with its Jacobian :math:`J_g`: at a critical
  point the Hessian in the new coordinates is :math:`J_g^\top \nabla^2_\theta L\, J_g`
  (:func:`reparametrized_top_eigenvalues`, which can also include the gradient term exactly).
  :class:`RadialMap` is the one-dimensional map of
  Dinh et al.'s Figure 5, :class:`ExponentialMap` and :class:`WeightNorm` act on a network's
  weights, :class:`InputAffineMap` with :func:`input_transform` changes the input space.
* :func:`block_top_eigenvalues` — top eigenvalues of one diagonal block of the Hessian (one
  layer's parameters), the blocks that α-scale multiplies by :math:`\alpha_k^{-2}`.
* :func:`parameter_hessian` — the dense Hessian with respect to one parameter tensor, with
  BatchNorm optionally using batch statistics, to check the scale invariance
  :math:`L(cw) = L(w) \Rightarrow \nabla^2 L(cw) = c^{-2}\nabla^2 L(w)`.

Every function returns new objects; none changes the model it is given.
"""

from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ._validation import (NORMALIZATION, check_labels, check_reduction, check_tensor_pair,
                          evaluation, materialize, num_samples, quiet_torch_func,
                          trainable_parameters)

__all__ = ["WEIGHT_LAYERS", "HOMOGENEOUS", "weight_layers", "alpha_factors", "complete_factors",
           "alpha_scale", "parameter_scaling", "parameter_slices", "RadialMap", "ExponentialMap",
           "WeightNorm", "InputAffineMap", "input_transform", "reparametrized_operator",
           "reparametrized_top_eigenvalues", "block_top_eigenvalues", "parameter_hessian"]

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


# ----------------------------------------------------------------------------------------------
# α-scale
# ----------------------------------------------------------------------------------------------

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

    >>> from flatlib.models import mlp
    >>> [name for name, _ in weight_layers(mlp(4, (3, 3), 2))]
    ['0', '2', '4']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    layers = []
    allowed = ", ".join(t.__name__ for t in (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Flatten,
                                             nn.MaxPool1d, nn.AvgPool1d, nn.Dropout))
    for name, m in model.named_modules():
        label = f"{name or 'the model'} ({type(m).__name__})"
        if isinstance(m, NORMALIZATION):
            raise ValueError(
                f"model: {label} is a normalization layer; it divides out the scale of its "
                "input, so the rescaling rule of alpha_scale does not apply to the layers around "
                "it (such layers have their own symmetry, L(cw) = L(w)); alpha_scale refuses "
                "normalization layers")
        if isinstance(m, WEIGHT_LAYERS):
            extra = [n for n, _ in m.named_parameters(recurse=False) if n not in ("weight", "bias")]
            if extra:
                raise ValueError(f"model: {label} has parameters {extra} besides weight and bias")
            layers.append((name, m))
        elif isinstance(m, nn.Sequential):
            if list(m.named_parameters(recurse=False)):
                raise ValueError(f"model: {label} holds parameters outside its layers")
        elif isinstance(m, HOMOGENEOUS):
            if list(m.parameters(recurse=False)):
                raise ValueError(f"model: {label} has parameters; alpha_scale only handles "
                                 "parameter-free activations")
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


def alpha_scale(model: nn.Module, alphas: Factors, rtol: float = 1e-9) -> nn.Module:
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

    Returns:
        A deep copy of ``model`` with rescaled parameters (same train/eval mode).

    Raises:
        ValueError: factors not positive, a product not one, a wrong number of factors, a
            scalar for a network that does not have two weight layers, and every refusal of
            :func:`weight_layers` (normalization layers, non-homogeneous activations).

    >>> from flatlib.models import mlp
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
    return new


def parameter_slices(model: nn.Module) -> Dict[str, slice]:
    """Where each trainable parameter lies in the flat vector of ``model.parameters()``.

    The order is that of :func:`flatlib.curvature.flat_parameters` and of the rows of
    :func:`flatlib.curvature.dense_hessian`.

    >>> from flatlib.models import mlp
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

    >>> from flatlib.models import mlp
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
    parts = [torch.full((p.numel(),), scale[id(p)], dtype=dtype)
             for p in trainable_parameters(model)]
    return torch.cat(parts)


# ----------------------------------------------------------------------------------------------
# Reparametrizations θ = g(η)
# ----------------------------------------------------------------------------------------------

class RadialMap:
    r"""The one-dimensional reparametrization of Dinh et al.'s Figure 5, applied elementwise:

    .. math:: \eta = h(\theta) = \left(|\theta-\hat\theta|^2 + b\right)^{a}(\theta-\hat\theta),
              \qquad b \ge 0,\ a > -\tfrac12 .

    :math:`h` is a strictly increasing bijection of :math:`\mathbb{R}` with
    :math:`h'(\theta) = (u^2+b)^{a-1}\big((1+2a)u^2 + b\big)`, :math:`u = \theta-\hat\theta`.
    The loss in the new coordinate is :math:`\tilde L(\eta) = L(h^{-1}(\eta))`; at a minimum
    :math:`\hat\theta` (where :math:`h'(\hat\theta) = b^{a}`) its curvature is

    .. math:: \tilde L''(0) = \frac{L''(\hat\theta)}{h'(\hat\theta)^2} = b^{-2a}\,L''(\hat\theta),

    so :math:`a` and :math:`b` make that minimum as sharp or as flat as one likes while every
    other point of the function is unchanged.

    Args:
        center: :math:`\hat\theta`.
        a: the exponent, :math:`a > -1/2`.
        b: the offset, :math:`b \ge 0` (:math:`b > 0` for a finite, non-zero slope at the centre).

    >>> h = RadialMap(center=1.0, a=1.0, b=0.25)
    >>> float(h.forward(torch.tensor(2.0)))
    1.25
    >>> round(float(h.inverse(torch.tensor(1.25))), 12)
    2.0
    """

    def __init__(self, center: float = 0.0, a: float = 1.0, b: float = 1.0):
        for name, v in (("center", center), ("a", a), ("b", b)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}: expected a finite number, got {v!r}")
        if not a > -0.5:
            raise ValueError(f"a: expected a > -1/2 (else the map is not a bijection), got {a!r}")
        if not b >= 0:
            raise ValueError(f"b: expected b ≥ 0, got {b!r}")
        self.center, self.a, self.b = float(center), float(a), float(b)

    def __repr__(self) -> str:
        return f"RadialMap(center={self.center!r}, a={self.a!r}, b={self.b!r})"

    def forward(self, theta: Tensor) -> Tensor:
        """:math:`\\eta = h(\\theta)`, elementwise."""
        u = torch.as_tensor(theta, dtype=torch.float64) - self.center
        return (u * u + self.b) ** self.a * u

    def derivative(self, theta: Tensor) -> Tensor:
        """:math:`h'(\\theta)`, elementwise."""
        u = torch.as_tensor(theta, dtype=torch.float64) - self.center
        s = u * u + self.b
        return s ** (self.a - 1) * ((1 + 2 * self.a) * u * u + self.b)

    def jacobian(self, theta: Tensor) -> Tensor:
        """The Jacobian of the elementwise map on a flat vector: ``diag(h'(θ))``."""
        return torch.diag(self.derivative(torch.as_tensor(theta).reshape(-1)))

    def slope_at_center(self) -> float:
        """:math:`h'(\\hat\\theta) = b^a` (infinite or zero when ``b = 0``)."""
        if self.b == 0:
            return math.inf if self.a < 0 else (1.0 if self.a == 0 else 0.0)
        return self.b ** self.a

    def inverse(self, eta: Tensor, iterations: int = 200) -> Tensor:
        """:math:`\\theta = h^{-1}(\\eta)`, elementwise, by bisection (h is increasing).

        Bisection on a bracket that is doubled until it contains the root, then halved
        ``iterations`` times (200 halvings reach float64 resolution for any bracket).
        """
        eta = torch.as_tensor(eta, dtype=torch.float64)
        if not torch.isfinite(eta).all():
            raise ValueError("eta: expected finite values")
        target = eta.abs()
        hi = torch.ones_like(target)
        while True:  # |h(u)| grows like |u|^(1+2a) with 1 + 2a > 0: doubling terminates
            short = ~(self._forward_u(hi) >= target)  # NaN (overflow) counts as short
            if not short.any():
                break
            if not torch.isfinite(hi[short]).all():
                raise ValueError("eta: too large to invert in float64 for this map")
            hi = torch.where(short, hi * 2, hi)
        lo = torch.zeros_like(target)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            below = self._forward_u(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            if torch.equal(lo, hi):
                break
        return self.center + torch.sign(eta) * (lo + hi) / 2

    def _forward_u(self, u: Tensor) -> Tensor:
        return (u * u + self.b) ** self.a * u


class ExponentialMap:
    r"""Elementwise exponential coordinates for a network's parameters:

    .. math:: \theta_i = g(\eta)_i = s_i\, e^{\eta_i}, \qquad s_i = \operatorname{sign}\theta_i,
              \qquad J_g = \operatorname{diag}(\theta).

    At a minimum the Hessian in :math:`\eta` is :math:`\operatorname{diag}(\theta)\,\nabla^2_\theta
    L\,\operatorname{diag}(\theta)` — each curvature weighted by the magnitudes of the weights it
    couples (the same matrix that elementwise adaptive sharpness, Kwon et al. 2021, measures, and
    unchanged by α-scale).

    Args:
        signs: the fixed signs :math:`s` (a flat tensor of ±1).

    Use :meth:`from_parameters` to build the map and the coordinates of a given point.

    >>> g, eta = ExponentialMap.from_parameters(torch.tensor([0.5, -2.0]))
    >>> g.to_weights(eta).tolist()
    [0.5, -2.0]
    """

    def __init__(self, signs: Tensor):
        signs = torch.as_tensor(signs, dtype=torch.float64).reshape(-1)
        if not bool(((signs == 1) | (signs == -1)).all()):
            raise ValueError("signs: expected entries ±1")
        self.signs = signs

    @classmethod
    def from_parameters(cls, theta: Tensor) -> Tuple["ExponentialMap", Tensor]:
        """The map with the signs of ``theta`` and the coordinates :math:`\\eta = \\log|\\theta|`.

        Raises:
            ValueError: an entry of ``theta`` is zero (it has no exponential coordinate).
        """
        theta = torch.as_tensor(theta, dtype=torch.float64).detach().reshape(-1)
        if bool((theta == 0).any()):
            raise ValueError(f"theta: {int((theta == 0).sum())} entries are exactly zero; "
                             "exponential coordinates need non-zero parameters")
        g = cls(torch.sign(theta))
        return g, g.from_weights(theta)

    @property
    def dim(self) -> int:
        return self.signs.numel()

    def to_weights(self, eta: Tensor) -> Tensor:
        """:math:`\\theta = s\\,e^{\\eta}`."""
        return self.signs.to(eta.dtype) * torch.exp(eta)

    def from_weights(self, theta: Tensor) -> Tensor:
        """:math:`\\eta = \\log|\\theta|`; the signs must match."""
        theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1)
        if theta.numel() != self.dim or not bool((torch.sign(theta) == self.signs).all()):
            raise ValueError("theta: expected a vector of the map's size with the map's signs "
                             "(and no zeros)")
        return torch.log(theta.abs())

    def jacobian(self, eta: Tensor) -> Tensor:
        """Dense :math:`J_g = \\operatorname{diag}(s\\,e^{\\eta})`."""
        return torch.diag(self.to_weights(eta))

    def jvp(self, eta: Tensor, v: Tensor) -> Tensor:
        """:math:`J_g v`."""
        return self.to_weights(eta) * v

    def vjp(self, eta: Tensor, w: Tensor) -> Tensor:
        """:math:`J_g^\\top w`."""
        return self.to_weights(eta) * w


class WeightNorm:
    r"""Weight normalization (Salimans & Kingma 2016) of every weight layer, per output unit:

    .. math:: w_j = g_j\,\frac{v_j}{\lVert v_j\rVert},

    with :math:`w_j` the ``j``-th row of a linear weight (output channel of a convolution);
    biases are kept as they are. The new coordinates :math:`\eta = (g, v, \text{biases})` have
    one more entry per output unit than :math:`\theta`, and the loss does not depend on
    :math:`\lVert v_j\rVert`: :math:`L(g, cv) = L(g, v)`. Differentiating twice,
    :math:`\nabla_v^2 L(g, cv) = c^{-2}\nabla_v^2 L(g, v)` — the radius chosen for :math:`v`
    sets the curvature at will. The Jacobian blocks are

    .. math:: \frac{\partial w_j}{\partial g_j} = \hat v_j, \qquad
              \frac{\partial w_j}{\partial v_j} = \frac{g_j}{\lVert v_j\rVert}
              \big(I - \hat v_j \hat v_j^\top\big), \qquad \hat v_j = v_j/\lVert v_j\rVert .

    Args:
        model: the network whose parameter layout is used (its weights are not read).

    The flat layout of :math:`\eta` follows ``model.parameters()``: for a weight tensor with
    ``m`` output units, ``m`` entries :math:`g` then the entries of :math:`v` (same shape as
    the weight); a bias (or any other parameter) is copied.

    >>> net = torch.nn.Linear(3, 2)
    >>> wn = WeightNorm(net)
    >>> theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double()
    >>> eta = wn.from_weights(theta, radius=5.0)
    >>> bool(torch.allclose(wn.to_weights(eta), theta))
    True
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        weights = {id(m.weight) for m in model.modules() if isinstance(m, WEIGHT_LAYERS)}
        self.blocks = []  # (kind, theta slice, eta slice, rows)
        t_off = e_off = 0
        for p in trainable_parameters(model):
            n = p.numel()
            if id(p) in weights:
                rows = p.shape[0]
                self.blocks.append(("weight", slice(t_off, t_off + n),
                                    slice(e_off, e_off + rows + n), rows))
                e_off += rows + n
            else:
                self.blocks.append(("copy", slice(t_off, t_off + n), slice(e_off, e_off + n), 0))
                e_off += n
            t_off += n
        self.theta_dim, self.dim = t_off, e_off

    def _split(self, eta: Tensor, block):
        _, ts, es, rows = block
        seg = eta[es]
        g, v = seg[:rows], seg[rows:].reshape(rows, -1)
        return g, v

    def to_weights(self, eta: Tensor) -> Tensor:
        """:math:`\\theta = g(\\eta)`."""
        self._check(eta, self.dim, "eta")
        parts = []
        for block in self.blocks:
            if block[0] == "copy":
                parts.append(eta[block[2]])
            else:
                g, v = self._split(eta, block)
                parts.append((g[:, None] * v / v.norm(dim=1, keepdim=True)).reshape(-1))
        return torch.cat(parts)

    def from_weights(self, theta: Tensor, radius: float = 1.0) -> Tensor:
        """Coordinates of ``theta`` with :math:`g_j = \\lVert w_j\\rVert` and
        :math:`v_j = r\\,w_j/\\lVert w_j\\rVert` (every :math:`v_j` of norm ``radius``).

        Raises:
            ValueError: a zero row (its direction is undefined) or ``radius ≤ 0``.
        """
        theta = torch.as_tensor(theta)
        self._check(theta, self.theta_dim, "theta")
        radius = _positive_float(radius, "radius")
        parts = []
        for kind, ts, _, rows in self.blocks:
            seg = theta[ts]
            if kind == "copy":
                parts.append(seg)
                continue
            w = seg.reshape(rows, -1)
            norms = w.norm(dim=1)
            if bool((norms == 0).any()):
                raise ValueError("theta: a weight row is zero; its direction is undefined")
            parts += [norms, (radius * w / norms[:, None]).reshape(-1)]
        return torch.cat(parts)

    def jvp(self, eta: Tensor, tangent: Tensor) -> Tensor:
        """:math:`J_g\\,\\dot\\eta`."""
        self._check(eta, self.dim, "eta")
        self._check(tangent, self.dim, "tangent")
        parts = []
        for block in self.blocks:
            if block[0] == "copy":
                parts.append(tangent[block[2]])
                continue
            g, v = self._split(eta, block)
            dg, dv = self._split(tangent, block)
            r = v.norm(dim=1, keepdim=True)
            vh = v / r
            dw = dg[:, None] * vh + g[:, None] / r * (dv - vh * (vh * dv).sum(1, keepdim=True))
            parts.append(dw.reshape(-1))
        return torch.cat(parts)

    def vjp(self, eta: Tensor, cotangent: Tensor) -> Tensor:
        """:math:`J_g^\\top \\bar\\theta`."""
        self._check(eta, self.dim, "eta")
        self._check(cotangent, self.theta_dim, "cotangent")
        parts = []
        for block in self.blocks:
            kind, ts, _, rows = block
            c = cotangent[ts]
            if kind == "copy":
                parts.append(c)
                continue
            g, v = self._split(eta, block)
            c = c.reshape(rows, -1)
            r = v.norm(dim=1, keepdim=True)
            vh = v / r
            proj = (vh * c).sum(1, keepdim=True)
            parts += [proj.reshape(-1), (g[:, None] / r * (c - vh * proj)).reshape(-1)]
        return torch.cat(parts)

    def jacobian(self, eta: Tensor) -> Tensor:
        """Dense :math:`J_g` (``θ-dim × η-dim``), column by column from :meth:`jvp`."""
        eye = torch.eye(self.dim, dtype=eta.dtype)
        return torch.stack([self.jvp(eta, eye[i]) for i in range(self.dim)], 1)

    @staticmethod
    def _check(x: Tensor, n: int, name: str) -> None:
        if not isinstance(x, Tensor) or x.ndim != 1 or x.numel() != n:
            raise ValueError(f"{name}: expected a flat tensor of {n} entries, got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")


class InputAffineMap:
    r"""An invertible affine map of the inputs, :math:`x' = Mx + c` (Jacobian :math:`M`).

    With :func:`input_transform` the first layer absorbs :math:`M^{-1}`, so the new network
    on :math:`x'` computes exactly what the old one computed on :math:`x`; the curvature with
    respect to the input becomes

    .. math:: \nabla^2_{x'}\ell = M^{-\top}\,\nabla^2_x\ell\,M^{-1},

    so :math:`M = \sigma I` divides every input-space eigenvalue by :math:`\sigma^2`.

    Args:
        matrix: the ``d × d`` matrix :math:`M` (invertible), or a number σ for :math:`\sigma I`
            (then ``dim`` is required).
        shift: the vector :math:`c` (default zero).
        dim: input dimension when ``matrix`` is a number.

    >>> m = InputAffineMap(2.0, dim=3)
    >>> m.apply(torch.ones(1, 3)).tolist()
    [[2.0, 2.0, 2.0]]
    """

    def __init__(self, matrix, shift: Optional[Tensor] = None, dim: Optional[int] = None):
        if isinstance(matrix, (int, float)) and not isinstance(matrix, bool):
            if not isinstance(dim, int) or dim <= 0:
                raise ValueError("dim: expected a positive integer when matrix is a number")
            sigma = float(matrix)
            if not (math.isfinite(sigma) and sigma != 0):
                raise ValueError(f"matrix: expected a non-zero finite number, got {matrix!r}")
            M = sigma * torch.eye(dim, dtype=torch.float64)
        else:
            M = torch.as_tensor(matrix, dtype=torch.float64)
            if M.ndim != 2 or M.shape[0] != M.shape[1]:
                raise ValueError(f"matrix: expected a square matrix, got shape {tuple(M.shape)}")
        d = M.shape[0]
        if not torch.isfinite(M).all():
            raise ValueError("matrix: expected finite entries")
        cond = float(torch.linalg.cond(M))
        if not math.isfinite(cond) or cond > 1e12:
            raise ValueError(f"matrix: expected an invertible matrix, its condition number "
                             f"is {cond:.3g}")
        c = torch.zeros(d, dtype=torch.float64) if shift is None else \
            torch.as_tensor(shift, dtype=torch.float64).reshape(-1)
        if c.numel() != d:
            raise ValueError(f"shift: expected {d} entries, got {c.numel()}")
        self.matrix, self.shift, self.dim = M, c, d

    def apply(self, X: Tensor) -> Tensor:
        """:math:`x' = Mx + c` for every row of ``X`` (``N × d``), in ``X``'s dtype."""
        if not isinstance(X, Tensor) or X.shape[-1] != self.dim:
            raise ValueError(f"X: expected inputs whose last dimension is {self.dim}")
        M, c = self.matrix.to(X.dtype), self.shift.to(X.dtype)
        return X @ M.T + c

    def invert(self, Xp: Tensor) -> Tensor:
        """:math:`x = M^{-1}(x' - c)`."""
        if not isinstance(Xp, Tensor) or Xp.shape[-1] != self.dim:
            raise ValueError(f"Xp: expected inputs whose last dimension is {self.dim}")
        sol = torch.linalg.solve(self.matrix, (Xp.double() - self.shift).T).T
        return sol.to(Xp.dtype)

    def jacobian(self) -> Tensor:
        """:math:`\\partial x'/\\partial x = M`."""
        return self.matrix.clone()


def input_transform(model: nn.Module, transform: InputAffineMap) -> nn.Module:
    r"""A copy of ``model`` that reads transformed inputs :math:`x' = Mx + c`.

    The first weight layer (an ``nn.Linear``, possibly after ``nn.Flatten`` or other
    parameter-free modules) becomes :math:`W' = WM^{-1}`, :math:`b' = b - WM^{-1}c`, so that
    ``new(transform.apply(x)) == model(x)`` up to rounding.

    Raises:
        ValueError: the first module with parameters is not an ``nn.Linear``, or its input
            size differs from the transform's dimension.
    """
    if not isinstance(transform, InputAffineMap):
        raise TypeError(f"transform: expected an InputAffineMap, got {type(transform).__name__}")
    new = copy.deepcopy(model)
    first = next((m for m in new.modules() if list(m.parameters(recurse=False))), None)
    if not isinstance(first, nn.Linear):
        raise ValueError("model: input_transform needs an nn.Linear as the first layer with "
                         f"parameters, got {type(first).__name__}")
    if first.in_features != transform.dim:
        raise ValueError(f"transform: dimension {transform.dim} differs from the first layer's "
                         f"{first.in_features} inputs")
    with torch.no_grad():
        W = first.weight.double()
        W_new = torch.linalg.solve(transform.matrix.T, W.T).T  # W M^{-1}
        first.weight.copy_(W_new.to(first.weight.dtype))
        shift = W_new @ transform.shift
        if first.bias is not None:
            first.bias.copy_((first.bias.double() - shift).to(first.bias.dtype))
        elif bool((transform.shift != 0).any()):
            raise ValueError("transform: a non-zero shift needs a first layer with a bias")
    return new


# ----------------------------------------------------------------------------------------------
# Hessians in new coordinates
# ----------------------------------------------------------------------------------------------

def reparametrized_operator(model: nn.Module, loss_fn, data, reparam, eta: Tensor,
                            operator=None, exact: bool = False, eval_mode: Optional[bool] = None):
    r"""The Hessian of :math:`\tilde L(\eta) = L(g(\eta))` as a SciPy ``LinearOperator``.

    By the chain rule

    .. math:: \nabla^2_\eta \tilde L = J_g^\top\,\nabla^2_\theta L\,J_g
              + \sum_i \partial_i L\,\nabla^2 g_i .

    With ``exact=False`` (default) the operator is the first term, :math:`J_g^\top H J_g`,
    built from the map's ``jvp``/``vjp`` and a :class:`~flatlib.curvature.HessianOperator`;
    it is the Hessian at a critical point. With ``exact=True`` the products are exact
    double-backward products of :math:`\tilde L` (float64), including the second term, which
    matters where the gradient is not small.

    Args:
        model, loss_fn, data: the network at :math:`\theta = g(\eta)`, a mean-reduced loss and the
            data (as for :class:`flatlib.curvature.HessianOperator`).
        reparam: an object with ``to_weights(eta)``, ``jvp(eta, v)`` and ``vjp(eta, w)``
            (:class:`ExponentialMap`, :class:`WeightNorm`).
        eta: the new coordinates of the model's parameters.
        operator: an existing :class:`~flatlib.curvature.HessianOperator` of the model
            (``exact=False`` only).
        exact: include the gradient term (see above).
        eval_mode: see :func:`flatlib._validation.evaluation`.

    Returns:
        ``(linear_operator, hessian_operator)``; the second is ``None`` when ``exact=True``.

    Raises:
        ValueError: ``g(eta)`` is not the model's parameter vector (relative error above 1e-5).
    """
    from scipy.sparse.linalg import LinearOperator

    from .curvature import HessianOperator, flat_parameters

    eta = torch.as_tensor(eta, dtype=torch.float64).detach()
    theta = flat_parameters(model).double()
    mapped = reparam.to_weights(eta)
    if mapped.shape != theta.shape or float((mapped - theta).norm()) > 1e-5 * float(theta.norm()):
        raise ValueError("eta: reparam.to_weights(eta) is not the model's parameter vector")
    n = eta.numel()
    if exact:
        product = _exact_reparametrized_hvp(model, loss_fn, data, reparam, eta, eval_mode)

        def matvec(x):
            v = torch.as_tensor(np.asarray(x).reshape(-1), dtype=torch.float64)
            return product(v).numpy()

        return LinearOperator((n, n), matvec=matvec, dtype=np.float64), None

    H = operator or HessianOperator(model, loss_fn, data, dtype=torch.float64, eval_mode=eval_mode)

    def matvec(x):
        v = torch.as_tensor(np.asarray(x).reshape(-1), dtype=torch.float64)
        Hv = H @ reparam.jvp(eta, v).to(H.dtype)
        return reparam.vjp(eta, Hv.double()).numpy()

    return LinearOperator((n, n), matvec=matvec, dtype=np.float64), H


def _exact_reparametrized_hvp(model, loss_fn, data, reparam, eta, eval_mode):
    """Products with the exact Hessian of η ↦ L(g(η)), from one retained gradient graph."""
    from torch.func import functional_call

    from .curvature import unflatten_parameters

    check_reduction(loss_fn)
    batches = materialize(data)
    N = num_samples(batches)
    with evaluation(model, eval_mode):
        pass  # refuses BatchNorm/Dropout in train mode unless eval_mode=True
    net = copy.deepcopy(model).double().eval()
    frozen = {k: p.detach() for k, p in net.named_parameters() if not p.requires_grad}
    buffers = {k: v.detach() for k, v in net.named_buffers()}
    point = eta.clone().requires_grad_(True)
    with quiet_torch_func():
        params = unflatten_parameters(net, reparam.to_weights(point))
        total = 0.0
        for X, y in batches:
            X = X.double() if X.is_floating_point() else X
            out = functional_call(net, {**params, **frozen, **buffers}, (X,))
            check_labels(out, y, loss_fn)
            total = total + loss_fn(out, y) * (X.shape[0] / N)
        (gradient,) = torch.autograd.grad(total, point, create_graph=True)

    def product(v: Tensor) -> Tensor:
        (hv,) = torch.autograd.grad(gradient, point, v, retain_graph=True)
        return hv.detach()

    return product


def reparametrized_top_eigenvalues(model: nn.Module, loss_fn, data, reparam, eta: Tensor,
                                   k: int = 1, tol: float = 1e-6, seed: int = 0,
                                   operator=None, exact: bool = False,
                                   eval_mode: Optional[bool] = None) -> np.ndarray:
    r"""The ``k`` largest eigenvalues of the Hessian in the coordinates :math:`\eta`
    (:func:`reparametrized_operator`; Lanczos, SciPy's ``eigsh``), descending.

    Args:
        k: number of eigenvalues (``1 ≤ k < dim η``).
        tol: ARPACK's relative tolerance.
        seed: seeds the start vector.
        exact: include the gradient term (default: :math:`J_g^\top H J_g`).
        Others: as for :func:`reparametrized_operator`.
    """
    from scipy.sparse.linalg import eigsh

    A, _ = reparametrized_operator(model, loss_fn, data, reparam, eta, operator, exact, eval_mode)
    if not isinstance(k, int) or not 1 <= k < A.shape[0]:
        raise ValueError(f"k: expected an integer in [1, {A.shape[0] - 1}], got {k!r}")
    v0 = np.random.default_rng(seed).standard_normal(A.shape[0])
    vals = eigsh(A, k=k, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    return np.sort(vals)[::-1]


def block_top_eigenvalues(model: nn.Module, loss_fn, data, block: slice, k: int = 1,
                          tol: float = 1e-6, seed: int = 0, return_eigenvectors: bool = False,
                          operator=None):
    r"""The ``k`` largest eigenvalues of a diagonal block :math:`H_{bb}` of the Hessian.

    :math:`H_{bb}` is the Hessian with respect to the parameters in ``block`` (a slice of the
    flat vector, e.g. from :func:`parameter_slices`), the others held fixed; α-scale multiplies
    the block of layer :math:`k` by :math:`\alpha_k^{-2}`. Lanczos (SciPy's ``eigsh``) on
    products :math:`H_{bb}x = (H\,[0; x; 0])_b`.

    Args:
        model, loss_fn, data: as for :class:`flatlib.curvature.HessianOperator`.
        block: a ``slice`` of the flat parameter vector.
        k: number of eigenvalues (``1 ≤ k < block size``).
        tol: ARPACK's relative tolerance.
        seed: seeds the start vector.
        return_eigenvectors: also return the unit eigenvectors (``block size × k``, NumPy).
        operator: an existing :class:`~flatlib.curvature.HessianOperator` of the model.

    Returns:
        The eigenvalues, descending (and the eigenvectors as columns).
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    from .curvature import HessianOperator

    H = operator or HessianOperator(model, loss_fn, data)
    P = H.shape[0]
    if not isinstance(block, slice) or block.step not in (None, 1):
        raise ValueError(f"block: expected a contiguous slice, got {block!r}")
    start, stop, _ = block.indices(P)
    n = stop - start
    if not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k: expected an integer in [1, {n - 1}] for a block of {n} "
                         f"parameters, got {k!r}")

    def matvec(x):
        v = torch.zeros(P, dtype=H.dtype, device=H.device)
        v[start:stop] = torch.as_tensor(np.asarray(x).reshape(-1), dtype=H.dtype)
        return (H @ v)[start:stop].double().cpu().numpy()

    v0 = np.random.default_rng(seed).standard_normal(n)
    A = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    vals, vecs = eigsh(A, k=k, which="LA", tol=tol, v0=v0)
    order = np.argsort(vals)[::-1]
    return (vals[order], vecs[:, order]) if return_eigenvectors else vals[order]


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
        ValueError: an unknown ``name``; Dropout in the model with ``batch_statistics``.
    """
    from torch.func import functional_call

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
            check_labels(outputs(start), y, loss_fn)
        return torch.autograd.functional.hessian(lambda w: loss_fn(outputs(w), y), start)
