r"""Flatness measures by name, each declaring the symmetries it is invariant to.

:data:`MEASURES` maps a name to a :class:`Measure`: a callable
``measure(model, loss_fn, data, seed=0) -> float`` with an attribute ``invariant_to``, a subset
of :data:`INVARIANCES`. The three symmetries are reparametrizations that leave the function a
network computes unchanged:

* ``"alpha_scale"`` — Dinh et al.'s (2017) α-scale of whole layers of a rectified chain,
  :math:`W_k \mapsto \alpha_k W_k`, :math:`b_k \mapsto (\prod_{j\le k}\alpha_j) b_k` with
  :math:`\prod_k\alpha_k = 1` (:func:`flatness.symmetries.alpha_scale`).
* ``"neuron_scale"`` — per-neuron rescaling of ReLU units: hidden unit :math:`j` of layer
  :math:`k` gets its incoming weights and bias multiplied by :math:`c_j > 0` and its outgoing
  weights divided by :math:`c_j`; :math:`\mathrm{relu}(cz) = c\,\mathrm{relu}(z)` keeps the
  function (:func:`neuron_scale`). α-scale is the special case of equal factors in a layer.
* ``"weight_norm"`` — the radial direction of weight normalization (Salimans & Kingma 2016):
  in a layer written as :math:`w = g\,v/\lVert v\rVert` (:func:`weight_normalize`), every row
  :math:`v_j \mapsto c_j v_j` leaves the function unchanged (:func:`radial_scale`). The measure
  is taken of the weight-normalized network, whose parameters are :math:`(g, v, b)`.

All three are positive *diagonal* linear maps :math:`\theta \mapsto D\theta` of the parameters
with :math:`L(D\theta) = L(\theta)`, so :math:`\nabla^2 L(D\theta) = D^{-1}\nabla^2L(\theta)D^{-1}`.
A measure built from elementwise-normalized perturbations :math:`\delta = |\theta|\odot z`
(adaptive sharpness, magnitude-aware PAC-Bayes) or from the function alone (the Fisher–Rao norm
:math:`\theta^\top F\theta`, the spectrum of :math:`F^{-1}H`) is invariant to every such map; the
Hessian's spectral norm, trace, Frobenius norm and top-k log-determinant, and Keskar's box
(whose sides :math:`\epsilon(|\theta_i| + 1)` are not proportional to :math:`|\theta_i|`), are
not. Tests (``tests/test_measures.py``) check every declaration numerically.

Measures of other modules are registered as those modules appear (see :data:`MEASURES`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .adaptive import adaptive_sharpness
from .checks import check_positive
from .curvature import hessian_frobenius, hessian_trace, top_eigenvalues
from .operators import HessianOperator
from .fisher_rao import fisher_rao_norm
from .landscape import filter_normalized_sharpness
from .metric_hessian import fisher_hessian_eigenvalues
from .pacbayes import pac_bayes_flatness
from .relative_flatness import relative_flatness
from .sharpness import keskar_sharpness
from .symmetries import alpha_scale, weight_layers
from .training import _progress_enabled, _tqdm

__all__ = ["INVARIANCES", "Measure", "MeasureResult", "MEASURES", "register", "neuron_scale",
           "weight_normalize", "radial_scale", "random_transform", "TRANSFORMS",
           "InvarianceCheck", "invariance_check", "invariance_checks"]

#: The symmetries a measure may declare (see the module docstring).
INVARIANCES = ("alpha_scale", "neuron_scale", "weight_norm")


@dataclass(frozen=True)
class MeasureResult:
    """One evaluation of a :class:`Measure` (from :meth:`Measure.evaluate`).

    Attributes:
        value: the measure's value.
        hvps: Hessian-vector products spent (0 for measures that use none; ``None`` when the
            function that computes it does not report them).
        seconds: wall-clock time.
        truncated: a note when a product budget cut the computation short, else ``""``.
    """

    value: float
    hvps: Optional[int]
    seconds: float
    truncated: str = ""


@dataclass(frozen=True)
class Measure:
    r"""A flatness measure: a function of a trained network, its loss and data.

    Call it as ``measure(model, loss_fn, data, seed=0) -> float``. ``fn`` is called as
    ``fn(model, loss_fn, data, seed=seed, max_hvps=m, **options)`` and returns the value, or
    ``(value, hvps)`` or ``(value, hvps, note)`` when it counts its Hessian-vector products;
    ``max_hvps`` is ``None`` (the measure's own default) or a cap from a report's budget.

    Attributes:
        name: the registry key.
        fn: the function (see above).
        invariant_to: the symmetries of :data:`INVARIANCES` that leave the value unchanged.
        label: a short display name.
        description: one sentence of what it computes, with its defaults.
        reference: the paper that defined it.
        uses_hessian: whether it spends Hessian-vector products (a report's product budget
            truncates only these).
        expensive: skipped first when a report's time budget runs short.
        options: keyword arguments passed to ``fn``.
        higher_is_sharper: ``True`` when a larger value means a sharper minimum (``False`` for
            measures of flatness such as PAC-Bayes flatness' :math:`\sigma`).
        max_params: the largest number of trainable parameters the measure handles (dense
            methods), or ``None``; see :meth:`applicable`.
    """

    name: str
    fn: Callable
    invariant_to: FrozenSet[str]
    label: str
    description: str
    reference: str
    uses_hessian: bool = False
    expensive: bool = False
    options: dict = field(default_factory=dict)
    higher_is_sharper: bool = True
    max_params: Optional[int] = None

    def __post_init__(self):
        bad = set(self.invariant_to) - set(INVARIANCES)
        if bad:
            raise ValueError(f"invariant_to: unknown symmetries {sorted(bad)}; expected a subset "
                             f"of {INVARIANCES}")
        object.__setattr__(self, "invariant_to", frozenset(self.invariant_to))

    def evaluate(self, model: nn.Module, loss_fn, data, seed: int = 0,
                 max_hvps: Optional[int] = None) -> MeasureResult:
        """The value with its cost.

        Args:
            model, loss_fn, data: the network (not changed), a mean-reduced loss, the data.
            seed: seeds every random choice of the measure.
            max_hvps: cap on Hessian-vector products (``None``: the measure's default).

        Returns:
            A :class:`MeasureResult`.

        Raises:
            ValueError: ``max_hvps`` not a positive integer, and the errors of ``fn``.
        """
        if max_hvps is not None:
            check_positive(max_hvps, "max_hvps", integer=True)
        start = time.perf_counter()
        out = self.fn(model, loss_fn, data, seed=seed, max_hvps=max_hvps, **self.options)
        seconds = time.perf_counter() - start
        if isinstance(out, tuple):
            value, hvps, note = (tuple(out) + ("",))[:3]
        else:
            value, hvps, note = out, (0 if not self.uses_hessian else None), ""
        return MeasureResult(float(value), None if hvps is None else int(hvps), seconds, note)

    def __call__(self, model: nn.Module, loss_fn, data, seed: int = 0) -> float:
        """The measure's value (see :meth:`evaluate`)."""
        return self.evaluate(model, loss_fn, data, seed=seed).value

    def applicable(self, model: nn.Module) -> bool:
        """Whether the model is small enough for the measure (see ``max_params``)."""
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return self.max_params is None or n <= self.max_params

    def with_options(self, **options) -> "Measure":
        """A copy with some options of ``fn`` changed."""
        return replace(self, options={**self.options, **options})

    def invariance_flags(self) -> Dict[str, bool]:
        """``{symmetry: declared invariant}`` for every symmetry of :data:`INVARIANCES`."""
        return {s: s in self.invariant_to for s in INVARIANCES}


# --------------------------------------------------------------------------------------------
# the existing measures of the library
# --------------------------------------------------------------------------------------------

def _operator(model, loss_fn, data):
    return HessianOperator(model, loss_fn, data)


def _lambda_max(model, loss_fn, data, seed=0, max_hvps=None, tol=1e-4, maxiter=200):
    H = _operator(model, loss_fn, data)
    cap = maxiter if max_hvps is None else min(maxiter, max_hvps)
    res = top_eigenvalues(model, loss_fn, data, k=1, tol=tol, seed=seed, maxiter=cap,
                          operator=H)
    note = "" if res.converged else f"not converged within {cap} products"
    return float(res.eigenvalues[0]), H.products, note


def _trace(model, loss_fn, data, seed=0, max_hvps=None, num_matvecs=30):
    H = _operator(model, loss_fn, data)
    m = num_matvecs if max_hvps is None else min(num_matvecs, max_hvps)
    value = hessian_trace(model, loss_fn, data, num_matvecs=max(2, m), seed=seed, operator=H)
    return value, H.products, "" if m >= num_matvecs else f"{m} of {num_matvecs} products"


def _frobenius(model, loss_fn, data, seed=0, max_hvps=None, num_matvecs=30):
    H = _operator(model, loss_fn, data)
    m = num_matvecs if max_hvps is None else min(num_matvecs, max_hvps)
    value = hessian_frobenius(model, loss_fn, data, num_matvecs=m, seed=seed, operator=H)
    return value, H.products, "" if m >= num_matvecs else f"{m} of {num_matvecs} products"


def _log_volume(model, loss_fn, data, seed=0, max_hvps=None, k=10, tol=1e-2, maxiter=120):
    r""":math:`\sum_{i\le k}\log\lambda_i` of the top-``k`` eigenvalues (those ``≤ 0`` are
    clipped to ``1e-12``: the log-volume of the ellipsoid of the quadratic model restricted to
    the ``k`` sharpest directions is :math:`-\tfrac12` of it, up to a constant)."""
    H = _operator(model, loss_fn, data)
    cap = maxiter if max_hvps is None else min(maxiter, max_hvps)
    if cap <= k:
        return math.nan, 0, f"skipped: needs more than k = {k} products"
    res = top_eigenvalues(model, loss_fn, data, k=k, tol=tol, seed=seed, maxiter=cap,
                          operator=H)
    value = float(np.log(np.clip(res.eigenvalues, 1e-12, None)).sum())
    return value, H.products, "" if res.converged else f"not converged within {cap} products"


def _keskar(model, loss_fn, data, seed=0, max_hvps=None, eps=1e-3, subspace_dim=None,
            maxiter=10):
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dim = None if subspace_dim is None else min(subspace_dim, n)
    return keskar_sharpness(model, loss_fn, data, eps=eps, subspace_dim=dim, maxiter=maxiter,
                            seed=seed), 0


def _adaptive(model, loss_fn, data, seed=0, max_hvps=None, **options):
    return adaptive_sharpness(model, loss_fn, data, seed=seed, **options), 0


def _pac_bayes(model, loss_fn, data, seed=0, max_hvps=None, **options):
    return pac_bayes_flatness(model, loss_fn, data, seed=seed, **options), 0


def _relative(model, loss_fn, data, seed=0, max_hvps=None, **options):
    return relative_flatness(model, loss_fn, data, **options), 0


def _fisher_rao(model, loss_fn, data, seed=0, max_hvps=None, **options):
    return fisher_rao_norm(model, data, loss_fn, **options), 0


def _filter_normalized(model, loss_fn, data, seed=0, max_hvps=None, **options):
    return filter_normalized_sharpness(model, loss_fn, data, seed=seed, **options), 0


def _fisher_hessian(model, loss_fn, data, seed=0, max_hvps=None, **options):
    return float(fisher_hessian_eigenvalues(model, loss_fn, data, k=1, **options)[0]), None


#: The registry: name → :class:`Measure`. Entries of modules that are not present yet are
#: added by :func:`_register_optional` at import time of this module (no side effects beyond
#: this dictionary).
MEASURES: Dict[str, Measure] = {}


def register(measure: Measure, overwrite: bool = False) -> Measure:
    """Add a measure to :data:`MEASURES`.

    Raises:
        TypeError: not a :class:`Measure`.
        ValueError: the name is taken and ``overwrite`` is false.
    """
    if not isinstance(measure, Measure):
        raise TypeError(f"measure: expected a Measure, got {type(measure).__name__}")
    if measure.name in MEASURES and not overwrite:
        raise ValueError(f"measure: the name {measure.name!r} is already registered")
    MEASURES[measure.name] = measure
    return measure


for _m in (
    Measure("lambda_max", _lambda_max, frozenset(), "λ_max",
            "largest Hessian eigenvalue (Lanczos, relative accuracy 1e-4)",
            "Keskar et al. (2017); Yao et al. (2018)", uses_hessian=True),
    Measure("trace", _trace, frozenset(), "Tr H",
            "Hessian trace (Lanczos basis + Hutchinson probes, 30 products)",
            "Hutchinson (1989); Yao et al. (2020)", uses_hessian=True),
    Measure("frobenius", _frobenius, frozenset(), "‖H‖_F",
            "Hessian Frobenius norm (E‖Hv‖² with 30 Rademacher probes)",
            "Wu, Zhu & E (2017)", uses_hessian=True),
    Measure("log_volume", _log_volume, frozenset(), "log ∏ top-10 λ",
            "sum of the logs of the 10 largest Hessian eigenvalues",
            "Dinh et al. (2017) on volume; the seed deck's product of eigenvalues",
            uses_hessian=True, expensive=True),
    Measure("keskar", _keskar, frozenset(), "ε-sharpness (full)",
            "Keskar's ε-sharpness, ε = 1e-3, full space, 10 L-BFGS-B steps",
            "Keskar et al. (2017), Metric 2.1"),
    Measure("keskar_subspace", _keskar, frozenset(), "ε-sharpness (p = 100)",
            "Keskar's ε-sharpness, ε = 1e-3, random 100-dimensional subspace",
            "Keskar et al. (2017), Metric 2.1", options={"subspace_dim": 100}),
    Measure("adaptive_worst_l2", _adaptive, frozenset(INVARIANCES), "adaptive (worst, ℓ2)",
            "max of L(θ + |θ|⊙z) − L(θ) over ‖z‖₂ ≤ 0.05, 10 steps of projected gradient ascent",
            "Kwon et al. (2021); Andriushchenko et al. (2023)",
            options={"rho": 0.05, "norm": "2", "kind": "worst"}),
    Measure("adaptive_worst_linf", _adaptive, frozenset(INVARIANCES), "adaptive (worst, ℓ∞)",
            "max of L(θ + |θ|⊙z) − L(θ) over ‖z‖∞ ≤ 0.002, 10 steps of projected gradient ascent",
            "Andriushchenko et al. (2023)", options={"rho": 0.002, "norm": "inf", "kind": "worst"}),
    Measure("adaptive_average", _adaptive, frozenset(INVARIANCES), "adaptive (average)",
            "mean of L(θ + |θ|⊙z) − L(θ) over 20 draws z ~ N(0, 0.05² I)",
            "Andriushchenko et al. (2023)", options={"rho": 0.05, "norm": "2", "kind": "average"}),
    Measure("adaptive_eta", _adaptive, frozenset(), "adaptive (worst, ℓ∞, η = 0.1)",
            "as adaptive (worst, ℓ∞) with the scale |θ| + η, η = 0.1 (ASAM's offset)",
            "Kwon et al. (2021)", options={"rho": 0.002, "norm": "inf", "kind": "worst",
                                           "eta": 0.1}),
    Measure("pac_bayes", _pac_bayes, frozenset(), "PAC-Bayes flatness",
            "1/σ² for the largest σ of isotropic Gaussian noise N(0, σ²I) that raises the training "
            "error by at most 0.1 (bisection, 10 draws)", "Jiang et al. (2020), pacbayes.flatness",
            expensive=True, options={"magnitude_aware": False}),
    Measure("pac_bayes_mag", _pac_bayes, frozenset(INVARIANCES), "mag.-aware PAC-Bayes",
            "as PAC-Bayes flatness with noise N(0, σ²θᵢ²); Jiang et al. add a floor ε = 1e-3 to the "
            "variance, which breaks the invariance for parameters below ε/σ, so ε = 0 here",
            "Jiang et al. (2020), pacbayes.mag.flatness", expensive=True,
            options={"magnitude_aware": True, "epsilon": 0.0}),
    Measure("relative_flatness", _relative, frozenset({"alpha_scale", "weight_norm"}),
            "relative flatness", "Σ_{s,s'} ⟨w_s, w_s'⟩ Tr H_{s,s'} of the last linear layer "
            "(the trace version, exact)", "Petzka et al. (2021), κ^φ_Tr"),
    Measure("fisher_rao", _fisher_rao, frozenset(INVARIANCES), "Fisher–Rao norm",
            "θᵀFθ = E⟨θ, ∇ℓ⟩² with the empirical Fisher of the training data",
            "Liang et al. (2019)"),
    Measure("filter_normalized", _filter_normalized, frozenset({"alpha_scale", "weight_norm"}),
            "filter-normalized sharpness",
            "max of L(θ + t d) − L(θ) for 21 points t in [−0.1, 0.1] along a random direction "
            "whose filters have the norms of θ's; biases (1-D parameters) do not move",
            "Li et al. (2018)", options={"radius": 0.1, "num_points": 21}),
    Measure("fisher_hessian", _fisher_hessian, frozenset(INVARIANCES), "λ_max(M⁻¹H)",
            "largest eigenvalue of M⁻¹H with M = G + 1e-3·diag(G), G the Gauss–Newton matrix "
            "(dense; networks of at most 2,000 parameters)",
            "after Kristiadi, Dangel & Hennig (2023)", expensive=True, max_params=2000),
):
    register(_m)
del _m


# --------------------------------------------------------------------------------------------
# the symmetries as transforms
# --------------------------------------------------------------------------------------------

def _factors(values, n: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if t.numel() != n:
        raise ValueError(f"{name}: expected {n} factors, got {t.numel()}")
    if not bool(torch.all(torch.isfinite(t) & (t > 0))):
        raise ValueError(f"{name}: expected positive finite factors")
    return t


def neuron_scale(model: nn.Module, factors: Sequence) -> nn.Module:
    r"""Per-neuron rescaling of the hidden units of a rectified chain (a new network).

    For each hidden weight layer :math:`k` (all but the last) with factors :math:`c \in
    \mathbb{R}^{d_k}_{>0}`: row (output channel) :math:`j` of :math:`W_k` and :math:`b_{k,j}`
    are multiplied by :math:`c_j`, column (input channel) :math:`j` of :math:`W_{k+1}` is
    divided by :math:`c_j`. Since :math:`\mathrm{relu}(c z) = c\,\mathrm{relu}(z)`, the function
    is unchanged (up to rounding).

    Args:
        model: a chain accepted by :func:`flatness.symmetries.weight_layers` whose consecutive
            weight layers connect channel to channel (no flatten between a convolution and a
            linear layer); not changed.
        factors: one sequence of positive factors per hidden layer (its output channels).

    Returns:
        A deep copy with rescaled parameters.

    Raises:
        ValueError: a model :func:`weight_layers` refuses, a wrong number of factor vectors or
            of factors, factors not positive, or consecutive layers whose channels do not match.

    >>> from flatness.models import mlp
    >>> net = mlp(3, (4,), 2)
    >>> x = torch.randn(5, 3)
    >>> bool(torch.allclose(neuron_scale(net, [[2.0, 0.5, 4.0, 1.0]])(x), net(x), atol=1e-6))
    True
    """
    names = [n for n, _ in weight_layers(model)]
    if len(factors) != len(names) - 1:
        raise ValueError(f"factors: expected {len(names) - 1} factor vectors (one per hidden "
                         f"layer), got {len(factors)}")
    new = copy.deepcopy(model)
    layers = dict(new.named_modules())
    with torch.no_grad():
        for i, c in enumerate(factors):
            a, b = layers[names[i]], layers[names[i + 1]]
            c = _factors(c, a.weight.shape[0], f"factors[{i}]")
            if b.weight.shape[1] != a.weight.shape[0]:
                raise ValueError(f"model: layer {names[i + 1]} takes {b.weight.shape[1]} input "
                                 f"channels but {names[i]} gives {a.weight.shape[0]}; "
                                 "neuron_scale needs channel-to-channel connections")
            shape_a = (-1,) + (1,) * (a.weight.dim() - 1)
            shape_b = (1, -1) + (1,) * (b.weight.dim() - 2)
            a.weight.mul_(c.to(a.weight).view(shape_a))
            if a.bias is not None:
                a.bias.mul_(c.to(a.bias))
            b.weight.div_(c.to(b.weight).view(shape_b))
    return new


def weight_normalize(model: nn.Module) -> nn.Module:
    r"""A copy of ``model`` with every ``nn.Linear``/``nn.ConvNd`` weight written as
    :math:`w_j = g_j\,v_j/\lVert v_j\rVert` per output row :math:`j`
    (``torch.nn.utils.parametrizations.weight_norm``, ``dim=0``), initialized to the same
    weights (:math:`g_j = \lVert w_j\rVert`, :math:`v_j = w_j`): the same function, with the
    parameters :math:`(g, v, b)`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: it has no weight layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    from torch.nn.utils.parametrizations import weight_norm

    new = copy.deepcopy(model)
    layers = [m for m in new.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if not layers:
        raise ValueError("model: it has no Linear or Conv layer to weight-normalize")
    for m in layers:
        weight_norm(m, dim=0)
    return new


def radial_scale(model: nn.Module, factors: Sequence) -> nn.Module:
    r"""Scale the direction parameters :math:`v_j \mapsto c_j v_j` of a weight-normalized
    network (from :func:`weight_normalize`); the function does not change.

    Args:
        model: a weight-normalized network; not changed.
        factors: one sequence of positive factors per weight-normalized layer (its rows).

    Raises:
        ValueError: no weight-normalized layer, a wrong number of factors, factors not positive.
    """
    new = copy.deepcopy(model)
    vs = [p for n, p in new.named_parameters() if n.endswith("parametrizations.weight.original1")]
    if not vs:
        raise ValueError("model: no weight-normalized layer (use weight_normalize first)")
    if len(factors) != len(vs):
        raise ValueError(f"factors: expected {len(vs)} factor vectors, got {len(factors)}")
    with torch.no_grad():
        for i, (v, c) in enumerate(zip(vs, factors)):
            c = _factors(c, v.shape[0], f"factors[{i}]")
            v.mul_(c.to(v).view((-1,) + (1,) * (v.dim() - 1)))
    return new


def _log_uniform(rng: np.random.Generator, n, low: float, high: float) -> np.ndarray:
    return np.exp(rng.uniform(math.log(low), math.log(high), n))


def random_transform(model: nn.Module, symmetry: str, seed: int = 0, low: float = 1 / 25,
                     high: float = 25.0) -> Tuple[nn.Module, nn.Module]:
    r"""``(base, transformed)``: a network and its image under a random element of a symmetry.

    * ``"alpha_scale"``: factors :math:`\alpha_k` log-uniform in ``[low, high]`` for all layers
      but the last, whose factor makes the product one (it may fall outside the range);
      ``base`` is ``model``.
    * ``"neuron_scale"``: a log-uniform factor in ``[low, high]`` per hidden unit;
      ``base`` is ``model``.
    * ``"weight_norm"``: ``base`` is :func:`weight_normalize` of ``model``, ``transformed``
      its :func:`radial_scale` by a log-uniform factor in ``[low, high]`` per row.

    Raises:
        ValueError: an unknown ``symmetry``, or ``0 < low ≤ high`` violated.
    """
    if symmetry not in INVARIANCES:
        raise ValueError(f"symmetry: expected one of {INVARIANCES}, got {symmetry!r}")
    if not 0 < low <= high:
        raise ValueError(f"low, high: expected 0 < low <= high, got {low!r}, {high!r}")
    rng = np.random.default_rng(seed)
    if symmetry == "weight_norm":
        base = weight_normalize(model)
        rows = [p.shape[0] for n, p in base.named_parameters()
                if n.endswith("parametrizations.weight.original1")]
        return base, radial_scale(base, [_log_uniform(rng, r, low, high) for r in rows])
    layers = weight_layers(model)
    if symmetry == "alpha_scale":
        a = _log_uniform(rng, len(layers) - 1, low, high)
        return model, alpha_scale(model, list(a) + [float(1.0 / np.prod(a))], rtol=1e-6)
    return model, neuron_scale(model, [_log_uniform(rng, m.weight.shape[0], low, high)
                                       for _, m in layers[:-1]])


#: ``{symmetry: random_transform with it}``, for loops over the symmetries.
TRANSFORMS: Dict[str, Callable] = {
    s: (lambda model, seed=0, s=s, **kw: random_transform(model, s, seed=seed, **kw))
    for s in INVARIANCES}


@dataclass(frozen=True)
class InvarianceCheck:
    r"""A measure before and after a random element of a symmetry, from
    :func:`invariance_check`.

    Attributes:
        measure, symmetry: the names.
        before: the values on the base network at each Monte-Carlo seed.
        after: the value on the transformed network at the first seed.
        change: the relative change :math:`|m(T\theta) - m(\theta)| / |m(\theta)|`.
        noise: the relative bound for "unchanged": three times the spread of ``before`` plus
            ``1e-6`` relative and ``1e-12`` absolute (rounding, iteration tolerances), over :math:`|m(\theta)|`.
        declared: whether the measure declares the invariance.
        moved: ``change > noise``.
        agrees: the declaration matches the measurement (invariant and not moved, or not
            invariant and moved).
    """

    measure: str
    symmetry: str
    before: Tuple[float, ...]
    after: float
    change: float
    noise: float
    declared: bool
    moved: bool
    agrees: bool


def invariance_check(measure: Measure, model: nn.Module, loss_fn, data, symmetry: str,
                     seeds: Sequence[int] = (0, 1, 2), transform_seed: int = 0,
                     base_values: Optional[Sequence[float]] = None, **factor_range
                     ) -> InvarianceCheck:
    r"""Measure a declared invariance: the change of ``measure`` under a random element of
    ``symmetry`` (:func:`random_transform`, factors in ``[1/25, 25]`` unless ``low``/``high``
    are given) against its Monte-Carlo noise (the spread over ``seeds`` on the base network).

    The change counts as a move when
    :math:`|m(T\theta) - m(\theta)| > 3\,(\max_s m_s - \min_s m_s) + 10^{-6}|m| + 10^{-12}`
    (the rule of ``tests/test_measures.py``).

    Args:
        measure: a :class:`Measure`.
        model, loss_fn, data: the network (not changed), its loss and data.
        symmetry: one of :data:`INVARIANCES`.
        seeds: the measure's seeds on the base network (the first is used after the transform).
        transform_seed: seeds the factors.
        base_values: the values on the base network at ``seeds``, if already computed (the
            base is ``model`` for α- and neuron-scale, its weight-normalized copy for
            ``weight_norm``).
        factor_range: ``low`` and ``high`` for :func:`random_transform`.

    Returns:
        An :class:`InvarianceCheck`.

    Raises:
        ValueError: an empty ``seeds``, and the errors of :func:`random_transform`.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    base, moved_net = random_transform(model, symmetry, seed=transform_seed, **factor_range)
    before = [measure(base, loss_fn, data, seed=s) for s in seeds] if base_values is None \
        else [float(v) for v in base_values]
    after = measure(moved_net, loss_fn, data, seed=seeds[0])
    scale = max(abs(before[0]), 1e-300)
    bound = 3 * (max(before) - min(before)) + 1e-6 * abs(before[0]) + 1e-12
    moved = abs(after - before[0]) > bound
    declared = symmetry in measure.invariant_to
    return InvarianceCheck(measure.name, symmetry, tuple(before), after,
                           abs(after - before[0]) / scale, bound / scale, declared, moved,
                           declared != moved)


def invariance_checks(measures: Sequence[Measure], model: nn.Module, loss_fn, data,
                      symmetries: Sequence[str] = INVARIANCES, seeds: Sequence[int] = (0, 1, 2),
                      transform_seed: int = 0, progress: Optional[bool] = None
                      ) -> List[InvarianceCheck]:
    """:func:`invariance_check` of every measure under every symmetry, the base values computed
    once per base network (``model`` for α- and neuron-scale, its weight-normalized copy for
    ``weight_norm``).

    Returns:
        The checks, measure by measure, in the order of ``symmetries``.
    """
    wn = weight_normalize(model) if "weight_norm" in symmetries else None
    out = []
    bar = _tqdm(total=len(measures) * len(symmetries), desc="invariances",
                disable=not _progress_enabled(progress))
    try:
        for m in measures:
            base = {}
            for s in symmetries:
                key = s == "weight_norm"
                if key not in base:
                    net = wn if key else model
                    base[key] = [m(net, loss_fn, data, seed=x) for x in seeds]
                out.append(invariance_check(m, model, loss_fn, data, s, seeds, transform_seed,
                                            base_values=base[key]))
                bar.update(1)
    finally:
        bar.close()
    return out
