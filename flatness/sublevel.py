r"""The volume of a sublevel set on the plane of two layer scalings.

Scaling layer 1 of a ReLU network by :math:`s` and layer 2 by :math:`t` (its bias by
:math:`st`) gives a loss :math:`L(s, t)` that depends on :math:`st` only, so the sublevel set
:math:`\{L < L^* + \epsilon\}` is a band :math:`p_{lo} < st < p_{hi}` around the hyperbola
:math:`st = 1`, of unbounded area: "flat volume" depends on where the box is cut.

* :func:`log_bisect` finds a boundary by bisection in :math:`\ln x`;
* :func:`log_box_area` is a Monte Carlo area of a set inside :math:`(0, R]^2`, sampled in
  :math:`(\ln s, \ln t)`; :func:`hyperbolic_band_area` is the band's exact area;
* :func:`plane_band` does all of it for a loss :math:`L(s, t)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

import numpy as np

from .checks import check_positive
from .tables import MarkdownTable, markdown_table

__all__ = ["log_bisect", "log_box_area", "hyperbolic_band_area", "PlaneBand", "plane_band"]


def log_bisect(inside: Callable[[float], bool], start: float, outside: float,
               iterations: int = 50) -> float:
    r"""Where ``inside`` changes value between ``start`` and ``outside``, by bisection in
    :math:`\ln x` (geometric midpoints); the result is the last midpoint
    :math:`\sqrt{lo\cdot hi}`.

    Args:
        inside: a predicate, assumed to change value once between the two points.
        start, outside: positive end points (either order).
        iterations: bisection steps; the bracket shrinks by :math:`2^{-\text{iterations}}` in
            :math:`\ln x`.

    Returns:
        The estimated boundary.

    >>> round(log_bisect(lambda x: x < 3.0, 1.0, 100.0), 9)
    3.0
    """
    if not (start > 0 and outside > 0):
        raise ValueError(f"start, outside: expected positive values, got {start!r}, {outside!r}")
    check_positive(iterations, "iterations", integer=True)
    lo, hi = start, outside
    side = inside(lo)
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if inside(mid) == side:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def log_box_area(inside: Callable[[float, float], bool], R: float, num_samples: int,
                 rng: np.random.Generator, floor: float = 1e-2) -> Tuple[float, float, float]:
    r"""Monte Carlo area of a set :math:`S` inside the box :math:`(0, R]^2`, sampling
    :math:`(\ln s, \ln t)` uniformly in :math:`[\ln(\text{floor}/R), \ln R]^2`.

    With side :math:`\ell = \ln R - \ln(\text{floor}/R)` and weights
    :math:`w = \mathbb 1[(s,t)\in S]\,st` (the Jacobian of :math:`(\ln s, \ln t) \mapsto (s,t)`),
    :math:`\ell^2\,\overline{w}` is unbiased for the area of :math:`S` within
    :math:`[\text{floor}/R, R]^2`, with standard error :math:`\ell^2 \hat\sigma_w / \sqrt n`.

    Args:
        inside: the indicator of :math:`S`, called as ``inside(s, t)``.
        R: the box side.
        num_samples: Monte Carlo samples (at least 2).
        rng: a NumPy generator (advanced by ``2 × num_samples`` uniforms).
        floor: the box starts at ``floor / R`` in each coordinate.

    Returns:
        ``(area, stderr, share)``: the estimate, its standard error and the share of samples in
        :math:`S`.
    """
    check_positive(R, "R")
    check_positive(floor, "floor")
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples: expected an integer ≥ 2, got {num_samples!r}")
    lo, hi = math.log(floor / R), math.log(R)
    uv = rng.uniform(lo, hi, size=(num_samples, 2))
    w = np.array([math.exp(u + v) if inside(math.exp(u), math.exp(v)) else 0.0 for u, v in uv])
    area = (hi - lo) ** 2 * w.mean()
    stderr = (hi - lo) ** 2 * w.std(ddof=1) / math.sqrt(num_samples)
    return float(area), float(stderr), float((w > 0).mean())


def hyperbolic_band_area(p_lo: float, p_hi: float, R: float) -> float:
    r"""Exact area of :math:`\{(s,t) \in (0,R]^2 : p_{lo} < st < p_{hi}\}` for
    :math:`R^2 \ge p_{hi}`:

    .. math:: (p_{hi} - p_{lo})(1 + 2\ln R) - p_{hi}\ln p_{hi} + p_{lo}\ln p_{lo}.

    (The area under :math:`st < p` in the box is :math:`p(1 + 2\ln R - \ln p)`.)

    >>> round(hyperbolic_band_area(0.5, 2.0, 4.0), 6)
    3.926015
    """
    if not 0 < p_lo < p_hi:
        raise ValueError(f"p_lo, p_hi: expected 0 < p_lo < p_hi, got {p_lo!r}, {p_hi!r}")
    if not R * R >= p_hi:
        raise ValueError(f"R: expected R² ≥ p_hi = {p_hi!r}, got {R!r}")
    return (p_hi - p_lo) * (1 + 2 * math.log(R)) - p_hi * math.log(p_hi) + p_lo * math.log(p_lo)


@dataclass
class PlaneBand:
    r"""Result of :func:`plane_band`.

    Attributes:
        loss: :math:`L^* = L(1, 1)`.
        surface: :math:`L(2^u, 2^v)` on the grid (rows: ``v``, columns: ``u``).
        p_lo, p_hi: the ends of the band along :math:`p \mapsto L(p, 1)`.
        areas, stderrs, shares: :func:`log_box_area` for each box side.
        exact_areas: :func:`hyperbolic_band_area` for each box side.
        box_sides: the box sides.
    """

    loss: float
    surface: np.ndarray
    p_lo: float
    p_hi: float
    areas: list
    stderrs: list
    shares: list
    exact_areas: list
    box_sides: list

    def table(self) -> MarkdownTable:
        """One row per box side: sampled area ± standard error, exact area, share of hits."""
        return markdown_table(
            ["box side R", "sampled area of the band", "exact area", "share of samples in the band"],
            [(f"{R:g}", f"{area:.2f} ± {se:.2f}", f"{exact:.2f}", f"{share:.2f}")
             for R, area, se, exact, share
             in zip(self.box_sides, self.areas, self.stderrs, self.exact_areas, self.shares)])


def plane_band(loss: Callable[[float, float], float], eps: float, log_grid: Sequence[float],
               box_sides: Sequence[float], num_samples: int, seed: int = 0,
               bracket: float = 1e3) -> PlaneBand:
    r"""The sublevel set :math:`\{L(s,t) < L(1,1) + \epsilon\}` on a plane of two scalings.

    When :math:`L(s, t)` depends on :math:`st` only (layer 1 scaled by :math:`s`, layer 2 by
    :math:`t`, its bias by :math:`st`, in a ReLU network), the set is the band
    :math:`p_{lo} < st < p_{hi}` around the hyperbola :math:`st = 1`. This evaluates :math:`L` on
    a :math:`\log_2` grid, finds :math:`p_{lo}, p_{hi}` by :func:`log_bisect` on
    :math:`p \mapsto L(p, 1)` (between 1 and ``1/bracket``, 1 and ``bracket``), and estimates
    the band's area in boxes :math:`(0, R]^2` by :func:`log_box_area` (one NumPy generator seeded
    with ``seed``, used box after box), next to the exact :func:`hyperbolic_band_area`.

    Args:
        loss: :math:`(s, t) \mapsto L`.
        eps: ε > 0.
        log_grid: :math:`\log_2` values of :math:`s` and :math:`t` for ``surface``.
        box_sides: the box sides :math:`R`.
        num_samples: Monte Carlo samples per box.
        seed: seeds the samples.
        bracket: the bisection brackets.

    Returns:
        A :class:`PlaneBand`.
    """
    check_positive(eps, "eps")
    L_star = loss(1.0, 1.0)
    surface = np.array([[loss(2.0 ** u, 2.0 ** v) for u in log_grid] for v in log_grid])
    inside = lambda s, t=1.0: loss(s, t) < L_star + eps  # noqa: E731
    p_lo, p_hi = log_bisect(inside, 1.0, 1.0 / bracket), log_bisect(inside, 1.0, bracket)
    rng = np.random.default_rng(seed)
    sampled = [log_box_area(inside, R, num_samples, rng) for R in box_sides]
    exact = [hyperbolic_band_area(p_lo, p_hi, R) for R in box_sides]
    return PlaneBand(L_star, surface, p_lo, p_hi, [a for a, _, _ in sampled],
                     [e for _, e, _ in sampled], [h for _, _, h in sampled], exact, list(box_sides))
