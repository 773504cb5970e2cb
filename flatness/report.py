r"""A flatness report for any trained model: every measure of :data:`flatness.measures.MEASURES`,
with its cost and its declared invariances, in one table.

.. code-block:: python

    from flatness.report import report
    rep = report(model, torch.nn.CrossEntropyLoss(), (X_train, y_train), (X_test, y_test))
    rep  # renders as a table in Jupyter; rep.to_dict() for plain data

Each row says what was measured (the value), what it cost (Hessian-vector products, seconds),
which of the symmetries ``alpha_scale``, ``neuron_scale``, ``weight_norm`` leave it unchanged, and
whether a budget skipped or truncated it. A value is only comparable between networks of the
same architecture trained on the same data; the invariance flags say whether a rescaling of the
weights that leaves the function unchanged can also change the number.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Union

from torch import nn

from .checks import check_positive
from .measures import INVARIANCES, MEASURES, Measure
from .tables import format_number, markdown_table
from .training import _progress_enabled, _tqdm, evaluate

__all__ = ["Budget", "ReportRow", "FlatnessReport", "report"]


@dataclass(frozen=True)
class Budget:
    """Limits on what a report may spend.

    Attributes:
        hvps: at most this many Hessian-vector products per Hessian-based measure; a measure
            whose default needs more is truncated (run with fewer products, and marked so).
        seconds: a wall-clock budget for the whole report; once it is spent, the remaining
            measures are skipped (and marked so). Measures flagged ``expensive`` are skipped
            as soon as less than half of it is left.
    """

    hvps: Optional[int] = None
    seconds: Optional[float] = None

    def __post_init__(self):
        if self.hvps is not None:
            check_positive(self.hvps, "budget.hvps", integer=True)
        if self.seconds is not None:
            check_positive(self.seconds, "budget.seconds")


@dataclass(frozen=True)
class ReportRow:
    """One measure of a :class:`FlatnessReport`.

    Attributes:
        name, label: the registry key and display name.
        value: the value (NaN when skipped).
        hvps: Hessian-vector products (``None`` when not reported by the measure).
        seconds: wall-clock time.
        status: ``"ok"``, ``"truncated: …"`` or ``"skipped: …"``.
        invariant_to: ``{symmetry: declared invariant}``.
    """

    name: str
    label: str
    value: float
    hvps: Optional[int]
    seconds: float
    status: str
    invariant_to: Dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class FlatnessReport:
    """The result of :func:`report`: one :class:`ReportRow` per measure, plus the model's
    losses and accuracies. Renders as a table in Jupyter."""

    rows: List[ReportRow]
    summary: Dict[str, float]
    budget: Optional[Budget] = None

    def __getitem__(self, name: str) -> ReportRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict:
        """Plain data: ``{"summary": {...}, "budget": {...} | None, "measures": {name: row}}``."""
        return {"summary": dict(self.summary),
                "budget": None if self.budget is None else asdict(self.budget),
                "measures": {r.name: {k: v for k, v in asdict(r).items() if k != "name"}
                             for r in self.rows}}

    def _table(self):
        marks = {True: "✓", False: "✗"}
        rows = [[r.label, "—" if math.isnan(r.value) else format_number(r.value, 4),
                 "n/a" if r.hvps is None else r.hvps, f"{r.seconds:.2f}",
                 *[marks[r.invariant_to[s]] for s in INVARIANCES], r.status]
                for r in self.rows]
        return markdown_table(["measure", "value", "HVPs", "seconds",
                               *[f"invariant: {s}" for s in INVARIANCES], "status"], rows)

    def to_markdown(self) -> str:
        """The summary line and the table as Markdown."""
        s = ", ".join(f"{k} {format_number(v, 4)}" for k, v in self.summary.items())
        return f"{s}\n\n{self._table().text}"

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in
                       ["measure", "value", "HVPs", "seconds", *INVARIANCES, "status"])
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in
                             [r.label, "—" if math.isnan(r.value) else format_number(r.value, 4),
                              "n/a" if r.hvps is None else r.hvps, f"{r.seconds:.2f}",
                              *["✓" if r.invariant_to[s] else "✗" for s in INVARIANCES],
                              r.status]) + "</tr>" for r in self.rows)
        s = html.escape(", ".join(f"{k} {format_number(v, 4)}" for k, v in self.summary.items()))
        return f"<p>{s}</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _select(measures) -> List[Measure]:
    if measures is None:
        return list(MEASURES.values())
    if isinstance(measures, (str, Measure)):
        measures = [measures]
    out = []
    for m in measures:
        if isinstance(m, Measure):
            out.append(m)
        elif isinstance(m, str) and m in MEASURES:
            out.append(MEASURES[m])
        else:
            raise ValueError(f"measures: {m!r} is neither a Measure nor one of {sorted(MEASURES)}")
    if not out:
        raise ValueError("measures: expected at least one measure")
    return out


def _budget(budget) -> Optional[Budget]:
    if budget is None or isinstance(budget, Budget):
        return budget
    if isinstance(budget, Mapping):
        unknown = set(budget) - {"hvps", "seconds"}
        if unknown:
            raise ValueError(f"budget: unknown keys {sorted(unknown)}; expected 'hvps', 'seconds'")
        return Budget(**budget)
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        return Budget(seconds=float(budget))
    raise TypeError(f"budget: expected None, a number of seconds, a dict or a Budget, got "
                    f"{type(budget).__name__}")


def report(model: nn.Module, loss_fn, train_data, test_data=None,
           measures: Union[None, str, Measure, Sequence] = None,
           budget: Union[None, float, Mapping, Budget] = None, seed: int = 0,
           progress: Optional[bool] = None) -> FlatnessReport:
    r"""Measure the flatness of a trained model at its training loss, every measure at once.

    Every measure is evaluated on ``train_data`` (the loss whose minimum is in question); the
    test data, if given, only enter the summary (test loss and accuracy, and the generalization
    gap :math:`\text{train accuracy} - \text{test accuracy}`).

    Args:
        model: the trained network (not changed; evaluated in eval mode).
        loss_fn: a mean-reduced loss such as ``nn.CrossEntropyLoss()``.
        train_data: an ``(X, y)`` pair (or a list of pairs) of training data.
        test_data: optional held-out data for the summary.
        measures: names of :data:`~flatness.measures.MEASURES` or :class:`Measure` objects
            (default: every registered measure).
        budget: ``None`` (no limit), a number of seconds, ``{"hvps": m, "seconds": s}`` or a
            :class:`Budget`: Hessian-based measures are truncated to ``m`` products each;
            after ``s`` seconds the remaining measures are skipped, and expensive ones once less
            than half of ``s`` is left. Every row says what was cut.
        seed: seeds every measure.
        progress: a tqdm bar over the measures on stderr (default: when interactive; see
            :func:`flatness.training.train`).

    Returns:
        A :class:`FlatnessReport`.

    Raises:
        ValueError: an unknown measure name or a bad budget, and the errors of the measures.
        TypeError: a budget of another type.
    """
    chosen, budget = _select(measures), _budget(budget)
    summary = {}
    tr_loss, tr_acc = evaluate(model, train_data, loss_fn)
    summary.update({"train loss": tr_loss, "train accuracy": tr_acc})
    if test_data is not None:
        te_loss, te_acc = evaluate(model, test_data, loss_fn)
        summary.update({"test loss": te_loss, "test accuracy": te_acc, "gap": tr_acc - te_acc})
    rows, start = [], time.perf_counter()
    bar = _tqdm(total=len(chosen), desc="flatness report", disable=not _progress_enabled(progress))
    try:
        for m in chosen:
            bar.set_postfix(measure=m.name)
            flags = m.invariance_flags()
            spent = time.perf_counter() - start
            skip = ""
            if budget is not None and budget.seconds is not None:
                if spent >= budget.seconds:
                    skip = f"skipped: time budget of {budget.seconds:g} s spent"
                elif m.expensive and budget.seconds - spent < budget.seconds / 2:
                    skip = (f"skipped: expensive, and less than half of the {budget.seconds:g} s "
                            f"budget left")
            if not skip and not m.applicable(model):
                skip = f"skipped: more than the {m.max_params:,} parameters it handles"
            if skip:
                rows.append(ReportRow(m.name, m.label, math.nan, 0, 0.0, skip, flags))
            else:
                cap = None if budget is None or not m.uses_hessian else budget.hvps
                r = m.evaluate(model, loss_fn, train_data, seed=seed, max_hvps=cap)
                if r.truncated.startswith("skipped"):
                    status = r.truncated
                elif r.truncated:
                    status = f"truncated: {r.truncated}"
                else:
                    status = "ok"
                rows.append(ReportRow(m.name, m.label, r.value, r.hvps, r.seconds, status, flags))
            bar.update(1)
    finally:
        bar.close()
    return FlatnessReport(rows, summary, budget)
