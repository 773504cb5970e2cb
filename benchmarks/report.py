"""Reading the committed curvature benchmark (``benchmarks/results/curvature.json``) for the book.

The appendix page renders the measurements of :mod:`benchmarks.curvature` without re-running
them. This module parses the result file and builds the page's tables and goal checks:

* :func:`load` reads a result file, :func:`models` lists its models in the page's order and
  :func:`get` finds one record;
* :func:`machine_note` describes the machine and how to re-run the benchmark;
* :func:`results_table` and :func:`hvp_table` are the tables of products, seconds and errors;
* :func:`check_goals` evaluates the goals the page states (fewer products and less time than
  PyHessian for λ_max, fewer products than every peer for the top five, half of Hutchinson's
  trace error at a fixed budget, a dense CNN spectrum in under a minute) and tabulates them;
  :func:`goals` computes the same goals as :class:`Goal` records with decisions
  (:mod:`flatness.claims`), and :func:`goal_claims` turns them into the page's claims;
* :func:`load_population`, :func:`population_table` and :func:`population_goals` do the same
  for the population benchmark (``benchmarks/results/population.json``, from
  :mod:`benchmarks.population`): at least 10× the training throughput of a loop over members at
  P = 20, B = 64 on the MLP, at least 5× for λ_max of 20 members, and no slower at P = 1.

Nothing is imported from the peers, so the page builds without them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from flatness.claims import Claim, Decision, Measurement, all_of, interval_above, interval_below
from flatness.tables import MarkdownTable, markdown_table

__all__ = ["MODEL_ORDER", "EIGEN_METHODS", "TRACE_METHODS", "BUDGETS", "load", "models", "get",
           "ratio", "reached", "machine_note", "results_table", "hvp_table", "check_goals", "Goal",
           "goals", "goal_claims", "load_population", "population_note", "population_table",
           "population_goals"]

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


DEFAULTS_TASK = "lambda_max@defaults"


def _defaults_reading(bench: dict, model: str) -> Optional[dict]:
    """flatness's λ_max at its defaults against PyHessian's at its defaults (task
    ``lambda_max@defaults``): ratios of products and seconds, and both errors; None when either
    was not measured."""
    fl = get(bench, model, DEFAULTS_TASK, "flatness@defaults")
    ph = get(bench, model, DEFAULTS_TASK, "pyhessian@defaults")
    if fl is None or ph is None or fl["rel_error"] is None or ph["rel_error"] is None:
        return None
    return {"products": fl["products"] / ph["products"], "seconds": fl["seconds"] / ph["seconds"],
            "error": fl["rel_error"], "peer_error": ph["rel_error"]}


def check_goals(bench: dict) -> Tuple[Dict[str, bool], MarkdownTable]:
    """The page's goals, each checked against the measurements, and the table that shows them.

    Per model: λ_max in at most 1/3 of PyHessian's products and 1/2 of its seconds (and within
    the tolerance); at the libraries' defaults, λ_max within the tolerance in at most 1/2 of
    PyHessian's default products and seconds; the top five eigenvalues with fewer products than every peer that reached the
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
        fl = get(bench, model, "lambda_max", "flatness")
        if p is not None and s is not None and fl is not None and fl["rel_error"] is not None:
            ok = reached(bench, fl) and p <= 1 / 3 and s <= 1 / 2
            goals[f"{model}: λ_max ≤ 1/3 of PyHessian's products and ≤ 1/2 of its time"] = ok
            rows.append([model, "λ_max vs PyHessian", f"products ×{p:.2f}, seconds ×{s:.2f}", str(ok)])
        d = _defaults_reading(bench, model)
        if d is not None:
            ok = d["error"] <= bench["tolerance"] and d["products"] <= 1 / 2 and d["seconds"] <= 1 / 2
            goals[f"{model}: λ_max at defaults ≤ 1/2 of PyHessian's default products and time"] = ok
            rows.append([model, "λ_max at defaults vs PyHessian's defaults",
                         f"products ×{d['products']:.2f}, seconds ×{d['seconds']:.2f}, "
                         f"error {d['error']:.1e} (PyHessian {d['peer_error']:.1e})", str(ok)])
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


# --- the goals as claims ---------------------------------------------------------------------------

class Goal(NamedTuple):
    """One design goal, decided from the committed measurements.

    Attributes:
        id: a slug (``"cnn-lambda-max"``), the claim's id.
        statement: the goal in one sentence.
        target: the goal's number, as the page states it (the claim's "paper" column).
        decision: the :class:`flatness.claims.Decision` computed from the measurements.
    """

    id: str
    statement: str
    target: str
    decision: Decision


def _at_most(value: float, threshold: float, name: str) -> Decision:
    # "value ≤ t" for a number that may equal t exactly (5 products against 15 is 1/3): below the
    # next float above t, so that the outcome is check_goals' ``value <= t``.
    return interval_below(Measurement(name, value), threshold=math.nextafter(threshold, math.inf))


def goals(bench: dict) -> List[Goal]:
    r"""The goals of :func:`check_goals` as :class:`Goal` records, with the same outcomes.

    Per model (:func:`models`): ``<model>-lambda-max``: flatness's λ_max within the tolerance,
    with products and seconds at most 1/3 and 1/2 of PyHessian's; ``<model>-lambda-max-defaults``:
    the same at both libraries' defaults (half the products and the time, flatness within the
    tolerance on its own); ``<model>-top5``: the top five
    with fewer products than every peer that reached the tolerance (the measurement is the
    largest ratio of flatness's products to such a peer's, which must be below 1);
    ``<model>-trace-<b>``: flatness's trace error at most half of Hutchinson's (PyHessian's) at
    ``b`` products; and ``cnn-dense-spectrum``: the CNN's dense spectrum in under 60 s. Every
    number is a deterministic reading of the file, so it is compared as a point.

    Args:
        bench: a result of :func:`load`.

    Returns:
        The goals, in :func:`check_goals`' order.
    """
    out: List[Goal] = []
    for model in models(bench):
        p = ratio(bench, model, "lambda_max", "pyhessian", "products")
        s = ratio(bench, model, "lambda_max", "pyhessian", "seconds")
        fl = get(bench, model, "lambda_max", "flatness")
        if p is not None and s is not None and fl is not None and fl["rel_error"] is not None:
            out.append(Goal(f"{model}-lambda-max", f"{model}: λ_max at a third of PyHessian's "
                            "products and half its time.", "≤ 1/3 of the products, ≤ 1/2 of the time",
                            all_of(_at_most(fl["rel_error"], bench["tolerance"], "relative error"),
                                   _at_most(p, 1 / 3, "products / PyHessian's"),
                                   _at_most(s, 1 / 2, "seconds / PyHessian's"))))
        d = _defaults_reading(bench, model)
        if d is not None:
            out.append(Goal(f"{model}-lambda-max-defaults", f"{model}: at its defaults, λ_max to "
                            "1e-3 on its own, in half of PyHessian's default products and time.",
                            "error ≤ 1e-3, ≤ 1/2 of the products and of the time",
                            all_of(_at_most(d["error"], bench["tolerance"], "relative error"),
                                   _at_most(d["products"], 1 / 2, "products / PyHessian's at defaults"),
                                   _at_most(d["seconds"], 1 / 2, "seconds / PyHessian's at defaults"))))
        fl = get(bench, model, "top5", "flatness")
        if fl is not None and fl["rel_error"] is not None:
            peers = [m for m in EIGEN_METHODS[2:] if reached(bench, get(bench, model, "top5", m))]
            decisions = [_at_most(fl["rel_error"], bench["tolerance"], "relative error")]
            if peers:
                worst = max(fl["products"] / get(bench, model, "top5", m)["products"] for m in peers)
                decisions.append(interval_below(Measurement(
                    "products / the fewest of a peer (" + ", ".join(peers) + ")", worst), threshold=1.0))
            out.append(Goal(f"{model}-top5", f"{model}: the top five eigenvalues with fewer "
                            "products than every other library.", "fewer products than every peer",
                            all_of(*decisions)))
        for b in BUDGETS:
            q = ratio(bench, model, f"trace@{b}", "pyhessian", "rel_error")
            if q is not None:
                out.append(Goal(f"{model}-trace-{b}", f"{model}: half of Hutchinson's trace error "
                                f"at {b} products.", "≤ 1/2 of Hutchinson's error",
                                _at_most(q, 1 / 2, "error / Hutchinson's")))
    dense = get(bench, "cnn", "dense_spectrum", "flatness")
    if dense is not None:
        out.append(Goal("cnn-dense-spectrum", "cnn: the dense 3,002 × 3,002 spectrum in under a "
                        "minute.", "< 60 s", interval_below(Measurement("seconds", dense["seconds"]),
                                                           threshold=60.0)))
    return out


def goal_claims(goal_list: Sequence[Goal], expected: Mapping[str, str], chapter: str,
                section: str, source: str) -> List[Claim]:
    """The page's claims: one :class:`flatness.claims.Claim` per goal.

    Args:
        goal_list: from :func:`goals` or :func:`population_goals`.
        expected: ``{goal id: expected outcome}``, written in the chapter, for every goal.
        chapter: the chapter's file stem.
        section: the heading where the goals are checked.
        source: where the goal is stated (the claim's source).

    Returns:
        The claims, in the order of ``goal_list``.

    Raises:
        ValueError: ``expected`` misses a goal or names one that is not measured.
    """
    ids = [g.id for g in goal_list]
    missing, unknown = sorted(set(ids) - set(expected)), sorted(set(expected) - set(ids))
    if missing or unknown:
        raise ValueError(f"expected: no outcome for {missing}; not measured: {unknown}")
    return [Claim(chapter, g.id, g.statement, g.target, source, g.decision, expected[g.id],
                  section=section) for g in goal_list]


# --- the population benchmark ----------------------------------------------------------------------

_POPULATION_KEYS = {"task", "model", "P", "population_seconds", "loop_seconds", "speedup"}


def load_population(path) -> dict:
    """Read a result file of :mod:`benchmarks.population`.

    Raises:
        ValueError: a file without ``records``, or a record without one of ``task``, ``model``,
            ``P``, ``population_seconds``, ``loop_seconds``, ``speedup``.
    """
    bench = json.loads(Path(path).read_text())
    if "records" not in bench:
        raise ValueError(f"path: {path} has no 'records'")
    for i, r in enumerate(bench["records"]):
        missing = _POPULATION_KEYS - set(r)
        if missing:
            raise ValueError(f"path: record {i} of {path} lacks {sorted(missing)}")
    return bench


def population_note(bench: dict) -> str:
    """A Markdown paragraph: when and where the population benchmark ran, the load, its notes and
    the command that re-runs it."""
    m = bench["machine"]
    notes = "".join(f"\n- {n}" for n in bench.get("notes", []))
    return (f"Measured {bench['date']} on **{m['cpu']}**, {m['cores']} cores ({m['torch_threads']} "
            f"torch thread(s)), torch {m['torch']}; load average {bench['load_before']} before and "
            f"{bench['load_after']} after the run.{notes}\n\nTo re-run: "
            f"`.venv/bin/{bench.get('command', 'python -m benchmarks.population')}`.")


def population_table(bench: dict) -> MarkdownTable:
    """Seconds and speed-up of the population against the loop over members, one row per cell."""
    rows = [[r["task"], r["model"], r["P"], r.get("batch_size") or "", f"{r['population_seconds']:.2f}",
             f"{r['loop_seconds']:.2f}", f"×{r['speedup']:.2f}"] for r in bench["records"]]
    return markdown_table(["task", "model", "P", "B", "population s", "loop s", "speed-up"], rows,
                          align="llrrrrr")


def _population_cell(bench: dict, **equal) -> List[dict]:
    return [r for r in bench["records"] if all(r.get(k) == v for k, v in equal.items())]


def population_goals(bench: dict) -> List[Goal]:
    """The population benchmark's goals as :class:`Goal` records (speed-ups as points).

    ``population-train``: at least 10× the training throughput of the loop at P = 20, B = 64
    (MLP); ``population-lambda-max``: at least 5× for λ_max of 20 members (MLP);
    ``population-p1``: no slower than the loop with one member, in every P = 1 cell (the smallest
    speed-up must be at least 1). Goals without a measurement are left out.
    """
    out: List[Goal] = []
    train = _population_cell(bench, task="train", model="mlp", P=20, batch_size=64)
    if train:
        out.append(Goal("population-train", "A population of 20 MLPs trains at 10× the throughput "
                        "of a loop over them (B = 64).", "≥ 10×", interval_above(
                            Measurement("speed-up", train[0]["speedup"]),
                            threshold=math.nextafter(10.0, -math.inf))))
    lam = _population_cell(bench, task="lambda_max", model="mlp", P=20)
    if lam:
        out.append(Goal("population-lambda-max", "λ_max of 20 MLPs at 5× the speed of a loop.",
                        "≥ 5×", interval_above(Measurement("speed-up", lam[0]["speedup"]),
                                               threshold=math.nextafter(5.0, -math.inf))))
    single = _population_cell(bench, P=1)
    if single:
        out.append(Goal("population-p1", "With one member the population is no slower than the loop.",
                        "≥ 1× in every P = 1 cell", interval_above(
                            Measurement(f"smallest speed-up of {len(single)} cells",
                                        min(r["speedup"] for r in single)),
                            threshold=math.nextafter(1.0, -math.inf))))
    return out
