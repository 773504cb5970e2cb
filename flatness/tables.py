r"""Markdown tables of results, for notebooks and for the book.

:func:`markdown_table` turns a header and rows into a :class:`MarkdownTable`, which Jupyter and
the book (myst-nb) render as a table through its ``_repr_markdown_`` and which ``str()`` turns
into Markdown source. Cells are formatted here, so that every chapter formats numbers the same
way, and a ``|`` inside a cell (``ln |H|``) is escaped, so that it cannot split the row.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional, Sequence

__all__ = ["MarkdownTable", "markdown_table", "format_number", "mean_pm"]


def format_number(value, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits (``"—"`` for ``None`` or NaN).

    >>> format_number(0.0012345), format_number(1234.5), format_number(None), format_number(7)
    ('0.00123', '1.23e+03', '—', '7')
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}g}"
    return str(value)


def mean_pm(values: Iterable[float], digits: int = 2, scale: float = 1.0) -> str:
    """``"mean ± std"`` of ``values`` (sample standard deviation; the mean alone for one value).

    >>> mean_pm([1.0, 2.0, 3.0])
    '2.00 ± 1.00'
    >>> mean_pm([0.5], scale=100, digits=1)
    '50.0'
    """
    xs = [scale * float(v) for v in values]
    if not xs:
        raise ValueError("values: expected at least one value")
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cell(value, digits: int) -> str:
    text = value if isinstance(value, str) else format_number(value, digits)
    return text.replace("\n", " ").replace("|", "\\|")


class MarkdownTable:
    """A rendered Markdown table (see :func:`markdown_table`)."""

    def __init__(self, text: str):
        self.text = text

    def _repr_markdown_(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], digits: int = 3,
                   align: Optional[str] = None) -> MarkdownTable:
    r"""A Markdown table from a header and rows.

    Args:
        header: the column titles.
        rows: one sequence of cells per row; strings are kept as they are, numbers formatted
            with :func:`format_number` (``digits`` significant digits), ``None`` shown as ``—``.
        digits: significant digits of numeric cells.
        align: one letter per column, ``l``, ``c`` or ``r`` (default: left).

    Returns:
        A :class:`MarkdownTable`.

    Raises:
        ValueError: a row whose length differs from the header's, or a bad ``align``.

    >>> print(markdown_table(["k", "ln |H|"], [[1, 0.5], [2, None]]))
    | k | ln \|H\| |
    |---|---|
    | 1 | 0.5 |
    | 2 | — |
    """
    header = [str(h) for h in header]
    if not header:
        raise ValueError("header: expected at least one column")
    if align is None:
        rule = ["---"] * len(header)
    else:
        if len(align) != len(header) or set(align) - set("lcr"):
            raise ValueError(f"align: expected {len(header)} letters from 'l', 'c', 'r', got {align!r}")
        rule = [{"l": "---", "c": ":-:", "r": "--:"}[a] for a in align]
    lines = ["| " + " | ".join(_cell(h, digits) for h in header) + " |", "|" + "|".join(rule) + "|"]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"rows: row {i} has {len(row)} cells, the header {len(header)}")
        lines.append("| " + " | ".join(_cell(c, digits) for c in row) + " |")
    return MarkdownTable("\n".join(lines))
