"""Keep the committed chapter notebooks in one canonical form, so that their diffs show only
what a person changed.

The chapters stay ``.ipynb`` files (not paired MyST markdown) because nbval compares the claim
cells' outputs against the outputs stored in the notebook itself: a text-only pairing would
have no place for them. The canonical form is:

* every cell has a stable, readable id ``<chapter>-<n>`` (``01-07``; ``app-03`` for the
  appendix); an id once given is kept, a new cell gets the next free number, so inserting a
  cell never renames the others;
* no outputs, execution counts or execution metadata, except the outputs of the cells marked
  ``# NBVAL_CHECK_OUTPUT`` (stderr removed, execution count 1);
* no papermill or widget metadata; the kernel is ``python3``;
* nbformat's own JSON layout (one-space indent, a final newline).

``python tools/normalize_notebooks.py chapters/*.ipynb`` rewrites files in place (``make
normalize``); ``--check`` lists the files that are not canonical and exits 1;
``--hide-injected FILE...`` tags papermill's injected-parameters cell of executed copies
``remove-cell`` (the Makefile runs it on every executed chapter). The unit tests
run the check on every chapter.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

MARK = "NBVAL_CHECK_OUTPUT"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def id_prefix(path: Path) -> str:
    """``"01"`` for ``02_large_batch.ipynb``; ``"app"`` for a file without a leading number."""
    match = re.match(r"(\d+)_", path.name)
    return match.group(1) if match else "app"


def normalize(nb, prefix: str):
    """Return ``nb`` in canonical form (modified in place)."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)$")
    taken = {int(m.group(1)) for c in nb.cells if (m := pattern.match(c.get("id", "")))}
    seen = set()
    counter = 0
    for cell in nb.cells:
        cid = cell.get("id", "")
        if not pattern.match(cid) or cid in seen:
            while counter in taken:
                counter += 1
            taken.add(counter)
            cid = f"{prefix}-{counter:02d}"
        seen.add(cid)
        cell["id"] = cid
        for key in ("execution", "papermill", "collapsed", "scrolled", "ExecuteTime"):
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            if MARK in cell.source:
                cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
                cell.execution_count = 1 if cell.outputs else None
            else:
                cell.outputs = []
                cell.execution_count = None
    for key in ("papermill", "widgets", "jupytext"):
        nb.metadata.pop(key, None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    return nb


def canonical_text(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return nbformat.writes(normalize(nb, id_prefix(path))) + "\n"


def hide_injected_parameters(nb):
    """Tag papermill's injected-parameters cell ``remove-cell``, so that the book does not show
    it beside the chapter's own parameters cell (an executed copy only; ``nb`` is changed)."""
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = tags + ["remove-cell"]
    return nb


def main(argv) -> int:
    if argv and argv[0] == "--hide-injected":
        for arg in argv[1:]:
            path = Path(arg)
            path.write_text(nbformat.writes(hide_injected_parameters(nbformat.read(path, as_version=4))))
        return 0
    check = "--check" in argv
    paths = [Path(a) for a in argv if a != "--check"]
    if not paths:
        print(__doc__)
        return 2
    bad = []
    for path in paths:
        text = canonical_text(path)
        if path.read_text() != text:
            bad.append(path)
            if not check:
                path.write_text(text)
    if check and bad:
        print("not in canonical form (run `make normalize`):", *map(str, bad), sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
