r"""Claims as data: what a paper says, what we measured, and whether it held.

A chapter's conclusions are :class:`Claim` records rather than sentences typed into a cell. Each
claim names its chapter and section, states the paper's claim in one sentence, quotes the paper's
number with its source (table, figure, equation), carries our measured numbers with their
uncertainty (:class:`Measurement`), and a :class:`Decision` computed from those numbers by one of
the decision rules below: the outcome (:data:`HELD`, :data:`NOT_HELD` or :data:`NOT_TESTABLE`)
is never typed by hand. The chapter writes down the outcome it *expects*, and
:func:`check_claims` fails, naming the claim, when the numbers say otherwise.

The decision rules, for an estimate :math:`\hat\theta` with interval :math:`[L, H]`:

* :func:`interval_above`: held iff :math:`L > t`; :func:`interval_below`: held iff :math:`H < t`;
* :func:`interval_contains`: held iff :math:`L \le \theta_0 \le H`;
* :func:`within_tolerance`: held iff :math:`[L, H] \subseteq [\theta_0 - \tau, \theta_0 + \tau]`;
* :func:`paired_comparison`: two arms on shared units (seeds, test examples), by a paired
  bootstrap interval of the difference or a paired sign-flip test;
* :func:`all_of`: several conditions at once; :func:`not_testable`: the reason why not.

An exact number (no interval: a deterministic computation) is compared as a point. A number
measured over fewer than two seeds has no interval, and a rule applied to it is
:data:`NOT_TESTABLE`.

Rendering and storage: :func:`claims_table` (Markdown, via
:func:`flatness.tables.markdown_table`), :func:`outcome_line` (one ``id: outcome`` line per claim,
without numbers, for the cell nbval compares), :meth:`Claim.to_dict` / :meth:`Claim.from_dict`
(exact JSON round trip), :func:`write_claims` / :func:`read_claims` (one file per chapter, read
by ``tools/scoreboard.py`` to build the book's scoreboard).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .stats import BootstrapInterval, bootstrap_ci, paired_bootstrap_ci, sign_flip_test
from .tables import MarkdownTable, format_number, markdown_table

__all__ = ["HELD", "NOT_HELD", "NOT_TESTABLE", "OUTCOMES", "Measurement", "Decision", "Claim",
           "ClaimsFile", "interval_above", "interval_below", "interval_contains",
           "within_tolerance", "paired_comparison", "not_testable", "all_of", "check_claims",
           "outcome_line", "claims_table", "claims_directory", "claims_path", "write_claims",
           "read_claims", "FORMAT_VERSION"]

HELD = "held"
NOT_HELD = "did not hold"
NOT_TESTABLE = "not testable here"
OUTCOMES = (HELD, NOT_HELD, NOT_TESTABLE)

#: Version of the claims-file layout written by :func:`write_claims`.
FORMAT_VERSION = 1

_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_CHAPTER = re.compile(r"^[A-Za-z0-9_\-]+$")


def _text(value, name: str, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a string, got {type(value).__name__}")
    if not empty and not value.strip():
        raise ValueError(f"{name}: expected a non-empty string")
    return value


def _finite(value, name: str, optional: bool = False) -> Optional[float]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


def _outcome(value, name: str) -> str:
    if value not in OUTCOMES:
        raise ValueError(f"{name}: expected one of {OUTCOMES}, got {value!r}")
    return value


# --- measurements --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measurement:
    r"""One measured number with its uncertainty.

    Attributes:
        name: what was measured, e.g. ``"LB/SB ratio of λ_max"``.
        estimate: the point estimate :math:`\hat\theta`.
        low, high: the interval :math:`[L, H]`, or both None (an exact number, or too few units
            for an interval).
        level: the interval's nominal coverage (e.g. 0.95); None without an interval.
        n: the number of units the estimate is over (seeds, test examples); None for an exact
            number.
        unit: what ``n`` counts (``"seeds"``, ``"test examples"``).
        method: how the interval was made (``"percentile bootstrap"``).

    Raises:
        ValueError: non-finite numbers, only one end of an interval, ``low > high``, a level
            outside (0, 1), or a non-positive ``n``.
    """

    name: str
    estimate: float
    low: Optional[float] = None
    high: Optional[float] = None
    level: Optional[float] = None
    n: Optional[int] = None
    unit: str = ""
    method: str = ""

    def __post_init__(self):
        _text(self.name, "name", empty=True)
        _text(self.unit, "unit", empty=True)
        _text(self.method, "method", empty=True)
        object.__setattr__(self, "estimate", _finite(self.estimate, "estimate"))
        object.__setattr__(self, "low", _finite(self.low, "low", optional=True))
        object.__setattr__(self, "high", _finite(self.high, "high", optional=True))
        if (self.low is None) != (self.high is None):
            raise ValueError("low, high: expected both or neither")
        if self.low is not None and self.low > self.high:
            raise ValueError(f"low, high: expected low <= high, got [{self.low}, {self.high}]")
        if self.level is not None:
            level = _finite(self.level, "level")
            if not 0.0 < level < 1.0:
                raise ValueError(f"level: expected a number in (0, 1), got {level}")
            object.__setattr__(self, "level", level)
        if self.n is not None:
            if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral) or self.n < 1:
                raise ValueError(f"n: expected a positive integer, got {self.n!r}")
            object.__setattr__(self, "n", int(self.n))

    @property
    def interval(self) -> Optional[Tuple[float, float]]:
        """``(low, high)``, or None."""
        return None if self.low is None else (self.low, self.high)

    @property
    def exact(self) -> bool:
        """True for an exact number: no interval and no count of units."""
        return self.low is None and self.n is None

    @property
    def testable(self) -> bool:
        """False when the number has neither an interval nor exactness (it is over ``n`` units,
        but without an interval: one seed, say)."""
        return self.low is not None or self.n is None

    @classmethod
    def bootstrap(cls, name: str, values: Sequence[float], statistic=np.mean, level: float = 0.95,
                  n_resamples: int = 10_000, seed: int = 0, unit: str = "seeds") -> "Measurement":
        r"""``statistic`` of ``values`` with its percentile-bootstrap interval
        (:func:`flatness.stats.bootstrap_ci`); a single value gives no interval.

        >>> m = Measurement.bootstrap("acc", [0.5, 1.0])
        >>> m.estimate, m.interval, m.n
        (0.75, (0.5, 1.0), 2)
        """
        return cls.from_interval(name, bootstrap_ci(values, statistic, level, n_resamples, seed),
                                 unit=unit)

    @classmethod
    def paired(cls, name: str, a: Sequence[float], b: Sequence[float], statistic=np.mean,
               level: float = 0.95, n_resamples: int = 10_000, seed: int = 0,
               unit: str = "test examples") -> "Measurement":
        r""":math:`T(a) - T(b)` of two paired arms with its paired-bootstrap interval
        (:func:`flatness.stats.paired_bootstrap_ci`)."""
        return cls.from_interval(name, paired_bootstrap_ci(a, b, statistic, level, n_resamples,
                                                           seed), unit=unit, method="paired bootstrap")

    @classmethod
    def from_interval(cls, name: str, interval: BootstrapInterval, unit: str = "seeds",
                      method: str = "percentile bootstrap") -> "Measurement":
        """A measurement from a :class:`flatness.stats.BootstrapInterval` (NaN end points, from a
        single value, become no interval)."""
        if not isinstance(interval, BootstrapInterval):
            raise TypeError(f"interval: expected a BootstrapInterval, got {type(interval).__name__}")
        has = math.isfinite(interval.low) and math.isfinite(interval.high)
        return cls(name, interval.estimate, interval.low if has else None,
                   interval.high if has else None, interval.level if has else None, interval.n,
                   unit, method if has else "")

    def text(self, digits: int = 3) -> str:
        """The number as the book prints it.

        >>> Measurement("ratio", 2.3125, 1.5, 3.25, 0.95, 5, "seeds").text()
        'ratio 2.31 (95 % CI 1.5 to 3.25, 5 seeds)'
        >>> Measurement("", 1e-12).text(), Measurement("acc", 0.9, n=1, unit="seeds").text()
        ('1e-12', 'acc 0.9 (1 seed, no interval)')
        """
        head = (f"{self.name} " if self.name else "") + format_number(self.estimate, digits)
        if self.low is not None:
            level = f"{100 * self.level:g} % CI " if self.level is not None else ""
            count = f", {_count(self.n, self.unit)}" if self.n is not None else ""
            return (f"{head} ({level}{format_number(self.low, digits)} to "
                    f"{format_number(self.high, digits)}{count})")
        if self.n is not None:
            return f"{head} ({_count(self.n, self.unit)}, no interval)"
        return head

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (floats round-trip exactly through :mod:`json`)."""
        return {"name": self.name, "estimate": self.estimate, "low": self.low, "high": self.high,
                "level": self.level, "n": self.n, "unit": self.unit, "method": self.method}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Measurement":
        """The inverse of :meth:`to_dict`."""
        return cls(**_fields(data, cls, "measurement"))


def _count(n: int, unit: str) -> str:
    """``"5 seeds"``, ``"1 seed"``."""
    if n == 1 and unit.endswith("s"):
        unit = unit[:-1]
    return f"{n} {unit}".rstrip()


def _fields(data, cls, what: str) -> Dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"{what}: expected a dict, got {type(data).__name__}")
    known = set(cls.__dataclass_fields__)
    extra = set(data) - known
    if extra:
        raise ValueError(f"{what}: unknown fields {sorted(extra)}")
    return dict(data)


def _as_measurement(value, ci, name: str, n, level) -> Measurement:
    """A :class:`Measurement` from a number (with an optional ``ci``), an interval or itself."""
    if isinstance(value, Measurement):
        if ci is not None or n is not None or level is not None:
            raise ValueError("ci, n, level: give them with a number, not with a Measurement")
        return value
    if isinstance(value, BootstrapInterval):
        if ci is not None:
            raise ValueError("ci: give it with a number, not with a BootstrapInterval")
        return Measurement.from_interval(name, value)
    unit = "seeds" if n is not None else ""
    if ci is None:
        return Measurement(name, value, n=n, unit=unit)
    if not isinstance(ci, (tuple, list)) or len(ci) != 2:
        raise ValueError(f"ci: expected a (low, high) pair, got {ci!r}")
    if any(isinstance(c, numbers.Real) and math.isnan(c) for c in ci):
        return Measurement(name, value, n=n if n is not None else 1, unit="seeds")
    return Measurement(name, value, ci[0], ci[1], 0.95 if level is None else level, n, unit)


# --- decisions -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """The outcome of a decision rule applied to measurements.

    Made by the rules (:func:`interval_above`, ...), not by hand.

    Attributes:
        outcome: :data:`HELD`, :data:`NOT_HELD` or :data:`NOT_TESTABLE`.
        rule: the rule in words, without numbers (``"95 % interval above 1"``).
        detail: the rule applied to the numbers (``"[1.5, 3.2] lies above 1"``), or the reason
            why the claim is not testable.
        measured: the measurements decided on.
    """

    outcome: str
    rule: str
    detail: str
    measured: Tuple[Measurement, ...] = ()

    def __post_init__(self):
        _outcome(self.outcome, "outcome")
        _text(self.rule, "rule")
        _text(self.detail, "detail", empty=True)
        measured = tuple(self.measured)
        for m in measured:
            if not isinstance(m, Measurement):
                raise TypeError(f"measured: expected Measurements, got {type(m).__name__}")
        object.__setattr__(self, "measured", measured)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict."""
        return {"outcome": self.outcome, "rule": self.rule, "detail": self.detail,
                "measured": [m.to_dict() for m in self.measured]}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Decision":
        """The inverse of :meth:`to_dict`."""
        data = _fields(data, cls, "decision")
        data["measured"] = tuple(Measurement.from_dict(m) for m in data.get("measured", ()))
        return cls(**data)


def _g(x: float) -> str:
    return format_number(x, 3)


def _level(m: Measurement) -> str:
    return f"{100 * m.level:g} % interval" if m.level is not None else "interval"


def _untestable(m: Measurement, rule: str) -> Decision:
    return Decision(NOT_TESTABLE, rule,
                    f"{m.name + ': ' if m.name else ''}no interval from {_count(m.n, m.unit)}",
                    (m,))


def _one_sided(m: Measurement, t: float, above: bool) -> Decision:
    """The rule of :func:`interval_above` (``above``) or :func:`interval_below`: held iff the
    whole interval (or the exact number) lies on that side of ``t``."""
    side, other = ("above", "below") if above else ("below", "above")
    rule = f"{_level(m) if m.low is not None else 'value'} {side} {_g(t)}"
    if not m.testable:
        return _untestable(m, rule)
    if m.low is None:
        held = m.estimate > t if above else m.estimate < t
        sign = ((">" if held else "≤") if above else ("<" if held else "≥"))
        return Decision(HELD if held else NOT_HELD, rule, f"{_g(m.estimate)} {sign} {_g(t)}", (m,))
    is_above, is_below = m.low > t, m.high < t
    held = is_above if above else is_below
    where = (f"lies {side}" if held else
             (f"lies {other}" if (is_below if above else is_above) else "contains"))
    return Decision(HELD if held else NOT_HELD, rule,
                    f"{_level(m)} [{_g(m.low)}, {_g(m.high)}] {where} {_g(t)}", (m,))


def interval_above(value, ci=None, threshold=None, *, name: str = "", n: Optional[int] = None,
                   level: Optional[float] = None) -> Decision:
    r"""Held iff the whole interval lies above ``threshold``: :math:`L > t`.

    An exact number (no interval) holds iff :math:`\hat\theta > t`. An interval that contains
    :math:`t` does not hold: the data do not establish the direction.

    Args:
        value: the estimate (a number with ``ci``), a :class:`Measurement` or a
            :class:`flatness.stats.BootstrapInterval`.
        ci: ``(low, high)`` when ``value`` is a number; None for an exact number; NaN ends (from
            a single seed) make the claim not testable.
        threshold: :math:`t`.
        name: what ``value`` measures, when it is a number.
        n: the number of seeds behind a numeric ``value``. A number with ``n`` but without
            ``ci`` is a measurement over seeds without an interval: not testable.
        level: the coverage of ``ci`` (default 0.95).

    Returns:
        A :class:`Decision`.

    Raises:
        ValueError: a missing or non-finite threshold, or a malformed ``ci``.

    >>> interval_above(2.3, (1.4, 3.1), 1.0).outcome
    'held'
    >>> interval_above(2.3, (0.9, 3.1), 1.0).detail
    '95 % interval [0.9, 3.1] contains 1'
    """
    return _one_sided(_as_measurement(value, ci, name, n, level),
                      _finite(threshold, "threshold"), above=True)


def interval_below(value, ci=None, threshold=None, *, name: str = "", n: Optional[int] = None,
                   level: Optional[float] = None) -> Decision:
    r"""Held iff the whole interval lies below ``threshold``: :math:`H < t`.

    An exact number holds iff :math:`\hat\theta < t`. Arguments as in :func:`interval_above`.

    >>> interval_below(0.4, None, 1e-6, name="max error").outcome   # an exact number
    'did not hold'
    >>> interval_below(0.7, (0.6, 0.8), 1.0).outcome
    'held'
    """
    return _one_sided(_as_measurement(value, ci, name, n, level),
                      _finite(threshold, "threshold"), above=False)


def interval_contains(value, ci=None, target=None, *, name: str = "", n: Optional[int] = None,
                      level: Optional[float] = None) -> Decision:
    r"""Held iff the interval contains ``target``: :math:`L \le \theta_0 \le H` (the data agree
    with the paper's value :math:`\theta_0`).

    An exact number holds iff :math:`\hat\theta = \theta_0` exactly (use
    :func:`within_tolerance` for rounding). Arguments as in :func:`interval_above`, with the
    target :math:`\theta_0` in place of the threshold.

    >>> interval_contains(1.9, (1.7, 2.2), 2.0).outcome, interval_contains(0.0, None, 0.0).outcome
    ('held', 'held')
    """
    t = _finite(target, "target")
    m = _as_measurement(value, ci, name, n, level)
    rule = f"{_level(m)} contains {_g(t)}" if m.low is not None else f"value equals {_g(t)}"
    if not m.testable:
        return _untestable(m, rule)
    if m.low is None:
        held = m.estimate == t
        return Decision(HELD if held else NOT_HELD, rule,
                        f"{_g(m.estimate)} {'=' if held else '≠'} {_g(t)}", (m,))
    held = m.low <= t <= m.high
    return Decision(HELD if held else NOT_HELD, rule,
                    f"{_level(m)} [{_g(m.low)}, {_g(m.high)}] "
                    f"{'contains' if held else 'excludes'} {_g(t)}", (m,))


def within_tolerance(value, ci=None, target=None, tolerance=None, *, name: str = "",
                     n: Optional[int] = None, level: Optional[float] = None) -> Decision:
    r"""Held iff the whole interval lies within ``tolerance`` of ``target``:
    :math:`\theta_0 - \tau \le L` and :math:`H \le \theta_0 + \tau` (an equivalence test); for an
    exact number, :math:`|\hat\theta - \theta_0| \le \tau`.

    Args:
        value, ci, name, n, level: as in :func:`interval_above`.
        target: :math:`\theta_0`.
        tolerance: :math:`\tau \ge 0`.

    Returns:
        A :class:`Decision`.

    Raises:
        ValueError: a missing, negative or non-finite tolerance or target.

    >>> within_tolerance(1.9, None, 2.0, 0.2).outcome, within_tolerance(1.9, (1.7, 2.3), 2.0, 0.2).outcome
    ('held', 'did not hold')
    """
    t = _finite(target, "target")
    tol = _finite(tolerance, "tolerance")
    if tol < 0:
        raise ValueError(f"tolerance: expected a non-negative number, got {tol}")
    m = _as_measurement(value, ci, name, n, level)
    rule = (f"{_level(m) if m.low is not None else 'value'} within {_g(tol)} of {_g(t)}")
    if not m.testable:
        return _untestable(m, rule)
    if m.low is None:
        dev = abs(m.estimate - t)
        held = dev <= tol
        return Decision(HELD if held else NOT_HELD, rule,
                        f"|{_g(m.estimate)} − {_g(t)}| = {_g(dev)} {'≤' if held else '>'} {_g(tol)}",
                        (m,))
    held = t - tol <= m.low and m.high <= t + tol
    return Decision(HELD if held else NOT_HELD, rule,
                    f"{_level(m)} [{_g(m.low)}, {_g(m.high)}] {'inside' if held else 'not inside'} "
                    f"[{_g(t - tol)}, {_g(t + tol)}]", (m,))


def paired_comparison(a: Sequence[float], b: Sequence[float], *, name: str = "",
                      alternative: str = "greater", margin: float = 0.0, method: str = "bootstrap",
                      level: float = 0.95, n_resamples: int = 10_000, seed: int = 0,
                      unit: str = "test examples") -> Decision:
    r"""Two arms paired unit by unit (the same test examples, or the same seeds): is ``a``
    larger (``alternative="greater"``) or smaller (``"less"``) than ``b`` by more than
    ``margin``?

    With :math:`d_i = a_i - b_i` and :math:`\bar d` its mean:

    * ``method="bootstrap"``: the paired percentile-bootstrap interval :math:`[L, H]` of
      :math:`\bar d` (:func:`flatness.stats.paired_bootstrap_ci`); held iff :math:`L > m`
      (greater) or :math:`H < m` (less), :math:`m` the margin;
    * ``method="sign-flip"``: the paired sign-flip test of :math:`d_i - m`
      (:func:`flatness.stats.sign_flip_test`); held iff :math:`p < 1 - \text{level}`.

    Either way the decision carries the paired-bootstrap measurement of :math:`\bar d`.

    Args:
        a, b: the two arms, paired by position (e.g. per-example correctness of two models).
        name: what :math:`\bar d` measures.
        alternative: ``"greater"`` or ``"less"``.
        margin: :math:`m`, the difference to exceed.
        method: ``"bootstrap"`` or ``"sign-flip"``.
        level: the interval's coverage; the test's level is :math:`1 - \text{level}`.
        n_resamples, seed: for the resampling.
        unit: what the pairs are.

    Returns:
        A :class:`Decision`.

    Raises:
        ValueError: a bad ``alternative`` or ``method``, arms of different lengths.

    >>> correct_a, correct_b = [1, 1, 1, 0, 1, 1, 1, 1], [0, 1, 0, 0, 0, 1, 0, 1]
    >>> paired_comparison(correct_a, correct_b, method="sign-flip").detail
    'sign-flip p = 0.0625 (exact, 8 test examples), not < 0.05'
    """
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative: expected 'greater' or 'less', got {alternative!r}")
    if method not in ("bootstrap", "sign-flip"):
        raise ValueError(f"method: expected 'bootstrap' or 'sign-flip', got {method!r}")
    margin = _finite(margin, "margin")
    m = Measurement.paired(name, a, b, np.mean, level, n_resamples, seed, unit)
    sign = ">" if alternative == "greater" else "<"
    if method == "bootstrap":
        rule = f"paired {100 * level:g} % interval of the mean difference {sign} {_g(margin)}"
        if not m.testable:
            return _untestable(m, rule)
        held = m.low > margin if alternative == "greater" else m.high < margin
        return Decision(HELD if held else NOT_HELD, rule,
                        f"paired {_level(m)} [{_g(m.low)}, {_g(m.high)}] "
                        f"{'' if held else 'not '}{sign} {_g(margin)}", (m,))
    alpha = 1.0 - level
    rule = f"paired sign-flip test of mean difference {sign} {_g(margin)} at p < {_g(alpha)}"
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) - margin
    res = sign_flip_test(d, alternative=alternative, n_resamples=n_resamples, seed=seed)
    held = res.p_value < alpha
    how = "exact" if res.exact else f"{n_resamples} sign patterns"
    return Decision(HELD if held else NOT_HELD, rule,
                    f"sign-flip p = {_g(res.p_value)} ({how}, {res.n} {unit}), "
                    f"{'' if held else 'not '}< {_g(alpha)}", (m,))


def not_testable(reason: str, *measured: Measurement) -> Decision:
    """A claim that cannot be tested here, with the reason (and what was measured, if anything).

    >>> not_testable("needs ImageNet-scale models").outcome
    'not testable here'
    """
    _text(reason, "reason")
    return Decision(NOT_TESTABLE, "not testable here", reason, tuple(measured))


def all_of(*decisions: Decision) -> Decision:
    r"""Several conditions at once: held iff every one held; did not hold iff any did not hold;
    otherwise (some held, some not testable) not testable.

    >>> d = all_of(interval_above(2.0, None, 1.0), interval_below(0.5, None, 1.0))
    >>> d.outcome, d.rule
    ('held', 'value above 1 and value below 1')
    """
    if not decisions:
        raise ValueError("decisions: expected at least one decision")
    for d in decisions:
        if not isinstance(d, Decision):
            raise TypeError(f"decisions: expected Decisions, got {type(d).__name__}")
    outcomes = {d.outcome for d in decisions}
    outcome = NOT_HELD if NOT_HELD in outcomes else (NOT_TESTABLE if NOT_TESTABLE in outcomes
                                                     else HELD)
    measured = []
    for m in (m for d in decisions for m in d.measured):
        if m not in measured:  # two conditions on one number list it once
            measured.append(m)
    return Decision(outcome, " and ".join(d.rule for d in decisions),
                    "; ".join(d.detail for d in decisions), tuple(measured))


# --- claims --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    r"""One claim of a paper, tested in one chapter.

    Attributes:
        chapter: the chapter's file stem, e.g. ``"02_large_batch"``.
        id: a short slug unique in the chapter (``"lb-sharper"``; lower case, digits, hyphens).
        statement: the claim in one sentence.
        paper: the paper's number, as the paper gives it (``"LB/SB λ_max ratio 3.6"``).
        source: where in the paper (``"Keskar et al. (2017), Table 2"``).
        decision: the :class:`Decision` computed from our numbers.
        expected: the outcome the chapter's text expects (one of :data:`OUTCOMES`).
        test: the test that decides the claim, in words (default: the decision's rule), e.g.
            ``"LB/SB ratio of λ_max > 1 with the 95 % bootstrap interval above 1"``.
        section: the heading of the chapter section where the claim is tested (without ``#``);
            the scoreboard links to it.

    Raises:
        ValueError: a malformed id or chapter, an unknown expected outcome, empty texts.
        TypeError: a decision that is not a :class:`Decision`.
    """

    chapter: str
    id: str
    statement: str
    paper: str
    source: str
    decision: Decision
    expected: str
    test: str = ""
    section: str = ""

    def __post_init__(self):
        _text(self.chapter, "chapter")
        if not _CHAPTER.match(self.chapter):
            raise ValueError(f"chapter: expected a file stem like '02_large_batch', got {self.chapter!r}")
        _text(self.id, "id")
        if not _ID.match(self.id):
            raise ValueError(f"id: expected a slug of lower-case letters, digits and hyphens, "
                             f"got {self.id!r}")
        _text(self.statement, "statement")
        _text(self.paper, "paper")
        _text(self.source, "source", empty=True)
        _text(self.section, "section", empty=True)
        if not isinstance(self.decision, Decision):
            raise TypeError(f"decision: expected a Decision (from interval_above, ...), "
                            f"got {type(self.decision).__name__}")
        _outcome(self.expected, "expected")
        _text(self.test, "test", empty=True)
        if not self.test.strip():
            object.__setattr__(self, "test", self.decision.rule)

    @property
    def outcome(self) -> str:
        """The computed outcome, from :attr:`decision`."""
        return self.decision.outcome

    @property
    def measured(self) -> Tuple[Measurement, ...]:
        """Our numbers."""
        return self.decision.measured

    @property
    def as_expected(self) -> bool:
        """Whether the computed outcome is the expected one."""
        return self.outcome == self.expected

    def check(self) -> "Claim":
        """Assert that the computed outcome is the expected one.

        Returns:
            The claim itself.

        Raises:
            AssertionError: naming the claim, both outcomes and the numbers.
        """
        if not self.as_expected:
            raise AssertionError(self._mismatch())
        return self

    def _mismatch(self) -> str:
        return (f"claim {self.chapter}/{self.id} ({self.statement}): expected "
                f"'{self.expected}', the numbers say '{self.outcome}' — {self.decision.detail}")

    def ours(self, digits: int = 3) -> str:
        """Our numbers as text (``"—"`` when none)."""
        return "; ".join(m.text(digits) for m in self.measured) or "—"

    def outcome_text(self) -> str:
        """The outcome, with the reason when not testable."""
        if self.outcome == NOT_TESTABLE:
            return f"{NOT_TESTABLE}: {self.decision.detail}" if self.decision.detail else NOT_TESTABLE
        return self.outcome

    def outcome_line(self) -> str:
        """``"id: outcome"``: no numbers, for the cell nbval compares."""
        return f"{self.id}: {self.outcome}"

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict; ``Claim.from_dict(json.loads(json.dumps(c.to_dict()))) == c``."""
        return {"chapter": self.chapter, "id": self.id, "statement": self.statement,
                "paper": self.paper, "source": self.source, "decision": self.decision.to_dict(),
                "expected": self.expected, "test": self.test, "section": self.section}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Claim":
        """The inverse of :meth:`to_dict`."""
        data = _fields(data, cls, "claim")
        if "decision" not in data:
            raise ValueError("claim: missing field 'decision'")
        data["decision"] = Decision.from_dict(data["decision"])
        return cls(**data)


def _claims(claims, name: str = "claims") -> List[Claim]:
    if isinstance(claims, Claim):
        return [claims]
    claims = list(claims)
    for c in claims:
        if not isinstance(c, Claim):
            raise TypeError(f"{name}: expected Claims, got {type(c).__name__}")
    return claims


def _unique(claims: Sequence[Claim]) -> None:
    seen = set()
    for c in claims:
        key = (c.chapter, c.id)
        if key in seen:
            raise ValueError(f"claims: the id {c.id!r} appears twice in chapter {c.chapter!r}")
        seen.add(key)


def check_claims(claims: Union[Claim, Iterable[Claim]]) -> List[Claim]:
    """Assert that every claim's computed outcome is its expected one (ids unique per chapter).

    Args:
        claims: one claim or several.

    Returns:
        The claims, as a list.

    Raises:
        AssertionError: listing every claim whose outcome differs from the expected one.
        ValueError: an id used twice in a chapter.
    """
    claims = _claims(claims)
    _unique(claims)
    bad = [c._mismatch() for c in claims if not c.as_expected]
    if bad:
        raise AssertionError("\n".join(bad))
    return claims


def outcome_line(claims: Union[Claim, Iterable[Claim]]) -> str:
    """One ``"id: outcome"`` line per claim, without numbers: what the nbval-compared cell
    prints, so that nbval compares outcomes, not the digits of a measurement.

    >>> c = Claim("00_x", "a-b", "A holds.", "1", "", interval_above(2.0, None, 1.0), "held")
    >>> print(outcome_line([c]))
    a-b: held
    """
    return "\n".join(c.outcome_line() for c in _claims(claims))


def claims_table(claims: Union[Claim, Iterable[Claim]], digits: int = 3) -> MarkdownTable:
    """The claims as a Markdown table: claim, paper (with source), ours, test, outcome.

    Args:
        claims: one claim or several.
        digits: significant digits of our numbers.

    Returns:
        A :class:`flatness.tables.MarkdownTable`.
    """
    rows = [[c.statement, f"{c.paper} ({c.source})" if c.source else c.paper, c.ours(digits),
             c.test, c.outcome_text()] for c in _claims(claims)]
    return markdown_table(["claim", "paper", "ours", "test", "outcome"], rows)


# --- files ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimsFile:
    """The contents of one chapter's claims file (:func:`read_claims`).

    Attributes:
        chapter: the chapter's file stem.
        mode: ``"quick"`` or ``"full"``: the mode the chapter ran in.
        claims: its claims, in the chapter's order.
    """

    chapter: str
    mode: str
    claims: Tuple[Claim, ...] = field(default_factory=tuple)


def _mode(quick: Optional[bool]) -> str:
    if quick is None:
        quick = os.environ.get("FLATNESS_QUICK", "0") == "1"
    return "quick" if quick else "full"


def claims_directory(directory: Union[str, os.PathLike, None] = None,
                     quick: Optional[bool] = None) -> Path:
    """Where the claims files of one mode go: ``<base>/<quick|full>``.

    Args:
        directory: the base; default ``$FLATNESS_CLAIMS_DIR``, else ``<repository>/_build/claims``
            (the repository that holds this package, so that a chapter run with its own working
            directory, as papermill does, writes to the same place).
        quick: the mode; default from ``$FLATNESS_QUICK`` (``"1"``: quick).

    Returns:
        The directory (not created).
    """
    if directory is None:
        directory = os.environ.get("FLATNESS_CLAIMS_DIR") or (
            Path(__file__).resolve().parent.parent / "_build" / "claims")
    return Path(directory) / _mode(quick)


def claims_path(chapter: str, directory: Union[str, os.PathLike, None] = None,
                quick: Optional[bool] = None) -> Path:
    """The claims file of ``chapter``: ``claims_directory(directory, quick) / <chapter>.json``."""
    _text(chapter, "chapter")
    if not _CHAPTER.match(chapter):
        raise ValueError(f"chapter: expected a file stem like '02_large_batch', got {chapter!r}")
    return claims_directory(directory, quick) / f"{chapter}.json"


def write_claims(claims: Union[Claim, Iterable[Claim]], chapter: str,
                 directory: Union[str, os.PathLike, None] = None,
                 quick: Optional[bool] = None) -> Path:
    """Write a chapter's claims to its file, atomically (a temporary file, then a rename).

    The file is ``<directory>/<quick|full>/<chapter>.json`` (see :func:`claims_directory`):
    quick and full runs keep separate files, so that a quick run (``make nbval`` included) never
    overwrites the full book's numbers.

    Args:
        claims: the chapter's claims (each with ``chapter`` equal to ``chapter``).
        chapter: the chapter's file stem.
        directory: the base directory (default ``$FLATNESS_CLAIMS_DIR``).
        quick: the mode (default from ``$FLATNESS_QUICK``); pass the chapter's ``QUICK``.

    Returns:
        The path written.

    Raises:
        ValueError: no claims, a claim of another chapter, or an id used twice.
    """
    claims = _claims(claims)
    if not claims:
        raise ValueError("claims: expected at least one claim")
    path = claims_path(chapter, directory, quick)
    for c in claims:
        if c.chapter != chapter:
            raise ValueError(f"claims: claim {c.id!r} belongs to chapter {c.chapter!r}, not {chapter!r}")
    _unique(claims)
    payload = {"format": FORMAT_VERSION, "chapter": chapter, "mode": _mode(quick),
               "claims": [c.to_dict() for c in claims]}
    text = json.dumps(payload, ensure_ascii=False, indent=1, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{chapter}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_claims(path: Union[str, os.PathLike]) -> ClaimsFile:
    """Read a claims file written by :func:`write_claims`.

    Args:
        path: the file.

    Returns:
        A :class:`ClaimsFile`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a claims file, an unknown format version, or claims of another chapter.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a claims file ({e})") from None
    if not isinstance(data, dict) or not {"format", "chapter", "mode", "claims"} <= set(data):
        raise ValueError(f"{path}: not a claims file (expected format, chapter, mode, claims)")
    if data["format"] != FORMAT_VERSION:
        raise ValueError(f"{path}: claims format {data['format']!r}, expected {FORMAT_VERSION}")
    if data["mode"] not in ("quick", "full"):
        raise ValueError(f"{path}: mode {data['mode']!r}, expected 'quick' or 'full'")
    claims = tuple(Claim.from_dict(c) for c in data["claims"])
    for c in claims:
        if c.chapter != data["chapter"]:
            raise ValueError(f"{path}: claim {c.id!r} belongs to chapter {c.chapter!r}, "
                             f"not {data['chapter']!r}")
    _unique(claims)
    return ClaimsFile(data["chapter"], data["mode"], claims)
