"""Tests of flatness.figures: each figure is drawn from small result objects of the library."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from flatness import figures, layers, noise_sweep, reparam_experiments, sublevel  # noqa: E402
from flatness.models import mlp  # noqa: E402
from flatness.reparametrize import InputAffineMap, RadialMap  # noqa: E402


def _close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = mlp(5, (6, 4), 3).double()
    X, y = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 3, (30,))
    return model, torch.nn.CrossEntropyLoss(), (X, y)


def test_top_eigenvalues_figure_draws_one_line_per_series():
    fig = figures.top_eigenvalues_figure({"a": [3.0, 2.0, 1.0], "b": [30.0, 20.0, 10.0]}, target=5.0)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3 and [t.get_text() for t in ax.texts] == ["M"]
    _close(fig)
    with pytest.raises(ValueError, match="series"):
        figures.top_eigenvalues_figure({"a": [1.0], "b": [1.0, 2.0]})


def test_alpha_sweep_figure_from_a_profile_and_a_prediction(tiny):
    model, loss_fn, data = tiny
    groups = {"A": ["0.weight", "0.bias"], "B": ["2.weight"], "C": ["2.bias", "4.weight", "4.bias"]}
    grid = np.logspace(-3, 3, 7, base=2)
    pred = layers.block_scaling_prediction(model, loss_fn, data, groups, {"A": 1, "B": -1, "C": 0}, grid,
                                           num_probes=2)
    alphas = [1.0, 8.0, 16.0]
    prof = {"lambda_max": np.array([1.0, 60.0, 250.0]), "trace": np.ones(3), "fro": np.ones(3),
            ("full", 1e-3): np.ones(3), ("subspace", 1e-3): np.ones(3)}
    fig = figures.alpha_sweep_figure(alphas, prof, pred, grid, 2.0, {"reference": 1.0})
    assert len(fig.axes) == 4
    _close(fig)


def test_plane_band_coordinate_weight_and_input_figures(tiny):
    model, loss_fn, data = tiny
    band = sublevel.plane_band(lambda s, t: math.log(s * t) ** 2 + 0.01, 0.09, [-1.0, 0.0, 1.0], [4.0, 8.0], 50)
    fig = figures.plane_band_figure([-1.0, 0.0, 1.0], band, 0.09)
    assert len(fig.axes) == 3  # two panels and a colour bar
    _close(fig)
    grid = np.linspace(-1, 1, 11)
    fig = figures.coordinate_change_figure(lambda t: t ** 2, [RadialMap(0.0, 1.0, 0.5)], 0.0, grid, grid)
    assert len(fig.axes) == 2
    _close(fig)
    fig = figures.weight_coordinates_figure({"θ": [2.0, 1.0], "η": [0.5, 0.2]}, [0.1, 1.0], [100.0, 1.0], 2.0)
    assert len(fig.axes) == 2
    _close(fig)
    maps = {"σ = 1": InputAffineMap(1.0, dim=5), "σ = 2": InputAffineMap(2.0, dim=5)}
    prof = reparam_experiments.input_map_profile(model, loss_fn, maps, data, data, data, tol=1e-6)
    fig = figures.input_map_figure(prof, {"σ = 1": 1.0, "σ = 2": 2.0}, "σ = 1", "σ = 2")
    assert len(fig.axes) == 2
    _close(fig)


def test_lambda_sweep_figure_needs_a_random_run():
    rows = [dict(lam=lam, train_acc=1.0, test_acc=0.5, test_ce=0.7, ratio=-1.0) for lam in (0.1, 1.0)]
    fig = figures.lambda_sweep_figure(rows, {1: rows, 2: rows}, 10)
    assert len(fig.axes) == 3 and len(fig.axes[2].get_lines()) == 4  # two curves, one draw dotted, zero line
    _close(fig)
    with pytest.raises(ValueError, match="random_runs"):
        figures.lambda_sweep_figure(rows, {}, 10)


def test_noise_sweep_and_schedule_figures():
    acc = {4: 0.5, 8: 0.7, 16: 0.8, 32: 0.7, 64: 0.4}

    def train(cfg):
        lr, b = cfg
        return None, {"test_acc": [acc[b] * (1 + 0.01 * lr)]}

    runs = [noise_sweep.batch_peak_sweep(lambda lr, b, n, s: (lr, b), lr, 100, list(acc), [0, 1],
                                         window=3, train=train) for lr in (0.5, 1.0)]
    for r, lr in zip(runs, (0.5, 1.0)):
        r["b_opt"] *= lr  # two different optima, so that a slope can be fitted
    slope, used = noise_sweep.optimum_slope(runs, "lr")
    fig = figures.batch_curves_figure([(runs, "lr", "ε = {:g}", "varying ε")])
    assert len(fig.axes) == 1
    _close(fig)
    fig = figures.optimum_slope_figure([(slope, used, "ε"), (None, [], "N")])
    assert len(fig.axes) == 2 and len(fig.axes[1].get_lines()) == 0
    _close(fig)
    fig = figures.collapse_figure(runs, [(lambda r: r["batches"], "B"), (lambda r: r["lr"] / r["batches"], "ε/B")], 100)
    assert len(fig.axes) == 2
    _close(fig)
    h = {"epoch": [1, 2], "test_acc": [0.5, 0.6], "train_loss": [1.0, 0.5], "steps": [10, 20]}
    fig = figures.schedule_figure({"a": h, "constant": h}, [1])
    assert len(fig.axes) == 3
    _close(fig)
