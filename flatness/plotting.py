"""Figure style and shared figure helpers for the book. Nothing happens at import time."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .stats import loglog_fit

__all__ = ["PALETTE", "use_book_style", "loglog_slope", "annotate_slope"]

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
