"""Tests of flatness.stability: the heavy-ball stability bound against the exact iteration matrix."""

from __future__ import annotations

import numpy as np
import pytest

from flatness import stability


def _spectral_radius(lr, momentum, curvature):
    """Heavy ball on f(x) = λx²/2 (PyTorch's form v ← βv + λx, x ← x − ηv) is the linear map
    (x, v) ↦ ((1 − ηλ)x − ηβv, λx + βv); its spectral radius decides convergence."""
    A = np.array([[1 - lr * curvature, -lr * momentum], [curvature, momentum]])
    return max(abs(np.linalg.eigvals(A)))


@pytest.mark.parametrize("lr, momentum", [(0.5, 0.0), (0.1, 0.9), (0.02, 0.5)])
def test_threshold_is_where_the_iteration_stops_contracting(lr, momentum):
    bound = stability.stability_threshold(lr, momentum)
    assert bound == pytest.approx((2 + 2 * momentum) / lr)
    assert _spectral_radius(lr, momentum, 0.99 * bound) < 1 < _spectral_radius(lr, momentum, 1.01 * bound)
    assert _spectral_radius(lr, momentum, bound) == pytest.approx(1.0)


def test_refusals():
    with pytest.raises(ValueError, match="lr"):
        stability.stability_threshold(0.0)
    with pytest.raises(ValueError, match="momentum"):
        stability.stability_threshold(0.1, momentum=1.0)
