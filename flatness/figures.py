r"""The figures of chapters 03–06 (symmetries, reparametrization, the Occam factor, the noise
scale), as functions of the library's result objects.

Each function draws one figure and returns it (a ``matplotlib.figure.Figure``); the chapter
glues it (:func:`flatness.plotting.glue_figure`). matplotlib is imported inside the functions.

* :func:`top_eigenvalues_figure` — top Hessian eigenvalues of several parametrizations of one
  function, with an optional target line;
* :func:`alpha_sweep_figure` — :math:`\lambda_{\max}`, trace, Frobenius norm and Keskar's sharpness
  of the α-scaled copies of a network against the block-scaling predictions;
* :func:`plane_band_figure` — the sublevel set on the plane of two layer scalings and its area;
* :func:`coordinate_change_figure` — a one-dimensional loss in other coordinates (Dinh et al.'s
  Figure 5);
* :func:`weight_coordinates_figure` — one network's spectrum in several coordinate systems and the
  free radius of weight normalization;
* :func:`input_map_figure` — what input maps do to the input- and parameter-space curvature;
* :func:`lambda_sweep_figure` — accuracy, test cross-entropy and evidence ratio of
  :func:`flatness.prior_sweep.lambda_sweep` runs against the prior precision;
* :func:`batch_curves_figure`, :func:`optimum_slope_figure` and :func:`collapse_figure` — test
  accuracy against the batch size, the optimal batch size against ε and N, and the curves against
  a noise variable (:func:`flatness.noise_sweep.batch_peak_sweep` runs);
* :func:`schedule_figure` — learning curves of training schedules.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Tuple

import math

import numpy as np
import torch

from .plotting import annotate_slope

__all__ = ["top_eigenvalues_figure", "alpha_sweep_figure", "plane_band_figure",
           "coordinate_change_figure", "weight_coordinates_figure", "input_map_figure",
           "lambda_sweep_figure", "batch_curves_figure", "optimum_slope_figure", "collapse_figure",
           "schedule_figure"]


def _subplots(*args, **kwargs):
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def top_eigenvalues_figure(series: Mapping[str, Sequence[float]], target: Optional[float] = None,
                           title: str = "Top Hessian eigenvalues of one function", ax=None,
                           markers: str = "os^v", legend_loc: str = "center right",
                           ylabel: str = r"$\lambda_i$"):
    r"""The eigenvalues :math:`\lambda_1 \ge \lambda_2 \ge \dots` of each series against their
    index, on a log scale, with an optional horizontal line at ``target`` (labelled M).

    Args:
        series: legend label → eigenvalues (all of the same length).
        target: draw a dashed line at this value.
        title: the axes' title.
        ax: draw into these axes (a new figure otherwise).
        markers: one marker per series.
        legend_loc: the legend's location.
        ylabel: the y label.

    Returns:
        The figure.

    Raises:
        ValueError: no series, or series of different lengths.
    """
    lengths = {len(v) for v in series.values()}
    if len(lengths) != 1:
        raise ValueError("series: expected at least one series, all of the same length")
    fig, ax = _subplots(figsize=(6.4, 3.4)) if ax is None else (ax.figure, ax)
    idx = np.arange(1, lengths.pop() + 1)
    for (label, values), marker in zip(series.items(), markers):
        ax.semilogy(idx, values, marker + "-", label=label)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=0.8)
        ax.text(0.75 * idx[-1], target * 1.4, "M", color="grey")
    ax.set(xlabel="index i", ylabel=ylabel, title=title)
    ax.legend(loc=legend_loc, fontsize=8)
    return fig


def alpha_sweep_figure(alphas: Sequence[float], results: Mapping, prediction, grid,
                       slope: float, reference_sharpness: Mapping[str, float] = None):
    r"""Four panels against α: (a) :math:`\lambda_{\max}` with the asymptotes
    :math:`\alpha^2\lambda_{\max}(H_{BB})` and :math:`\alpha^{-2}\lambda_{\max}(H_{AA})`, (b) the
    trace and (c) the Frobenius norm with the block formulas, (d) Keskar's sharpness.

    Args:
        alphas: the α of the measured networks.
        results: a :func:`flatness.layers.curvature_profile`.
        prediction: a :class:`flatness.layers.BlockScalingPrediction` on ``grid`` (blocks ``A``
            scaled by α, ``B`` by 1/α).
        grid: the α of the predicted curves.
        slope: the fitted slope of :math:`\lambda_{\max}` for α ≥ 8 (for the legend).
        reference_sharpness: label → a sharpness value drawn as a horizontal line.

    Returns:
        The figure.
    """
    a, lam = np.asarray(alphas, float), prediction.lambda_max
    sharp_keys = [k for k in results if isinstance(k, tuple)]
    fig, axes = _subplots(2, 2, figsize=(9, 6.6), sharex=True, layout="tight")
    ax = axes[0, 0]
    ax.loglog(a, results["lambda_max"], "o", label="measured")
    ax.loglog(grid, grid ** 2 * lam["B"], ":", color="C1", label=r"$\alpha^2\lambda_{\max}(H_{BB})$")
    ax.loglog(grid, grid ** -2 * lam["A"], ":", color="C2", label=r"$\alpha^{-2}\lambda_{\max}(H_{AA})$")
    annotate_slope(ax, a[a >= 8], results["lambda_max"][a >= 8], label=f"fit α ≥ 8: slope {slope:.2f}")
    ax.set(ylim=(0.3 * results["lambda_max"].min(), 3 * results["lambda_max"].max()),
           title=r"(a) $\lambda_{\max}$")
    for ax, key, pred, title, label in (
            (axes[0, 1], "trace", prediction.trace, r"(b) $\mathrm{Tr}\,H$", "measured (trace estimate)"),
            (axes[1, 0], "fro", prediction.frobenius, r"(c) $\|H\|_F$", "measured")):
        ax.loglog(a, results[key], "o", label=label)
        ax.loglog(grid, pred, "-", color="grey", label="block formula")
        ax.set_title(title)
    ax = axes[1, 1]
    for (kind, eps), marker in zip(sharp_keys, "os^v"):
        ax.loglog(a, results[(kind, eps)], marker + "-", label=f"{kind}, ε = {eps:g}")
    for (label, value), ls in zip((reference_sharpness or {}).items(), ("--", ":", "-.")):
        ax.axhline(value, color="grey", lw=0.8, ls=ls, label=label)
    ax.set(ylim=(None, 30 * max(results[key].max() for key in sharp_keys)),
           title="(d) Keskar et al.'s sharpness")
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    for ax in axes.flat[:3]:
        ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel(r"$\alpha$ (layer 1 × α, layer 2 × 1/α)")
    return fig


def plane_band_figure(log_grid: Sequence[float], band, eps: float):
    r"""Left: :math:`\log_{10} L` on the :math:`(\log_2 s, \log_2 t)` grid with the contour
    :math:`L = L^* + \epsilon` and the orbit :math:`st = 1`; right: the band's sampled and exact
    area against the box side.

    Args:
        log_grid: the :math:`\log_2` grid of ``band.surface``.
        band: a :class:`flatness.sublevel.PlaneBand`.
        eps: the ε of the sublevel set.

    Returns:
        The figure.
    """
    log_grid = np.asarray(log_grid, float)
    fig, (ax, ax2) = _subplots(1, 2, figsize=(9.5, 3.8), layout="tight")
    cs = ax.contourf(log_grid, log_grid, np.log10(band.surface), levels=30, cmap="viridis")
    ax.contour(log_grid, log_grid, band.surface, levels=[band.loss + eps], colors="white", linewidths=1.2)
    ax.plot(log_grid, -log_grid, "--", color="C1", label=r"orbit $T_\alpha\theta$: $st = 1$")
    ax.plot([0], [0], "*", color="C1", ms=12, label=r"$\theta$")
    ax.set(xlabel=r"$\log_2 s$", ylabel=r"$\log_2 t$", title="log₁₀ training loss on the (s, t) plane")
    ax.legend(fontsize=8, loc="upper right")
    fig.colorbar(cs, ax=ax)
    ax2.semilogx(band.box_sides, band.exact_areas, "-", color="grey", label="exact")
    ax2.errorbar(band.box_sides, band.areas, yerr=band.stderrs, fmt="o", capsize=3,
                 label="sampled (± 1 s.e.)")
    ax2.set(xscale="log", xlabel="box side R", ylabel=r"area of $\{L < L(\theta)+\epsilon\}$ in $(0,R]^2$")
    ax2.legend()
    return fig


def coordinate_change_figure(loss, maps: Sequence, center: float, grid, fine):
    r"""Dinh et al.'s Figure 5: the loss against θ, then the same values against
    :math:`\eta = h(\theta)` for each map; dots on ``grid`` (regular in θ), a line on ``fine``, the
    chosen minimum in red.

    Args:
        loss: :math:`L`, a function of NumPy arrays.
        maps: maps with ``forward`` and attributes ``a``, ``b``
            (:class:`flatness.reparametrize.RadialMap`).
        center: the chosen minimum :math:`\hat\theta` (mapped to η = 0).
        grid, fine: NumPy arrays of θ.

    Returns:
        The figure (one panel per map, plus the original).
    """
    fig, axes = _subplots(1, len(maps) + 1, figsize=(3 * (len(maps) + 1), 3.1), layout="tight")
    for ax, h, tag in zip(axes, [None, *maps], "abcdefgh"):
        coords = (lambda t: t) if h is None else (lambda t, h=h: h.forward(torch.tensor(t)).numpy())
        ax.plot(coords(fine), loss(fine), "-", color="grey", lw=0.8)
        ax.plot(coords(grid), loss(grid), ".", ms=4)
        ax.axvline(center if h is None else 0.0, color="red", lw=1)
        ax.set(xlabel=r"$\theta$" if h is None else r"$\eta = h(\theta)$",
               title=f"({tag}) " + ("default parametrization" if h is None else f"a = {h.a:g}, b = {h.b:g}"))
    axes[0].set_ylabel("loss")
    return fig


def weight_coordinates_figure(spectra: Mapping[str, Sequence[float]], radii: Sequence[float],
                              radius_lambda: Sequence[float], lambda_theta: float):
    r"""Left: the top eigenvalues of one network in several coordinate systems
    (:func:`top_eigenvalues_figure`); right: :math:`\lambda_{\max}` in weight-normalized
    coordinates against the free radius, with the :math:`r^{-2}` law and λ_max in θ.

    Args:
        spectra: label → top eigenvalues.
        radii: the radii :math:`r`.
        radius_lambda: :math:`\lambda_{\max}` at each radius.
        lambda_theta: :math:`\lambda_{\max}` in the original coordinates.

    Returns:
        The figure.
    """
    fig, (ax, ax2) = _subplots(1, 2, figsize=(10, 3.6), layout="tight")
    top_eigenvalues_figure(spectra, title="Top eigenvalues, one network", ax=ax, legend_loc="lower right",
                           ylabel=r"$\lambda_i$ of the Hessian")
    low = min(min(v) for v in spectra.values())
    ax.set_ylim(0.1 * low, 3 * max(max(v) for v in spectra.values()))
    radii = np.asarray(radii, float)
    ax2.loglog(radii, radius_lambda, "o-")
    ax2.loglog(radii, radius_lambda[0] * (radii / radii[0]) ** -2.0, "--", color="grey", label=r"$\propto r^{-2}$")
    ax2.axhline(lambda_theta, color="C0", ls=":", lw=1, label=r"$\lambda_{\max}$ in $\theta$")
    ax2.set(xlabel=r"radius $r = \|v_j\|$", ylabel=r"$\lambda_{\max}$ in $(g, v)$",
            title="Weight normalization: the free radius")
    ax2.legend(fontsize=8)
    return fig


def input_map_figure(profile, scales: Mapping[str, float], base: str, other: str,
                     threshold: float = 1e-6):
    r"""Left: the mean input-space and the parameter-space :math:`\lambda_{\max}` against the
    input scale σ, with the :math:`\sigma^{-2}` law; right: per test signal, the ratio of input
    curvatures after/before the map ``other`` (signals above ``threshold`` × the largest).

    Args:
        profile: a :class:`flatness.reparam_experiments.InputMapProfile`.
        scales: map name → σ, for the isotropic maps.
        base: the name of the map with σ = 1.
        other: the name of the map compared per signal.
        threshold: the relative size below which a signal's curvature is left out.

    Returns:
        The figure.
    """
    sig = np.array(list(scales.values()), float)
    base_input = profile.input_lambda[base]
    fig, (ax, ax2) = _subplots(1, 2, figsize=(10, 3.6), layout="tight")
    ax.loglog(sig, [float(profile.input_lambda[k].mean()) for k in scales], "o-",
              label=r"input-space $\lambda_{\max}$ (mean over test signals)")
    ax.loglog(sig, [profile.param_lambda[k] for k in scales], "s-", label=r"parameter-space $\lambda_{\max}$")
    ax.loglog(sig, float(base_input.mean()) * sig ** -2.0, "--", color="grey", label=r"$\propto \sigma^{-2}$")
    ax.set(xlabel=r"input scale $\sigma$", title="Scaling the inputs")
    ax.legend(fontsize=8)
    before, after = base_input.numpy(), profile.input_lambda[other].numpy()
    keep = before > threshold * before.max()
    ax2.loglog(before[keep], after[keep] / before[keep], ".", ms=3, alpha=0.6)
    ax2.axhline(1.0, color="grey", ls="--", lw=0.8, label="unchanged")
    ax2.set(xlabel=r"$\lambda_{\max}(\nabla_x^2\ell)$, original inputs", ylabel="ratio after / before",
            title="Anisotropic map, per test signal")
    ax2.legend(fontsize=8)
    return fig


def lambda_sweep_figure(informative: Sequence[Mapping], random_runs: Mapping[int, Sequence[Mapping]],
                        n_train: int):
    r"""Three panels against the prior precision λ: train and test accuracy, test cross-entropy
    (with :math:`\ln 2`, the best possible under coin-flip labels), and the log evidence ratio to
    the null model per training sample; informative labels in blue, the first random-label draw
    in orange, the other draws dotted.

    Args:
        informative: the rows of :func:`flatness.prior_sweep.lambda_sweep` on the true labels.
        random_runs: label seed → rows on random labels.
        n_train: the number of training samples N.

    Returns:
        The figure.

    Raises:
        ValueError: no random-label run.
    """
    runs = list(random_runs.values())
    if not runs:
        raise ValueError("random_runs: expected at least one random-label sweep")
    col = lambda rows, key: np.array([r[key] for r in rows])  # noqa: E731
    fig, axes = _subplots(1, 3, figsize=(11, 3.4), layout="tight")
    for rows, name, c in ((informative, "informative", "C0"), (runs[0], "random", "C1")):
        axes[0].semilogx(col(rows, "lam"), 100 * col(rows, "train_acc"), "o-", color=c, label=f"{name}, train")
        axes[0].semilogx(col(rows, "lam"), 100 * col(rows, "test_acc"), "s--", color=c, label=f"{name}, test")
        axes[1].loglog(col(rows, "lam"), col(rows, "test_ce"), "o-", color=c, label=name)
        axes[2].semilogx(col(rows, "lam"), col(rows, "ratio") / n_train, "o-", color=c, label=name)
    for rows in runs[1:]:
        axes[2].semilogx(col(rows, "lam"), col(rows, "ratio") / n_train, ":", color="C1", alpha=0.6)
    axes[1].axhline(math.log(2), color="grey", lw=0.8, ls=":")
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[0].set(xlabel="prior precision λ", ylabel="accuracy (%)", title="accuracy")
    axes[1].set(xlabel="prior precision λ", ylabel="nats per test sample (log scale)", title="test cross-entropy")
    axes[2].set(xlabel="prior precision λ", ylabel="nats per training sample", title="log evidence ratio to null / N")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=8)
    return fig


def batch_curves_figure(panels: Sequence[Tuple[Sequence[Mapping], str, str, str]]):
    r"""Seed-mean test accuracy against the batch size, one panel per group of
    :func:`flatness.noise_sweep.batch_peak_sweep` runs: ± one standard deviation over seeds
    (with several seeds), the located optimum :math:`B_{\mathrm{opt}}` (dotted, when inside the
    grid) and crosses where a run diverged.

    Args:
        panels: ``(runs, key, label_format, title)`` per panel; each run is labelled
            ``label_format.format(run[key])``.

    Returns:
        The figure.
    """
    fig, axes = _subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), sharey=True, layout="tight")
    axes = np.atleast_1d(axes)
    for ax, (runs, key, fmt, title) in zip(axes, panels):
        for k, r in enumerate(runs):
            c = f"C{k}"
            ax.semilogx(r["batches"], 100 * r["mean"], "o-", color=c, label=fmt.format(r[key]), base=2)
            if len(r["acc"]) > 1:
                sd = 100 * r["acc"].std(0, ddof=1)
                ax.fill_between(r["batches"], 100 * r["mean"] - sd, 100 * r["mean"] + sd, color=c, alpha=0.15)
            if r["interior"]:
                ax.axvline(r["b_opt"], color=c, ls=":", lw=1)
            bad = r["diverged"].any(0)
            ax.plot(r["batches"][bad], 100 * r["mean"][bad], "x", color="k", ms=8)
        ax.set(xlabel="batch size B", title=title)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test accuracy (%)")
    return fig


def optimum_slope_figure(panels: Sequence[Tuple[Optional[Mapping], Sequence[Mapping], str]]):
    r""":math:`B_{\mathrm{opt}}` against a variable on log–log axes, with the least-squares slope
    (dashed), slope 1 through the points (dotted) and each seed's optimum (small dots).

    Args:
        panels: ``(slope, used, xlabel)`` per panel, with ``slope, used`` as returned by
            :func:`flatness.noise_sweep.optimum_slope` (``slope`` may be ``None``: an empty panel).

    Returns:
        The figure.
    """
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, axes = _subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), layout="tight")
    for ax, (s, used, label) in zip(np.atleast_1d(axes), panels):
        if s is not None:
            x = np.array(s["x"], float)
            ax.loglog(x, [r["b_opt"] for r in used], "o", color="C0", label="B_opt (seed mean)")
            seeds = len(used[0]["b_opt_seeds"])
            for i in range(seeds if seeds > 1 else 0):
                ax.loglog(x, [r["b_opt_seeds"][i] for r in used], ".", color="C0", alpha=0.4)
            fit = s["fit"]
            ax.loglog(x, np.exp(fit.intercept) * x ** fit.slope, "--", color="grey", label=f"fit, slope {fit.slope:.2f}")
            ax.loglog(x, np.exp(np.mean(np.log([r["b_opt"] for r in used]) - np.log(x))) * x, ":", color="C1",
                      label="slope 1 (theory)")
            ax.set_xticks(x, [f"{v:g}" for v in x])
            ax.legend(fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "1235" else ""))
        ax.set(xlabel=label, ylabel="B_opt")
    return fig


def collapse_figure(runs: Sequence[Mapping], panels: Sequence[Tuple[Callable, str]], n_full: int):
    r"""Seed-mean test accuracy of every run against the variables of ``panels`` (for example
    :math:`g = \varepsilon N/B` and :math:`\varepsilon/B`): curves that depend on that variable
    alone lie on top of each other. Runs with ``n_train == n_full`` are drawn solid, the others
    dashed.

    Args:
        runs: :func:`flatness.noise_sweep.batch_peak_sweep` results.
        panels: ``(run → x values, xlabel)`` per panel.
        n_full: the training-set size drawn solid.

    Returns:
        The figure.
    """
    fig, axes = _subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), sharey=True, layout="tight")
    axes = np.atleast_1d(axes)
    for ax, (x, xlabel) in zip(axes, panels):
        for k, r in enumerate(runs):
            ax.semilogx(x(r), 100 * r["mean"], "o-" if r["n_train"] == n_full else "s--",
                        color=f"C{k}", label=f"ε = {r['lr']:g}, N = {r['n_train']}")
        ax.set(xlabel=xlabel)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=7)
    return fig


def schedule_figure(histories: Mapping[str, Mapping], milestones: Sequence[int],
                    reference: str = "constant"):
    r"""Test accuracy and training loss per epoch, and training loss against the number of
    parameter updates, of several training histories (grey lines: the milestones; the
    ``reference`` schedule dotted).

    Args:
        histories: schedule name → a training history (``epoch``, ``test_acc``, ``train_loss``,
            ``steps``).
        milestones: the epochs after which the schedules change.
        reference: the name drawn dotted.

    Returns:
        The figure.
    """
    fig, axes = _subplots(1, 3, figsize=(12, 3.5), layout="tight")
    for k, (name, h) in enumerate(histories.items()):
        ls = ":" if name == reference else "-"
        axes[0].plot(h["epoch"], 100 * np.array(h["test_acc"]), ls, color=f"C{k}", label=name)
        axes[1].semilogy(h["epoch"], h["train_loss"], ls, color=f"C{k}", label=name)
        axes[2].semilogy(h["steps"], h["train_loss"], ls, color=f"C{k}", label=name)
    for m in milestones:
        axes[0].axvline(m + 0.5, color="grey", lw=0.6)
        axes[1].axvline(m + 0.5, color="grey", lw=0.6)
    for ax, xlabel, ylabel in zip(axes, ("epoch", "epoch", "parameter updates"),
                                  ("test accuracy (%)", "training loss", "training loss")):
        ax.set(xlabel=xlabel, ylabel=ylabel)
    axes[0].legend(fontsize=8)
    return fig
