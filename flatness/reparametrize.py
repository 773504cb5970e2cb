r"""Reparametrizations :math:`\theta = g(\eta)` and the Hessian in new coordinates (Dinh et al. 2017).

Each map comes with its Jacobian :math:`J_g`: at a critical point the Hessian in the new
coordinates is :math:`J_g^\top \nabla^2_\theta L\, J_g` (:func:`reparametrized_top_eigenvalues`,
which can also include the gradient term exactly). :class:`RadialMap` is the one-dimensional
map of Dinh et al.'s Figure 5, :class:`ExponentialMap` and :class:`WeightNorm` act on a
network's weights, :class:`InputAffineMap` with :func:`input_transform` changes the input space.

Every function returns new objects; none changes the model it is given.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .checks import check_reduction
from .krylov import lanczos
from .operators import FunctionOperator, HessianOperator, PullbackOperator
from .params import ParameterLayout, flat_parameters, mean_loss
from .symmetries import WEIGHT_LAYERS, _positive_float

__all__ = ["RadialMap", "ExponentialMap", "WeightNorm", "InputAffineMap", "input_transform",
           "reparametrized_top_eigenvalues", "reparametrized_operator"]


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
    >>> theta = flat_parameters(net).double()
    >>> eta = wn.from_weights(theta, radius=5.0)
    >>> bool(torch.allclose(wn.to_weights(eta), theta))
    True
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        weights = {id(m.weight) for m in model.modules() if isinstance(m, WEIGHT_LAYERS)}
        params = dict(model.named_parameters())
        layout = ParameterLayout(model)
        self.blocks = []  # (kind, theta slice, eta slice, rows)
        e_off = 0
        for name, shape in zip(layout.names, layout.shapes):
            ts, n = layout.slices[name], shape.numel()
            if id(params[name]) in weights:
                rows = shape[0]
                self.blocks.append(("weight", ts, slice(e_off, e_off + rows + n), rows))
                e_off += rows + n
            else:
                self.blocks.append(("copy", ts, slice(e_off, e_off + n), 0))
                e_off += n
        self.theta_dim, self.dim = layout.numel, e_off

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
        self._check_pair(eta, tangent, self.dim, "tangent")
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
        self._check_pair(eta, cotangent, self.theta_dim, "cotangent")
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

    def _check_pair(self, eta: Tensor, x: Tensor, n: int, name: str) -> None:
        """Check ``eta`` (``dim`` entries) and ``x`` (``n`` entries, named ``name``)."""
        self._check(eta, self.dim, "eta")
        self._check(x, n, name)


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


def reparametrized_top_eigenvalues(model: nn.Module, loss_fn, data, reparam, eta: Tensor,
                                   k: int = 1, tol: float = 1e-6, seed: int = 0,
                                   operator=None, exact: bool = False,
                                   eval_mode: Optional[bool] = None,
                                   max_products: Optional[int] = None,
                                   return_result: bool = False):
    r"""The ``k`` largest eigenvalues of the Hessian in the coordinates :math:`\eta`
    (:func:`reparametrized_operator`, solved by :func:`flatness.krylov.lanczos`), descending.

    Args:
        k: number of eigenvalues (``1 ≤ k < dim η``).
        tol: relative accuracy of the eigenvalues.
        seed: seeds the start vector.
        exact: include the gradient term (default: :math:`J_g^\top H J_g`).
        max_products: product budget (default ``min(dim η, max(200, 20 k))``).
        return_result: return the :class:`~flatness.krylov.EigenResult` itself.
        Others: as for :func:`reparametrized_operator`.

    Returns:
        A NumPy array of the eigenvalues, or the :class:`~flatness.krylov.EigenResult`. A
        result that did not converge within the budget warns (``RuntimeWarning``).

    Raises:
        ValueError: ``k`` out of range, and every error of :func:`reparametrized_operator`.
    """
    A, _ = reparametrized_operator(model, loss_fn, data, reparam, eta, operator, exact, eval_mode)
    n = A.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < n:
        raise ValueError(f"k: expected an integer in [1, {n - 1}], got {k!r}")
    budget = min(n, max(200, 20 * k)) if max_products is None else max_products
    res = lanczos(A, k=k, tol=tol, seed=seed, max_products=budget)
    if not res.converged:
        warnings.warn(f"the eigenvalues did not converge within {res.products} products "
                      f"(error estimates {res.error_estimates}); raise max_products",
                      RuntimeWarning, stacklevel=2)
    return res if return_result else res.eigenvalues


def _exact_reparametrized_hvp(model, loss_fn, data, reparam, eta, eval_mode):
    """Products with the exact Hessian of η ↦ L(g(η)), from one retained gradient graph
    (float64, :func:`flatness.params.mean_loss`; works inside ``torch.no_grad()``)."""
    check_reduction(loss_fn)
    with torch.enable_grad():
        point = eta.detach().clone().to(torch.float64).requires_grad_(True)
        theta = reparam.to_weights(point)
        total = mean_loss(model, loss_fn, data, theta.to(torch.float64), eval_mode=eval_mode)
        (gradient,) = torch.autograd.grad(total, point, create_graph=True)

    def product(v: Tensor) -> Tensor:
        with torch.enable_grad():
            (hv,) = torch.autograd.grad(gradient, point, v.to(point), retain_graph=True)
        return hv.detach()

    return product


def reparametrized_operator(model: nn.Module, loss_fn, data, reparam, eta: Tensor,
                            operator=None, exact: bool = False, eval_mode: Optional[bool] = None):
    r"""The Hessian of :math:`\tilde L(\eta) = L(g(\eta))` as a symmetric linear operator.

    By the chain rule

    .. math:: \nabla^2_\eta \tilde L = J_g^\top\,\nabla^2_\theta L\,J_g
              + \sum_i \partial_i L\,\nabla^2 g_i .

    With ``exact=False`` (default) the operator is the first term, :math:`J_g^\top H J_g`
    (a :class:`~flatness.operators.PullbackOperator` of the map's ``jvp``/``vjp`` and a
    :class:`~flatness.operators.HessianOperator`);
    it is the Hessian at a critical point. With ``exact=True`` the products are exact
    double-backward products of :math:`\tilde L` (float64), including the second term, which
    matters where the gradient is not small.

    Args:
        model, loss_fn, data: the network at :math:`\theta = g(\eta)`, a mean-reduced loss and the
            data (as for :class:`flatness.operators.HessianOperator`).
        reparam: an object with ``to_weights(eta)``, ``jvp(eta, v)`` and ``vjp(eta, w)``
            (:class:`ExponentialMap`, :class:`WeightNorm`).
        eta: the new coordinates of the model's parameters.
        operator: an existing :class:`~flatness.operators.HessianOperator` of the model
            (``exact=False`` only).
        exact: include the gradient term (see above).
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        ``(operator, hessian_operator)``: a :class:`~flatness.operators.SymmetricOperator`
        (``@`` on tensors and arrays, ``.to_scipy()``) and the Hessian operator, ``None`` when
        ``exact=True``.

    Raises:
        ValueError: ``g(eta)`` is not the model's parameter vector (relative error above 1e-5).
    """
    eta = torch.as_tensor(eta, dtype=torch.float64).detach()
    theta = flat_parameters(model).double()
    mapped = reparam.to_weights(eta)
    if mapped.shape != theta.shape or float((mapped - theta).norm()) > 1e-5 * float(theta.norm()):
        raise ValueError("eta: reparam.to_weights(eta) is not the model's parameter vector")
    n = eta.numel()
    if exact:
        product = _exact_reparametrized_hvp(model, loss_fn, data, reparam, eta, eval_mode)
        return FunctionOperator(product, n), None

    H = operator or HessianOperator(model, loss_fn, data, dtype=torch.float64, eval_mode=eval_mode)
    return PullbackOperator(H, lambda v: reparam.jvp(eta, v), lambda w: reparam.vjp(eta, w),
                            n), H
