"""Reading the committed curvature benchmark (``benchmarks/results/curvature.json``) for the book.

The appendix page renders the measurements of :mod:`benchmarks.curvature` without re-running
them. This module parses the result file and builds the page's tables and goal checks:

* :func:`load` reads a result file, :func:`models` lists its models in the page's order and
  :func:`get` finds one record;
* :func:`machine_note` describes the machine and how to re-run the benchmark;
* :func:`results_table` and :func:`hvp_table` are the tables of products, seconds and errors;
* :func:`check_goals` evaluates the goals the page states (fewer products and less time than
  PyHessian for λ_max, fewer products than every peer for the top five, half of Hutchinson's
  trace error at a fixed budget, a dense CNN spectrum in under a minute) and tabulates them.

Nothing is imported from the peers, so the page builds without them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from flatness.tables import MarkdownTable, markdown_table

__all__ = ["MODEL_ORDER", "EIGEN_METHODS", "TRACE_METHODS", "BUDGETS", "load", "models", "get",
           "ratio", "reached", "machine_note", "results_table", "hvp_table", "check_goals"]

#: The order of the models on the page.
MODEL_ORDER = ("mlp", "cnn", "mlp-wide")
#: The eigenvalue methods compared (flatness's first).
EIGEN_METHODS = ["flatness", "flatness-eigsh", "pyhessian", "hessian-eigenthings", "curvlinops"]
#: The trace methods compared.
TRACE_METHODS = ["flatness", "flatness-exact", "pyhessian", "curvlinops-xtrace"]
#: The budgets (Hessian-vector products) of the trace comparison.
BUDGETS = [10, 30, 100]
_RECORD_KEYS = {"model", "task", "method", "products", "seconds", "rel_error", "setting"}


def load(path) -> dict:
    """Read a result file of :mod:`benchmarks.curvature`.

    Args:
        path: the JSON file.

    Returns:
        The parsed result: ``date``, ``machine``, ``peers``, ``tolerance``, ``records``, ...

    Raises:
        ValueError: a file without ``records`` or ``tolerance``, or a record without one of the
            keys ``model``, ``task``, ``method``, ``products``, ``seconds``, ``rel_error``,
            ``setting``.
    """
    bench = json.loads(Path(path).read_text())
    for key in ("records", "tolerance"):
        if key not in bench:
            raise ValueError(f"path: {path} has no {key!r}")
    for i, r in enumerate(bench["records"]):
        missing = _RECORD_KEYS - set(r)
        if missing:
            raise ValueError(f"path: record {i} of {path} lacks {sorted(missing)}")
    return bench


def models(bench: dict) -> List[str]:
    """The models that the result has records of, in :data:`MODEL_ORDER`.

    >>> models({"records": [{"model": "cnn"}, {"model": "mlp"}]})
    ['mlp', 'cnn']
    """
    present = {r["model"] for r in bench["records"]}
    return [m for m in MODEL_ORDER if m in present]


def get(bench: dict, model: str, task: str, method: str) -> Optional[dict]:
    """The record of one measurement, or ``None``.

    >>> get({"records": [{"model": "mlp", "task": "top5", "method": "x", "products": 3}]},
    ...     "mlp", "top5", "x")["products"]
    3
    """
    for r in bench["records"]:
        if (r["model"], r["task"], r["method"]) == (model, task, method):
            return r
    return None


def ratio(bench: dict, model: str, task: str, method: str, key: str,
          other: str = "flatness") -> Optional[float]:
    """``other``'s ``key`` divided by ``method``'s for one model and task (``None`` when either is
    missing or the divisor is zero or missing)."""
    a, b = get(bench, model, task, other), get(bench, model, task, method)
    if a is None or b is None or not b[key] or a[key] is None:
        return None
    return a[key] / b[key]


def reached(bench: dict, record: Optional[dict]) -> bool:
    """Whether a record reached the benchmark's relative-error tolerance."""
    return (record is not None and record["rel_error"] is not None
            and record["rel_error"] <= bench["tolerance"])


def machine_note(bench: dict) -> str:
    """A Markdown paragraph: when and where the benchmark ran, the peers' versions, the load,
    and the command that re-runs it."""
    m = bench["machine"]
    return (f"Measured {bench['date']} on **{m['cpu']}**, {m['cores']} cores ({m['torch_threads']} "
            f"torch threads), torch {m['torch']}, Python {m['python']}; peers: "
            + ", ".join(f"{k} {v}" for k, v in bench["peers"].items())
            + f". Load average {bench['load_before']} before and {bench['load_after']} after the "
            "run (the machine was shared, so seconds are noisier than products). To re-run:\n\n"
            "```bash\n.venv/bin/pip install -r benchmarks/requirements.txt\n"
            ".venv/bin/python -m benchmarks.curvature          # --quick: the MLP only\n```")


def results_table(bench: dict, tasks: Sequence[str], methods: Sequence[str]) -> MarkdownTable:
    """Products, seconds and relative error of every (model, task, method) that was measured.

    Rows by model (:func:`models`), then task, then method, in the given orders; missing
    measurements are left out.
    """
    rows = []
    for model in models(bench):
        for task in tasks:
            for method in methods:
                r = get(bench, model, task, method)
                if r is not None:
                    err = "" if r["rel_error"] is None else f"{r['rel_error']:.1e}"
                    rows.append([model, task, method, r["products"], f"{r['seconds']:.2f}", err,
                                 r["setting"]])
    return markdown_table(["model", "task", "method", "products", "seconds", "rel. error",
                           "setting"], rows, align="lllrrrl")


def hvp_table(bench: dict) -> MarkdownTable:
    """Milliseconds per Hessian-vector product of every ``hvp`` record, by model."""
    rows = [[model, r["method"], r["products"], f"{1e3 * r['seconds'] / r['products']:.1f}",
             r["setting"]]
            for model in models(bench) for r in bench["records"]
            if r["model"] == model and r["task"] == "hvp"]
    return markdown_table(["model", "method", "vectors", "ms per product", "how"], rows,
                          align="llrrl")


def check_goals(bench: dict) -> Tuple[Dict[str, bool], MarkdownTable]:
    """The page's goals, each checked against the measurements, and the table that shows them.

    Per model: λ_max in at most 1/3 of PyHessian's products and 1/2 of its seconds (and within
    the tolerance); the top five eigenvalues with fewer products than every peer that reached the
    tolerance (a peer that never reached it needs at least what it spent); at every trace budget,
    at most half of Hutchinson's (PyHessian's) error; for the CNN, the dense spectrum in under a
    minute.

    Returns:
        ``({goal: holds}, table)``.
    """
    goals: Dict[str, bool] = {}
    rows = []
    for model in models(bench):
        p = ratio(bench, model, "lambda_max", "pyhessian", "products")
        s = ratio(bench, model, "lambda_max", "pyhessian", "seconds")
        ok = (p is not None and s is not None and reached(bench, get(bench, model, "lambda_max", "flatness"))
              and p <= 1 / 3 and s <= 1 / 2)
        goals[f"{model}: λ_max ≤ 1/3 of PyHessian's products and ≤ 1/2 of its time"] = ok
        rows.append([model, "λ_max vs PyHessian", f"products ×{p:.2f}, seconds ×{s:.2f}", str(ok)])
        fl = get(bench, model, "top5", "flatness")
        if fl is not None:
            peers = [m for m in EIGEN_METHODS[2:] if get(bench, model, "top5", m) is not None]
            ok = reached(bench, fl) and all(
                fl["products"] < get(bench, model, "top5", m)["products"]
                or not reached(bench, get(bench, model, "top5", m)) for m in peers)
            goals[f"{model}: top-5 with fewer products than every peer"] = ok
            rows.append([model, "top-5 products vs " + ", ".join(peers),
                         ", ".join(f"×{ratio(bench, model, 'top5', m, 'products'):.2f}" for m in peers),
                         str(ok)])
        for b in BUDGETS:
            q = ratio(bench, model, f"trace@{b}", "pyhessian", "rel_error")
            if q is not None:
                goals[f"{model}: trace error at {b} products ≤ 1/2 of Hutchinson's"] = q <= 1 / 2
                rows.append([model, f"trace@{b} error vs Hutchinson", f"×{q:.2f}", str(q <= 1 / 2)])
    dense = get(bench, "cnn", "dense_spectrum", "flatness")
    if dense is not None:
        goals["cnn: dense spectrum in under a minute"] = dense["seconds"] < 60
        rows.append(["cnn", "dense spectrum", f"{dense['seconds']:.0f} s", str(dense["seconds"] < 60)])
    return goals, markdown_table(["model", "goal", "measured", "holds"], rows)
