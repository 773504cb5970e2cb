"""Tests of flatness.sublevel against exact areas (scipy quadrature)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad

from flatness import sublevel


def test_log_bisect_and_band_geometry():
    assert sublevel.log_bisect(lambda x: x < 3.0, 1.0, 100.0) == pytest.approx(3.0, rel=1e-12)
    assert sublevel.log_bisect(lambda x: x > 0.2, 1.0, 1e-3) == pytest.approx(0.2, rel=1e-12)
    p_lo, p_hi, R = 0.5, 2.0, 4.0
    numeric = quad(lambda s: max(0.0, min(p_hi / s, R) - min(p_lo / s, R)), 0.0, R,
                   points=[p_lo / R, p_hi / R], limit=200)[0]
    assert sublevel.hyperbolic_band_area(p_lo, p_hi, R) == pytest.approx(numeric, rel=1e-8)
    with pytest.raises(ValueError, match="R"):
        sublevel.hyperbolic_band_area(p_lo, p_hi, 1.0)


def test_log_box_area_within_five_sigma_of_the_exact_area():
    """The estimator ℓ²·mean(w) is unbiased; its exact variance is ℓ⁴(E w² − (E w)²)/n with
    E w² = ℓ⁻² ∬_band st ds dt."""
    p_lo, p_hi, R, floor, n = 0.5, 2.0, 8.0, 1e-2, 4000
    inside = lambda s, t: p_lo < s * t < p_hi  # noqa: E731
    area, stderr, share = sublevel.log_box_area(inside, R, n, np.random.default_rng(0), floor=floor)
    ell = math.log(R) - math.log(floor / R)
    exact = sublevel.hyperbolic_band_area(p_lo, p_hi, R)
    second = quad(lambda s: s * (min(p_hi / s, R) ** 2 - min(p_lo / s, R) ** 2) / 2, p_lo / R, R,
                  points=[p_hi / R], limit=200)[0] / ell ** 2
    sigma = math.sqrt(ell ** 4 * (second - (exact / ell ** 2) ** 2) / n)
    assert abs(area - exact) < 5 * sigma
    assert 0 < share < 1 and stderr > 0


def test_plane_band_on_a_function_of_st():
    """L(s, t) = (ln st)²: the band is |ln st| < √ε."""
    eps = 0.09
    band = sublevel.plane_band(lambda s, t: math.log(s * t) ** 2, eps, [-1.0, 0.0, 1.0], [4.0, 8.0], 200)
    assert band.p_lo == pytest.approx(math.exp(-0.3), rel=1e-9)
    assert band.p_hi == pytest.approx(math.exp(0.3), rel=1e-9)
    assert band.surface.shape == (3, 3) and band.surface[1, 1] == 0.0
    assert band.exact_areas == [sublevel.hyperbolic_band_area(band.p_lo, band.p_hi, R) for R in (4.0, 8.0)]
    assert str(band.table()).count("\n") == 3
