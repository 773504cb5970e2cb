"""Refresh the outputs that nbval compares in a chapter notebook.

Chapters are committed without outputs, except in the cells marked ``# NBVAL_CHECK_OUTPUT``
(the claim cells' verdict lines), which nbval (``--nbval-lax``) compares on every test run.
This script executes a chapter in quick mode with papermill, copies the marked cells' outputs
into the source notebook and clears every other output.

Usage: ``python tools/expected_outputs.py chapters/NAME.ipynb [...]`` (``make expected``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat

MARK = "NBVAL_CHECK_OUTPUT"


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and MARK in cell.source


def strip_outputs(nb, executed=None):
    """Clear outputs, keeping (from ``executed`` when given) those of the marked cells."""
    done = {c.get("id"): c for c in executed.cells} if executed is not None else {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        source = done.get(cell.get("id")) if done else None
        if source is None and executed is not None and i < len(executed.cells):
            source = executed.cells[i]
        if is_checked(cell):
            if source is not None:
                cell.outputs = [o for o in source.outputs if o.get("name") != "stderr"]
                cell.execution_count = 1
        else:
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    return nb


def refresh(path: Path) -> None:
    import papermill

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        papermill.execute_notebook(str(path), str(out), parameters={"QUICK": True},
                                   cwd=str(path.parent), kernel_name="python3",
                                   progress_bar=False)
        executed = nbformat.read(out, as_version=4)
    from tools.normalize_notebooks import id_prefix, normalize

    path.write_text(nbformat.writes(normalize(strip_outputs(nb, executed), id_prefix(path))) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        refresh(Path(arg))
        print(f"refreshed {arg}")
