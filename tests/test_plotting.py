"""Tests of flatness.plotting: every helper draws exactly the data it is given."""

from __future__ import annotations

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from flatness import plotting  # noqa: E402
from flatness.stability import stability_threshold  # noqa: E402
from flatness.stats import by_batch  # noqa: E402

RUNS = [{"batch_size": B, "lam": v, "eta_lambda": e, "lr": lr,
         "history": {"lambda_max": [(0, 1.0), (4, 2.0 * lr), (8, 1.9 / lr)]}}
        for B, v, e, lr in [(64, 1.0, 0.2, 0.2), (64, 3.0, 0.6, 0.2), (400, 10.0, 2.0, 0.5)]]


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_plot_by_batch_draws_the_means_and_every_run(ax):
    line = plotting.plot_by_batch(ax, RUNS, "lam", label="x", color="C1", filled=False)
    means = by_batch(RUNS, "lam")
    assert list(line.get_xdata()) == [64, 400] and list(line.get_ydata()) == [m for _, m, _, _ in means]
    assert line.get_label() == "x" and line.get_markerfacecolor() == "none"
    runs = ax.lines[0]
    assert list(runs.get_ydata()) == [1.0, 3.0, 10.0] and runs.get_alpha() == 0.3
    only = plotting.plot_by_batch(ax, RUNS, "eta_lambda", means=False, label="y")
    assert list(only.get_ydata()) == [0.2, 0.6, 2.0] and only.get_label() == "y"
    with pytest.raises(ValueError, match="runs, means"):
        plotting.plot_by_batch(ax, RUNS, "lam", runs=False, means=False)


def test_plot_sharpness_history_draws_the_bound(ax):
    traj, bound = plotting.plot_sharpness_history(ax, RUNS[2]["history"], 0.5, momentum=0.5)
    assert list(traj.get_xdata()) == [0.5, 4, 8] and list(traj.get_ydata()) == [1.0, 1.0, 3.8]
    assert list(bound.get_ydata()) == [stability_threshold(0.5, 0.5)] * 2
    assert bound.get_color() == traj.get_color()
    with pytest.raises(ValueError, match="history"):
        plotting.plot_sharpness_history(ax, {"epochs": 3}, 0.5)


def test_plot_sharpness_histories_one_colour_per_batch_size(ax):
    lines = plotting.plot_sharpness_histories(ax, RUNS, colors={64: "red", 400: "blue"})
    assert [ln.get_color() for ln in lines] == ["red", "red", "blue"]
    assert [ln.get_label() for ln in lines] == ["B = 64", "B = 64", "B = 400"]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="runs"):
        plotting.plot_sharpness_histories(ax, [])


def test_figures_hold_their_data():
    alphas = np.linspace(-1, 2, 4)
    curves = {"train": {"loss": alphas ** 2 + 1, "accuracy": alphas / 2},
              "test": {"loss": alphas ** 2 + 2, "accuracy": alphas / 3}}
    fig = plotting.interpolation_figure(alphas, curves, marks={0: "SB", 1: "LB"}, styles=("-", "--"))
    loss_ax, acc_ax = fig.axes
    assert np.array_equal(loss_ax.lines[1].get_ydata(), curves["test"]["loss"])
    assert loss_ax.lines[1].get_linestyle() == "--" and loss_ax.get_yscale() == "log"
    assert [t.get_text() for t in acc_ax.texts] == ["SB", "LB"]
    plt.close(fig)
    with pytest.raises(ValueError, match="styles"):
        plotting.interpolation_figure(alphas, curves, styles=("-",))
    with pytest.raises(ValueError, match="curves"):
        plotting.interpolation_figure(alphas[:3], curves)

    fig = plotting.batch_size_figure({"a": RUNS}, [("lam", "λ", "log"), ("eta_lambda", "ηλ", "linear"),
                                                   ("lam", "again", "log")])
    assert sum(a.get_visible() for a in fig.axes) == 3 and len(fig.axes) == 4
    plt.close(fig)

    fig = plotting.edge_of_stability_figure({"left": RUNS[:1], "middle": RUNS[2:]}, {"all": RUNS},
                                            momentum=0.9)
    last = fig.axes[-1]
    assert len(fig.axes) == 3 and last.get_title() == "distance to the bound 3.8"
    assert list(last.lines[0].get_ydata()) == [0.2, 0.6, 2.0]
    plt.close(fig)
    with pytest.raises(ValueError, match="final"):
        plotting.edge_of_stability_figure({"left": RUNS}, {})


def test_density_and_surface(ax):
    grid = np.linspace(0, 1, 5)
    line = plotting.plot_spectral_density(ax, grid, [0, 1, 2, 0, 1], eigenvalues=[0.5, 0.9])
    assert list(line.get_ydata()) == [1e-8, 1, 2, 1e-8, 1] and len(ax.lines) == 3
    with pytest.raises(ValueError, match="grid, density"):
        plotting.plot_spectral_density(ax, grid, [1, 2])
    a = np.linspace(-1, 1, 5)
    surface = {"a": a, "b": a, "loss": 1 + np.add.outer(a ** 2, 2 * a ** 2)}
    cs = plotting.plot_loss_surface(ax, surface, levels=6)
    assert np.allclose(cs.levels, np.logspace(0, np.log10(4), 6))
    with pytest.raises(ValueError, match="surface"):
        plotting.plot_loss_surface(ax, {**surface, "loss": surface["loss"] - 1})


def test_glue_figure_glues_displays_and_closes_the_figure(monkeypatch):
    pytest.importorskip("myst_nb")
    import IPython.display
    import myst_nb

    glued, shown = {}, []
    monkeypatch.setattr(myst_nb, "glue", lambda name, fig, display: glued.update({name: display}))
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    fig, _ = plt.subplots()
    plotting.glue_figure("fig-x", fig)
    assert glued == {"fig-x": False} and shown == [fig] and not plt.fignum_exists(fig.number)
    with pytest.raises(ValueError, match="name"):
        plotting.glue_figure("", fig)


def test_warm_start_figure_draws_the_runs_and_references():
    warm = [dict(k=0, lambda_max=10.0, test_acc=0.6, **{"keskar_full_0.001": 7.0}),
            dict(k=20, lambda_max=8.0, test_acc=0.62, **{"keskar_full_0.001": 6.0})]
    ref = dict(lambda_max=4.7, test_acc=0.64, **{"keskar_full_0.001": 5.5})
    fig = plotting.warm_start_figure(warm, ref, bound=10.0)
    left, right = fig.axes
    lines = {l.get_label(): l for l in left.lines}
    assert list(lines["λ_max"].get_xdata()) == [0.5, 20]  # k = 0 is drawn at 0.5
    assert list(lines["λ_max"].get_ydata()) == [10.0, 8.0]
    assert list(lines["2/η"].get_ydata()) == [10.0, 10.0]
    assert list(right.lines[0].get_ydata()) == [60.0, 62.0]  # per cent
    assert list(right.lines[1].get_ydata()) == [64.0, 64.0]  # the SB reference
    plt.close(fig)
    with pytest.raises(ValueError, match="warm"):
        plotting.warm_start_figure([], ref)
