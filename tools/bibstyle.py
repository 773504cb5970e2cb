"""An author–year bibliography for the book (a Sphinx extension).

The book cites author–year (``bibtex_reference_style: author_year``), but pybtex's built-in
formatting styles label the list by number (``plain``) or by an alpha key (``alpha``), so a reader
who sees "Keskar et al. [2017]" in the text finds "[1]" in the list. This extension registers a
pybtex label style ``author_year`` that labels each entry the way the text cites it — "Hochreiter
and Schmidhuber, 1997", "Keskar et al., 2017", with a/b appended when two entries would get the
same label — and a formatting style ``authoryear`` (pybtex's ``plain`` with that label style and
its author–year–title sort). ``_config.yml`` selects it with ``bibtex_default_style: authoryear``.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Iterator


def _last_names(person) -> str:
    """A person's last name as plain text (``M{\\"u}ller`` becomes ``Müller``)."""
    from pybtex.richtext import Text

    return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")


def author_year_label(entry) -> str:
    """The label "Name, year", "Name and Name, year" or "Name et al., year" of one entry.

    Args:
        entry: a ``pybtex.database.Entry``.

    Returns:
        The label; entries without authors fall back to their editors, then to their key.
    """
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last_names(p) for p in people]
    if not names:
        who = entry.key
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    year = entry.fields.get("year", "")
    return f"{who}, {year}" if year else who


def _styles():
    from pybtex.style.formatting.plain import Style as PlainStyle
    from pybtex.style.labels import BaseLabelStyle

    class AuthorYearLabelStyle(BaseLabelStyle):
        """Author–year labels, disambiguated with a, b, ... in the list's order."""

        def format_labels(self, sorted_entries: Iterable) -> Iterator[str]:
            labels = [author_year_label(e) for e in sorted_entries]
            count, seen = Counter(labels), Counter()
            for label in labels:
                if count[label] == 1:
                    yield label
                else:
                    yield label + chr(ord("a") + seen[label])
                    seen[label] += 1

    class AuthorYearStyle(PlainStyle):
        """pybtex's plain style, labelled author–year."""

        default_label_style = "author_year"

    return AuthorYearLabelStyle, AuthorYearStyle


def setup(app):
    """Register the ``author_year`` label style and the ``authoryear`` formatting style."""
    from pybtex.plugin import register_plugin

    label_style, style = _styles()
    register_plugin("pybtex.style.labels", "author_year", label_style, force=True)
    register_plugin("pybtex.style.formatting", "authoryear", style, force=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
