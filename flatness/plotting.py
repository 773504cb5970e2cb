r"""Figure style and shared figure helpers for the book. Nothing happens at import time.

Every helper draws on axes it is given (or returns a new figure) and returns what it drew;
matplotlib is imported only where a figure is created, so the library works without it.

* :func:`use_book_style`: the book's rcParams (colour-blind-safe :data:`PALETTE`);
* :func:`loglog_slope`, :func:`annotate_slope`: power-law fits on log–log axes;
* :func:`plot_by_batch`: a metric of sweep records against the batch size (runs and means),
  :func:`batch_size_figure`: a panel of it per metric, a line per setting;
* :func:`plot_sharpness_history`: :math:`\lambda_{\max}` during training with the stability
  bound :math:`2/\eta`, :func:`plot_sharpness_histories` for several runs, and
  :func:`edge_of_stability_figure`, which adds :math:`\eta\lambda_{\max}` against the batch size;
* :func:`interpolation_figure`: loss and accuracy along a line in parameter space
  (:func:`flatness.landscape.interpolate`);
* :func:`plot_spectral_density`, :func:`plot_loss_surface`: a Hessian spectral density and a
  2-D loss surface (:func:`flatness.landscape.loss_surface`);
* :func:`glue_figure`: hand a finished figure to the book (myst-nb) and close it.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from .stability import stability_threshold
from .stats import by_batch, loglog_fit

__all__ = ["warm_start_figure", "PALETTE", "use_book_style", "loglog_slope", "annotate_slope", "plot_by_batch",
           "plot_sharpness_history", "interpolation_figure", "plot_spectral_density",
           "plot_loss_surface", "batch_size_figure", "plot_sharpness_histories",
           "edge_of_stability_figure", "glue_figure"]

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]


def use_book_style() -> None:
    """Set matplotlib's style for the book's figures (colour-blind-safe palette)."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update({
        "figure.figsize": (6.4, 3.8), "figure.dpi": 110, "savefig.dpi": 150,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False, "axes.prop_cycle": cycler(color=PALETTE),
        "font.size": 10, "legend.frameon": False,
    })


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (:func:`flatness.stats.loglog_fit`).

    >>> round(loglog_slope([1, 2, 4], [3, 12, 48]), 6)
    2.0
    """
    return loglog_fit(x, y).slope


def annotate_slope(ax, x, y, label: Optional[str] = None, **kwargs) -> float:
    """Draw the fitted power law through ``(x, y)`` on log–log axes and return its slope."""
    fit = loglog_fit(x, y)
    x = np.asarray(x, float)
    ax.plot(x, np.exp(fit.intercept) * x ** fit.slope, "--", color="grey",
            label=label or f"slope {fit.slope:.2f}", **kwargs)
    return fit.slope


def plot_by_batch(ax, records: Sequence[Mapping], metric: str, label: Optional[str] = None,
                  color=None, marker: str = "o", linestyle: str = "-", filled: bool = True,
                  runs: bool = True, means: bool = True):
    """A metric of sweep records against the batch size: every run faint, the means as a line.

    Args:
        ax: matplotlib axes.
        records: one mapping per run with ``batch_size`` and ``metric``.
        metric: the key to plot.
        label: the legend label (of the line of means, or of the runs without it).
        color, marker, linestyle: the style.
        filled: filled markers (open markers otherwise).
        runs: draw every run's value: faint small markers (alpha 0.3) under the line of means,
            or, with ``means=False``, markers in the full style and labelled.
        means: draw the line through the means per batch size (:func:`flatness.stats.by_batch`).

    Returns:
        The labelled matplotlib ``Line2D``: the line of means, whose data are the means of
        :func:`flatness.stats.by_batch`, or the runs' markers.

    Raises:
        ValueError: neither ``runs`` nor ``means``, and every error of
            :func:`flatness.stats.by_batch`.
    """
    if not (runs or means):
        raise ValueError("runs, means: expected at least one of them to be drawn")
    rows = by_batch(records, metric)
    style = {} if filled and color is None else {"mfc": color if filled else "none"}
    xs, ys = [r["batch_size"] for r in records], [r[metric] for r in records]
    if not means:
        (line,) = ax.plot(xs, ys, marker, color=color, label=label, **style)
        return line
    if runs:
        ax.plot(xs, ys, marker, color=color, alpha=0.3, ms=4)
    (line,) = ax.plot([B for B, *_ in rows], [m for _, m, _, _ in rows], linestyle,
                      marker=marker, color=color, label=label, **style)
    return line


def plot_sharpness_history(ax, history: Mapping, lr: float, momentum: float = 0.0, color=None,
                           label: Optional[str] = None, zero_at: float = 0.5):
    r""":math:`\lambda_{\max}` during training and the stability bound of its step size.

    Draws the ``history["lambda_max"]`` pairs ``(epoch, λ_max)`` (recorded by
    :class:`flatness.curvature.SharpnessTracker` when a configuration sets
    ``track_sharpness_every``), epoch 0 at ``zero_at`` so that it shows on a log axis, and a
    dashed horizontal line at :func:`flatness.stability.stability_threshold`
    :math:`(2+2\beta)/\eta` in the same colour.

    Args:
        ax: matplotlib axes.
        history: a training history with a ``"lambda_max"`` entry.
        lr, momentum: the step size and heavy-ball momentum of the run.
        color, label: the trajectory's colour and legend label.
        zero_at: where epoch 0 is drawn.

    Returns:
        ``(trajectory, bound)``: the two matplotlib ``Line2D``.

    Raises:
        ValueError: a history without ``(epoch, λ_max)`` pairs, or a bad ``lr``/``momentum``.
    """
    pairs = np.asarray(history.get("lambda_max", []), dtype=float)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise ValueError("history: expected a 'lambda_max' entry of (epoch, λ_max) pairs")
    bound = stability_threshold(lr, momentum)
    epochs, lam = pairs.T
    (traj,) = ax.plot(np.maximum(epochs, zero_at), lam, "-o", ms=2.5, color=color, label=label)
    line = ax.axhline(bound, color=traj.get_color(), ls="--", lw=0.8)
    return traj, line


def interpolation_figure(alphas: Sequence[float], curves: Mapping[str, Mapping],
                         marks: Optional[Mapping[float, str]] = None,
                         styles: Optional[Sequence[str]] = None, loss_label: str = "loss",
                         figsize=(8.0, 3.2)):
    r"""Loss (log scale, left) and accuracy (right) along a line in parameter space.

    Args:
        alphas: the positions :math:`\alpha` of the line :math:`(1-\alpha)\theta_a +
            \alpha\theta_b`.
        curves: ``{label: result}`` with results of :func:`flatness.landscape.interpolate`
            (``"loss"`` and ``"accuracy"`` arrays), one per data set (train, test).
        marks: ``{alpha: text}``: a thin vertical line with the text above the axes (the two
            ends, say ``{0: "SB", 1: "LB"}``).
        styles: one line style per curve (default solid).
        loss_label: the y label of the loss panel.
        figsize: the figure size.

    Returns:
        The matplotlib figure (not shown or closed).

    Raises:
        ValueError: ``styles`` of the wrong length, or a curve of another length than ``alphas``.
    """
    import matplotlib.pyplot as plt

    alphas = np.asarray(alphas, dtype=float)
    styles = ["-"] * len(curves) if styles is None else list(styles)
    if len(styles) != len(curves):
        raise ValueError(f"styles: expected {len(curves)} styles, got {len(styles)}")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=figsize)
    for (label, curve), style in zip(curves.items(), styles):
        for ax, key in ((ax1, "loss"), (ax2, "accuracy")):
            values = np.asarray(curve[key], dtype=float)
            if values.shape != alphas.shape:
                raise ValueError(f"curves: {label!r} has {values.size} {key} values for "
                                 f"{alphas.size} alphas")
            ax.plot(alphas, values, style, label=label)
    for ax in (ax1, ax2):
        for a, text in (marks or {}).items():
            ax.axvline(a, color="grey", lw=0.6)
            ax.annotate(text, (a, 1.0), xycoords=("data", "axes fraction"), ha="center",
                        va="bottom", fontsize=8)
    ax1.set(xlabel="α", ylabel=loss_label, yscale="log")
    ax2.set(xlabel="α", ylabel="accuracy")
    ax1.legend()
    fig.tight_layout()
    return fig


def plot_spectral_density(ax, grid: Sequence[float], density: Sequence[float],
                          eigenvalues: Sequence[float] = (), floor: float = 1e-8,
                          ylim_bottom: float = 1e-6):
    r"""A spectral density on a log scale, with vertical lines at given eigenvalues.

    Args:
        ax: matplotlib axes.
        grid, density: the density :math:`p(\lambda)` on a grid
            (:func:`flatness.curvature.spectral_density`).
        eigenvalues: eigenvalues to mark (the top ones from Lanczos, say).
        floor: the density is drawn as ``max(density, floor)`` (a log axis cannot show 0).
        ylim_bottom: the lower limit of the y axis.

    Returns:
        The density's ``Line2D``.

    Raises:
        ValueError: ``grid`` and ``density`` of different shapes, or a non-positive ``floor``.
    """
    grid, density = np.asarray(grid, dtype=float), np.asarray(density, dtype=float)
    if grid.shape != density.shape:
        raise ValueError(f"grid, density: shapes {grid.shape} and {density.shape} differ")
    if not floor > 0:
        raise ValueError(f"floor: expected a positive number, got {floor!r}")
    (line,) = ax.semilogy(grid, np.maximum(density, floor))
    for lam in eigenvalues:
        ax.axvline(lam, color="C1", lw=0.6, alpha=0.6)
    ax.set(xlabel="eigenvalue λ", ylabel="density p(λ)", ylim=(ylim_bottom, None))
    return line


def plot_loss_surface(ax, surface: Mapping, levels: int = 20, label: str = "training loss"):
    """Log-spaced contours of a 2-D loss surface, a star at the centre and a colour bar.

    Args:
        ax: matplotlib axes.
        surface: a result of :func:`flatness.landscape.loss_surface` (``"a"``, ``"b"`` and
            ``"loss"`` with ``loss[i, j]`` at ``(a[i], b[j])``).
        levels: the number of contour levels, geometric between the smallest and largest loss.
        label: the colour bar's label.

    Returns:
        The contour set.

    Raises:
        ValueError: a non-positive loss (the levels are logarithmic) or ``levels < 2``.
    """
    loss = np.asarray(surface["loss"], dtype=float)
    if not np.all(loss > 0):
        raise ValueError("surface: expected positive losses for logarithmic levels")
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels: expected an integer ≥ 2, got {levels!r}")
    values = np.logspace(np.log10(loss.min()), np.log10(loss.max()), levels)
    cs = ax.contour(surface["a"], surface["b"], loss.T, levels=values, cmap="viridis")
    ax.plot([0], [0], "k*", ms=10)
    ax.set(xlabel="direction 1 (a)", ylabel="direction 2 (b)", aspect="equal")
    ax.figure.colorbar(cs, ax=ax, label=label, format="%.2g")
    return cs


def batch_size_figure(groups: Mapping[str, Sequence[Mapping]],
                      panels: Sequence[Tuple[str, str, str]],
                      styles: Optional[Mapping[str, Mapping]] = None, ncols: int = 2,
                      figsize=(8.6, 6.2), legend_fontsize: float = 7):
    """Metrics of sweep records against the batch size: one panel per metric, one line per group.

    Every panel draws :func:`plot_by_batch` for every group on a log batch-size axis (shared by
    the panels); the legend is in the first panel.

    Args:
        groups: ``{label: records}``, one entry per line (a setting of the sweep).
        panels: ``(metric, title, yscale)`` per panel, ``yscale`` ``"log"`` or ``"linear"``.
        styles: ``{label: keyword arguments of plot_by_batch}`` (``color``, ``marker``,
            ``linestyle``, ``filled``).
        ncols: panels per row.
        figsize: the figure size.
        legend_fontsize: the legend's font size.

    Returns:
        The matplotlib figure (not shown or closed).

    Raises:
        ValueError: no groups or no panels, and every error of :func:`plot_by_batch`.
    """
    import matplotlib.pyplot as plt

    if not groups or not panels:
        raise ValueError("groups, panels: expected at least one group and one panel")
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols: expected a positive integer, got {ncols!r}")
    styles = styles or {}
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, sharex=True, squeeze=False)
    for ax, (metric, title, yscale) in zip(axes.flat, panels):
        for label, rows in groups.items():
            plot_by_batch(ax, rows, metric, label=label, **styles.get(label, {}))
        ax.set(xscale="log", yscale=yscale, title=title)
    for ax in axes[-1]:
        ax.set_xlabel("batch size B")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=legend_fontsize)
    fig.tight_layout()
    return fig


def plot_sharpness_histories(ax, runs: Sequence[Mapping], colors: Optional[Mapping] = None,
                             label: str = "B = {batch_size}", momentum: float = 0.0,
                             legend_fontsize: float = 7):
    r""":math:`\lambda_{\max}` during training for several runs of a sweep, each with its bound.

    Calls :func:`plot_sharpness_history` for every run on log–log axes (epoch 0 drawn at 0.5).

    Args:
        ax: matplotlib axes.
        runs: records of :func:`flatness.sweeps.run_sweep` (``history``, ``lr`` and the fields
            that ``label`` names) of runs that tracked :math:`\lambda_{\max}`.
        colors: ``{batch_size: colour}`` (so that a batch size has one colour in every panel);
            default the colour cycle.
        label: a format string filled from each run's record.
        momentum: the heavy-ball momentum of the runs (for the bound).
        legend_fontsize: the legend's font size.

    Returns:
        The trajectories' ``Line2D``, one per run.

    Raises:
        ValueError: no runs, and every error of :func:`plot_sharpness_history`.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("runs: expected at least one run")
    lines = []
    for r in runs:
        color = None if colors is None else colors[r["batch_size"]]
        traj, _ = plot_sharpness_history(ax, r["history"], r["lr"], momentum, color=color,
                                         label=label.format(**r))
        lines.append(traj)
    ax.set(xscale="log", yscale="log", xlabel="epoch (0 drawn at 0.5)", ylabel="λ_max")
    ax.legend(fontsize=legend_fontsize)
    return lines


def edge_of_stability_figure(histories: Mapping[str, Sequence[Mapping]],
                             final: Mapping[str, Sequence[Mapping]],
                             styles: Optional[Mapping[str, Mapping]] = None,
                             colors: Optional[Mapping] = None, momentum: float = 0.0,
                             figsize=(10.5, 3.4), legend_fontsize: float = 7):
    r"""The edge of stability in a batch-size sweep: :math:`\\lambda_{\\max}` against its bound.

    One panel per entry of ``histories`` with the :math:`\\lambda_{\\max}` trajectories of its runs
    and their bounds :math:`(2+2\\beta)/\\eta` (:func:`plot_sharpness_histories`), then one panel
    with :math:`\\eta\\lambda_{\\max}` at the end of training of every run of ``final`` against the
    batch size (:func:`plot_by_batch`, one marker per run) and the bound :math:`2+2\\beta` dashed
    (:func:`flatness.stability.stability_threshold` times :math:`\\eta`).

    Args:
        histories: ``{panel title: records}`` of runs that tracked :math:`\\lambda_{\\max}`
            (:func:`flatness.sweeps.run_sweep` records, with ``history`` and ``lr``).
        final: ``{label: records}`` with ``batch_size`` and ``eta_lambda``, one entry per setting.
        styles: ``{label: keyword arguments of plot_by_batch}`` for ``final``.
        colors: ``{batch_size: colour}`` for the trajectories.
        momentum: the heavy-ball momentum of the runs.
        figsize: the figure size.
        legend_fontsize: the legends' font size.

    Returns:
        The matplotlib figure (not shown or closed).

    Raises:
        ValueError: no ``final`` runs, and every error of the panels.
    """
    import matplotlib.pyplot as plt

    if not final:
        raise ValueError("final: expected at least one setting")
    fig, axes = plt.subplots(1, len(histories) + 1, figsize=figsize, squeeze=False)
    axes = axes[0]
    for ax, (title, runs) in zip(axes, histories.items()):
        plot_sharpness_histories(ax, runs, colors=colors, momentum=momentum,
                                 legend_fontsize=legend_fontsize)
        ax.set_title(title)
    ax = axes[-1]
    for label, runs in final.items():
        plot_by_batch(ax, runs, "eta_lambda", label=label, means=False,
                      **(styles or {}).get(label, {}))
    bound = 2.0 + 2.0 * momentum
    ax.axhline(bound, color="grey", ls="--", lw=0.8)
    ax.set(xscale="log", xlabel="batch size B", ylabel="η · λ_max at the end",
           title=f"distance to the bound {bound:g}")
    ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    return fig


def warm_start_figure(warm: Sequence[Mapping], reference: Mapping, bound: Optional[float] = None,
                      figsize=(8.6, 3.2)):
    """Keskar et al.'s Figure 5: sharpness and test accuracy against the small-batch epochs ``k``.

    Left: ``lambda_max`` and ``keskar_full_0.001`` of every warm-started run against its ``k``
    (log scale; ``k = 0`` is drawn at 0.5); right: its test accuracy in per cent. Dotted lines
    are the ``reference`` run's values (the small-batch run trained to the target), the dashed
    line ``bound`` (the stability bound 2/η of the large-batch phase).

    Args:
        warm: records with ``k``, ``lambda_max``, ``keskar_full_0.001`` and ``test_acc``.
        reference: a record with the same metrics.
        bound: an optional horizontal line on the left panel.
        figsize: the figure size.

    Returns:
        The figure.

    Raises:
        ValueError: no warm-started run.
    """
    import matplotlib.pyplot as plt

    if not warm:
        raise ValueError("warm: expected at least one run")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=figsize)
    x = np.maximum([w["k"] for w in warm], 0.5)
    for ax, metric, scale, fmt, color, label in [(ax1, "lambda_max", 1, "-o", "C0", "λ_max"),
                                                 (ax1, "keskar_full_0.001", 1, "-s", "C1", "Keskar, ε = 1e-3"),
                                                 (ax2, "test_acc", 100, "-o", "C2", None)]:
        ax.plot(x, [scale * w[metric] for w in warm], fmt, color=color, label=label)
        ax.axhline(scale * reference[metric], color=color, ls=":", lw=1,
                   label="SB only" if ax is ax2 else None)
    if bound is not None:
        ax1.axhline(bound, color="grey", ls="--", lw=0.8, label="2/η")
    for ax, ylabel in ((ax1, "sharpness"), (ax2, "test accuracy, %")):
        ax.set(xscale="log", xlabel="SB epochs k before LB (0 drawn at 0.5)", ylabel=ylabel)
        ax.legend(fontsize=7)
    return fig


def glue_figure(name: str, fig) -> None:
    """Lay out ``fig``, store it for the book under ``name``, show it in the notebook, close it.

    The figure is glued with myst-nb's ``glue(name, fig, display=False)`` (a ``{glue:figure}``
    directive places it, numbered and captioned, in the book) and also displayed in the cell's
    output, so that a reader of the notebook in JupyterLab sees it. Tag the cell
    ``remove-output`` so that the book shows it once, where the directive puts it (myst-nb reads
    glued data from every cell, whatever its tags).

    Args:
        name: the glue key.
        fig: a matplotlib figure.

    Raises:
        ValueError: an empty name.
    """
    import matplotlib.pyplot as plt
    from IPython.display import display
    from myst_nb import glue

    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    fig.tight_layout()
    glue(name, fig, display=False)
    display(fig)
    plt.close(fig)
