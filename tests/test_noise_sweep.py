"""Tests of the population design of flatness.noise_sweep: the √2 batch grid, one population per
(N, B), the bootstrap over seeds of B_opt and of its slopes, and the window sensitivity.

The training is replaced by exact functions of (ε, B, N, seed): test accuracy a parabola in ln B
with a known vertex, so that every peak, slope and interval has an exact value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flatness import noise_sweep as ns
from flatness import stats


def test_sqrt2_grid():
    """round(2^(k/2)) without repeats, inside the bounds; each step is a factor ≈ √2."""
    assert ns.sqrt2_grid(1, 16) == [1, 2, 3, 4, 6, 8, 11, 16]
    assert ns.sqrt2_grid(5, 12) == [6, 8, 11]
    grid = np.array(ns.sqrt2_grid(2, 512), float)
    assert np.all(np.abs(np.log(grid[1:] / grid[:-1]) / math.log(math.sqrt(2)) - 1) < 0.25)
    for lo, hi in ((0.5, 4), (4, 2), (1, math.inf)):
        with pytest.raises(ValueError, match="low, high"):
            ns.sqrt2_grid(lo, hi)


class _Hist:
    """A stand-in for load_or_train_many: records each call's configurations."""

    def __init__(self, vertex, diverge=lambda c: False):
        self.vertex, self.diverge, self.calls = vertex, diverge, []

    def accuracy(self, c):
        lr, B, n, seed = c
        return 0.9 - 0.01 * (math.log(B) - math.log(self.vertex(lr, n, seed))) ** 2

    def many(self, configs):
        self.calls.append(list(configs))
        if any(self.diverge(c) for c in configs):
            raise ValueError("training diverged: member 0's loss is nan")
        hists = [{"test_acc": [0.0, self.accuracy(c)], "train_acc": [0.0, 1.0 - c[0]]} for c in configs]
        return [None] * len(configs), hists

    def one(self, c):
        if self.diverge(c):
            raise ValueError("loss is NaN")
        return None, {"test_acc": [self.accuracy(c)], "train_acc": [0.5]}


def _config(lr, B, n, seed):
    return (lr, B, n, seed)


GRID = [2, 4, 8, 16, 32, 64, 128, 256]


def test_population_sweep_groups_by_n_and_b_and_finds_exact_vertices():
    """One call per (N, B) with every (ε, seed) inside; the vertex of an exact parabola in ln B is
    recovered exactly (B_opt = 100 ε N / 1000 here, so the slopes in ε and N are exactly 1)."""
    h = _Hist(lambda lr, n, seed: 100 * lr * n / 1000)
    runs = ns.population_sweep(_config, [0.1, 0.2], [1000, 2000], lambda n: GRID, [0, 1, 2], train_many=h.many)
    assert len(h.calls) == 2 * len(GRID)
    for call in h.calls:
        assert len({c[1] for c in call}) == 1 and len({c[2] for c in call}) == 1 and len(call) == 6
    assert [(r["lr"], r["n_train"]) for r in runs] == [(0.1, 1000), (0.2, 1000), (0.1, 2000), (0.2, 2000)]
    for r in runs:
        assert r["acc"].shape == (3, len(GRID)) and r["interior"] and not r["diverged"].any()
        assert r["b_opt"] == pytest.approx(100 * r["lr"] * r["n_train"] / 1000, rel=1e-9)
        assert np.all(np.isnan(r["sharpness"])) and np.allclose(r["train_acc"], 1 - r["lr"])
    b = ns.optimum_bootstrap([r for r in runs if r["n_train"] == 2000], "lr")
    assert b["slope"] == pytest.approx(1.0, abs=1e-9)
    # every seed has the same curve: every resample gives the estimate, the interval is a point
    assert b["slope_low"] == pytest.approx(1.0, abs=1e-9) and b["slope_high"] == pytest.approx(1.0, abs=1e-9)
    assert np.allclose(b["b_low"], b["b_opt"]) and not b["edge"].any()
    assert ns.optimum_bootstrap([r for r in runs if r["lr"] == 0.1], "n_train")["slope"] == pytest.approx(1.0)


def test_population_sweep_falls_back_to_smaller_populations_when_a_member_diverges():
    """A population with a diverging member is retrained one learning rate at a time, and a
    group that fails again member by member: the diverged run is scored at chance and flagged,
    every other keeps its accuracy."""
    h = _Hist(lambda lr, n, seed: 16.0, diverge=lambda c: c[1] == 2 and c[0] == 0.2 and c[3] == 0)
    runs = ns.population_sweep(_config, [0.1, 0.2], [1000], lambda n: GRID, [0, 1], chance=0.1,
                               train_many=h.many, train=h.one)
    slow, fast = runs
    assert fast["diverged"][0, 0] and fast["acc"][0, 0] == 0.1 and fast["train_acc"][0, 0] == 0.1
    assert fast["diverged"].sum() == 1 and math.isnan(fast["sharpness"][0, 0])
    assert fast["acc"][1, 0] == pytest.approx(h.accuracy((0.2, 2, 1000, 1))) and fast["train_acc"][1, 0] == 0.5
    assert not slow["diverged"].any() and slow["acc"][0, 0] == pytest.approx(h.accuracy((0.1, 2, 1000, 0)))
    at_two = [c for call in h.calls for c in call if c[1] == 2]   # all four, then ε = 0.1 and ε = 0.2 apart
    assert [len(call) for call in h.calls if call[0][1] == 2] == [4, 2, 2]
    assert len(at_two) == 8
    with pytest.raises(ValueError, match="batches"):
        ns.population_sweep(_config, [0.1], [1000], lambda n: [4], [0], train_many=h.many)
    with pytest.raises(ValueError, match="lrs"):
        ns.population_sweep(_config, [], [1000], lambda n: GRID, [0], train_many=h.many)


def _runs(vertices):
    """Curves (seeds × batches) that are exact parabolas in ln B with the given vertices."""
    out = []
    for x, per_seed in vertices:
        acc = np.array([[0.9 - 0.01 * (math.log(B) - math.log(v)) ** 2 for B in GRID] for v in per_seed])
        out.append(dict(lr=x, n_train=1000, batches=np.array(GRID), acc=acc, mean=acc.mean(0)))
    return out


def test_optimum_bootstrap_resamples_seeds_jointly():
    """The replicates are exactly the peaks of the curves averaged over the seeds that
    numpy.random.default_rng(seed).integers(0, S, S) draws — one draw for every curve."""
    runs = _runs([(0.1, [6.0, 9.0, 12.0]), (0.2, [14.0, 16.0, 30.0]), (0.4, [25.0, 40.0, 50.0])])
    b = ns.optimum_bootstrap(runs, "lr", n_resamples=50, seed=3)
    rng = np.random.default_rng(3)
    for k in range(50):
        idx = rng.integers(0, 3, 3)
        peaks = [stats.peak_location(GRID, r["acc"][idx].mean(0), window=5) for r in runs]
        slope = np.polyfit(np.log([0.1, 0.2, 0.4]), np.log(peaks), 1)[0]
        assert b["slope_replicates"][k] == pytest.approx(slope, abs=1e-12)
    assert b["slope_low"] <= b["slope"] <= b["slope_high"]
    assert np.all(b["b_low"] <= b["b_high"]) and b["n_seeds"] == 3
    one = ns.optimum_bootstrap(_runs([(0.1, [8.0]), (0.2, [16.0])]), "lr")
    assert one["slope"] == pytest.approx(1.0) and math.isnan(one["slope_low"]) and math.isnan(one["b_low"][0])
    with pytest.raises(ValueError, match="distinct"):
        ns.optimum_bootstrap(runs[:1], "lr")
    with pytest.raises(ValueError, match="same number of seeds"):
        ns.optimum_bootstrap([runs[0], _runs([(0.3, [8.0])])[0]], "lr")


def test_optimum_bootstrap_flags_a_peak_at_the_edge():
    runs = _runs([(0.1, [1.0, 1.0]), (0.2, [16.0, 16.0])])   # the first peaks below the grid
    b = ns.optimum_bootstrap(runs, "lr")
    assert list(b["edge"]) == [True, False] and b["b_opt"][0] == GRID[0]


def test_seed_bootstrap_is_the_percentile_interval_of_resampled_seeds():
    values = np.array([0.0, 1.0, 5.0, 2.0])
    est, lo, hi = ns.seed_bootstrap(4, lambda idx: float(values[idx].mean()), n_resamples=300, seed=1)
    rng = np.random.default_rng(1)
    reps = [values[rng.integers(0, 4, 4)].mean() for _ in range(300)]
    assert est == 2.0 and (lo, hi) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])))
    with pytest.raises(ValueError, match="n_seeds"):
        ns.seed_bootstrap(0, lambda idx: 0.0)


def test_window_sensitivity_and_at_optimum():
    """An exact parabola gives the same vertex for every window; a kinked curve does not."""
    runs = _runs([(0.1, [8.0]), (0.2, [16.0])])
    sens = ns.window_sensitivity(runs, "lr", (3, 5, 7))
    for w in (3, 5, 7):
        assert sens[w]["b_opt"] == pytest.approx([8.0, 16.0]) and sens[w]["slope"] == pytest.approx(1.0)
    kinked = [dict(r, mean=np.array([0.1, 0.5, 0.9, 1.0, 0.2, 0.1, 0.0, 0.0])) for r in runs]
    b = {w: ns.window_sensitivity(kinked, "lr", (w,))[w]["b_opt"][0] for w in (3, 5)}
    assert b[3] != pytest.approx(b[5])
    r = dict(acc=np.array([[0.1, 0.5, 0.2], [0.3, 0.1, 0.0]]), train_acc=np.array([[0.2, 0.9, 1.0], [0.4, 0.7, 0.6]]))
    assert ns.at_optimum(r, "train_acc") == pytest.approx(0.8)          # best mean at the middle point
    assert ns.at_optimum(r, "train_acc", np.array([1, 1])) == pytest.approx(0.4)   # seed 1 alone: first point


def test_tables_have_one_row_per_run_and_curve():
    h = _Hist(lambda lr, n, seed: 16.0)
    runs = ns.population_sweep(_config, [0.1, 0.2], [1000], lambda n: GRID, [0, 1], train_many=h.many)
    assert str(ns.run_table(runs, 0.9)).count("\n") == 2 + 2 * len(GRID) - 1
    boot = ns.optimum_bootstrap(runs, "lr")
    table = str(ns.optimum_table(runs, list(zip(boot["b_opt"], boot["b_low"], boot["b_high"])), 0.9))
    assert table.count("\n") == 3 and "| ε = 0.1, N = 1000 | 16.0 [16.0, 16.0] |" in table
