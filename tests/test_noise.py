"""Tests of flatness.noise (the SGD noise scale, the peak and slope estimators) and of
flatness.noise_sweep (the batch-size peak and how it moves)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flatness import noise, noise_sweep, stats


def test_noise_scale_formulas():
    assert noise.noise_scale(0.1, 1000, 10) == pytest.approx(0.1 * (1000 / 10 - 1))
    assert noise.noise_scale(0.1, 1000, 10, approximate=True) == pytest.approx(10.0)
    # momentum m multiplies the effective learning rate by 1/(1 − m)
    assert noise.noise_scale(0.1, 1000, 10, momentum=0.9) == pytest.approx(10 * 9.9)
    assert noise.noise_scale(0.1, 1000, 1000) == 0.0
    assert isinstance(noise.noise_scale(0.1, 1000, 10), float)


def test_noise_scale_symmetries():
    """g depends on ε and B only through ε/B (for B ≪ N, exactly in the approximate form), and
    multiplying ε by k is the same as dividing B by k."""
    g = noise.noise_scale(0.05, 4000, 32, approximate=True)
    assert noise.noise_scale(0.2, 4000, 128, approximate=True) == pytest.approx(g)
    assert noise.noise_scale(0.05, 8000, 64, approximate=True) == pytest.approx(g)
    # the exact form: ε(N/B − 1) = εN/B − ε
    assert noise.noise_scale(0.05, 4000, 32) == pytest.approx(g - 0.05)


def test_noise_scale_broadcasts_over_arrays():
    B = np.array([8, 16, 32])
    g = noise.noise_scale(0.1, 1024, B, approximate=True)
    assert isinstance(g, np.ndarray) and np.allclose(g, 0.1 * 1024 / B)
    lrs = np.array([0.1, 0.2])[:, None]
    assert noise.noise_scale(lrs, 1024, B).shape == (2, 3)


def test_batch_size_for_noise_inverts_noise_scale():
    for approx in (False, True):
        for m in (0.0, 0.9):
            g = noise.noise_scale(0.1, 5000, 50, momentum=m, approximate=approx)
            assert noise.batch_size_for_noise(g, 0.1, 5000, momentum=m,
                                              approximate=approx) == pytest.approx(50)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0, n_train=100, batch_size=10), "lr"),
    (dict(lr=-1.0, n_train=100, batch_size=10), "lr"),
    (dict(lr=float("nan"), n_train=100, batch_size=10), "lr"),
    (dict(lr=0.1, n_train=0, batch_size=10), "n_train"),
    (dict(lr=0.1, n_train=100, batch_size=0), "batch_size"),
    (dict(lr=0.1, n_train=100, batch_size=101), "at most n_train"),
    (dict(lr=0.1, n_train=100, batch_size=10, momentum=1.0), "momentum"),
    (dict(lr=0.1, n_train=100, batch_size=10, momentum=-0.1), "momentum"),
])
def test_noise_scale_refusals(kwargs, match):
    with pytest.raises(ValueError, match=match):
        noise.noise_scale(**kwargs)


def test_noise_scale_type_errors():
    with pytest.raises(TypeError, match="lr"):
        noise.noise_scale(True, 100, 10)
    with pytest.raises(TypeError, match="batch_size"):
        noise.noise_scale(0.1, 100, "ten")
    with pytest.raises(ValueError, match="g"):
        noise.batch_size_for_noise(0.0, 0.1, 100)


def test_peak_location():
    x = [4, 8, 16, 32, 64, 128]
    # a parabola in ln x with its vertex at ln 24
    y = [-(math.log(v) - math.log(24)) ** 2 for v in x]
    assert stats.peak_location(x, y) == pytest.approx(24.0, rel=1e-9)
    # linear x: a parabola with vertex at 2.5
    assert stats.peak_location([1, 2, 3, 4], [-(v - 2.5) ** 2 for v in [1, 2, 3, 4]],
                               log=False) == pytest.approx(2.5)
    # the maximum at an end of the grid is returned as is
    assert stats.peak_location(x, list(range(6))) == 128.0
    assert stats.peak_location(x, list(range(6))[::-1]) == 4.0
    # a flat top: the vertex stays within the neighbours
    est = stats.peak_location(x, [0, 1, 1, 1, 0, 0])
    assert 8 <= est <= 32
    # a wider window: the least-squares parabola through five points of an exact parabola
    assert stats.peak_location(x, y, window=5) == pytest.approx(24.0, rel=1e-9)
    # near the edge the window shifts inside the grid
    y_edge = [-(math.log(v) - math.log(6)) ** 2 for v in x]
    assert stats.peak_location(x, y_edge, window=5) == pytest.approx(6.0, rel=1e-9)
    with pytest.raises(ValueError, match="window"):
        stats.peak_location(x, y, window=4)
    with pytest.raises(ValueError, match="increasing"):
        stats.peak_location([2, 1, 3], [0, 1, 0])
    with pytest.raises(ValueError, match="positive"):
        stats.peak_location([0, 1, 2], [0, 1, 0])
    with pytest.raises(ValueError, match="same length"):
        stats.peak_location([1, 2, 3], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        stats.peak_location([1, 2, 3], [0, float("nan"), 1])


def test_loglog_fit_against_numpy_polyfit():
    rng = np.random.default_rng(0)
    x = np.geomspace(1, 100, 12)
    y = 3 * x ** 0.7 * np.exp(0.1 * rng.standard_normal(12))
    fit = stats.loglog_fit(x, y)
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    assert fit.slope == pytest.approx(slope, rel=1e-12)
    assert fit.intercept == pytest.approx(intercept, rel=1e-12)
    # the ordinary least-squares standard error sqrt(s² / Sxx), s² = RSS / (n − 2)
    _, residuals, *_ = np.polyfit(np.log(x), np.log(y), 1, full=True)
    lx = np.log(x)
    assert fit.stderr == pytest.approx(math.sqrt(residuals[0] / 10 / np.sum((lx - lx.mean()) ** 2)))
    assert math.isnan(stats.loglog_fit([1, 2], [1, 2]).stderr)
    with pytest.raises(ValueError, match="distinct"):
        stats.loglog_fit([2, 2, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        stats.loglog_fit([1, 2, 3], [1, -2, 3])


# --- flatness.noise_sweep: the batch-size peak and how it moves -----------------------------


def _fake_train(peak_of, diverge=()):
    """A stand-in for load_or_train: test accuracy a parabola in ln B peaking at peak_of(config)."""
    def train(config):
        lr, B, n, seed = config
        if B in diverge:
            raise ValueError("loss is NaN")
        return None, {"test_acc": [0.0, 0.9 - 0.01 * (math.log(B) - math.log(peak_of(lr, n, seed))) ** 2]}
    return train


def _config(lr, B, n, seed):
    return (lr, B, n, seed)


BATCHES = [4, 8, 16, 32, 64, 128, 256]


def test_batch_peak_sweep_finds_the_vertex_of_a_parabola_in_log_b():
    """The window's least-squares parabola through exact parabola values has the exact vertex."""
    train = _fake_train(lambda lr, n, seed: 20.0 * (1 + seed))
    run = noise_sweep.batch_peak_sweep(_config, 0.1, 100, BATCHES, [0, 1], window=5, train=train)
    assert list(run["batches"]) == [4, 8, 16, 32, 64]           # B ≤ N only
    assert run["b_opt_seeds"] == pytest.approx([20.0, 40.0], rel=1e-9)
    assert run["interior"] and not run["diverged"].any()
    assert run["acc"].shape == (2, 5) and np.array_equal(run["mean"], run["acc"].mean(0))
    diverging = _fake_train(lambda lr, n, seed: 20.0, diverge={4})
    run = noise_sweep.batch_peak_sweep(_config, 0.1, 1000, BATCHES, [0], train=diverging)
    assert run["diverged"][0, 0] and run["acc"][0, 0] == 0.1
    with pytest.raises(ValueError, match="batches"):
        noise_sweep.batch_peak_sweep(_config, 0.1, 5, BATCHES, [0], train=train)


def test_final_test_accuracy_reports_divergence():
    assert noise_sweep.final_test_accuracy((0.1, 4, 10, 0), train=_fake_train(lambda *a: 4.0)) == (0.9, False)
    assert noise_sweep.final_test_accuracy((0.1, 4, 10, 0), chance=0.5,
                                           train=_fake_train(lambda *a: 4.0, diverge={4})) == (0.5, True)


def test_optimum_slope_of_a_linear_law_is_one():
    """B_opt = 200 ε exactly: slope 1, standard error 0, for the mean and for each seed."""
    train = _fake_train(lambda lr, n, seed: 200 * lr)
    runs = [noise_sweep.batch_peak_sweep(_config, lr, 1000, BATCHES, [0, 1], train=train)
            for lr in (0.1, 0.2, 0.4)]
    slope, used = noise_sweep.optimum_slope(runs, "lr")
    assert len(used) == 3 and slope["fit"].slope == pytest.approx(1.0, abs=1e-9)
    assert slope["fit"].stderr == pytest.approx(0.0, abs=1e-9)
    assert slope["seed_slopes"] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert noise_sweep.format_slope(slope).startswith("1.00 ± 0.00 (per seed 1.00 to 1.00)")
    assert noise_sweep.optimum_slope(runs[:1], "lr")[0] is None and noise_sweep.format_slope(None) == "—"
    table = str(noise_sweep.peak_table(runs))
    assert table.count("\n") == 4 and "| ε = 0.1, N = 1000 | 20.0 |" in table


def test_collapse_spread():
    """Zero for curves equal up to a shift in y; for a triangle and its copy shifted by one octave
    the gap over the shared octave is |1 − 2u| at the fraction u, mean 13/25 on 25 points."""
    assert noise_sweep.collapse_spread([[1, 2, 4], [1, 2, 4]], [[0, 1, 0], [5, 6, 5]]) == 0.0
    shifted = noise_sweep.collapse_spread([[1, 2, 4], [2, 4, 8]], [[0, 1, 0], [0, 1, 0]])
    assert shifted == pytest.approx(13 / 25)
    assert math.isnan(noise_sweep.collapse_spread([[1, 2], [4, 8]], [[0, 1], [0, 1]]))
    # decreasing abscissae (g = εN/B falls as B grows) are sorted first
    assert noise_sweep.collapse_spread([[4, 2, 1], [1, 2, 4]], [[0, 1, 0], [0, 1, 0]]) == 0.0
    with pytest.raises(ValueError, match="xs"):
        noise_sweep.collapse_spread([[1, 2]], [[0, 1]])
