r"""The large-batch chapter's measurements and claims (Keskar et al. 2017; Yao et al. 2018).

* :func:`seed_values` and :func:`seed_measurement` pair a small-batch and a large-batch group of
  sweep records seed by seed and turn the per-seed ratios or differences into a
  :class:`~flatness.claims.Measurement` with a bootstrap interval over seeds;
* :func:`large_batch_measurements` computes every number the chapter's claims rest on, and
  :func:`large_batch_claims` builds the claims from them (:data:`LARGE_BATCH_CLAIMS` holds each
  claim's sentence, the papers' numbers and their sources); the expected outcomes are written in
  the chapter.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Sequence

from .claims import Claim, Measurement, all_of, interval_above, interval_below

__all__ = ["seed_values", "seed_measurement", "large_batch_measurements", "LARGE_BATCH_CLAIMS",
           "large_batch_claims"]


def seed_values(records: Iterable[Mapping], metric: str) -> Dict[Any, float]:
    """The mean of ``metric`` over each seed's runs: ``{seed: mean}``, by first appearance.

    A group such as "SB" may pool several batch sizes; its value for a seed is the mean over
    that seed's runs.

    Raises:
        ValueError: a record without ``seed`` or without ``metric``.

    >>> seed_values([{"seed": 0, "a": 1.0}, {"seed": 1, "a": 3.0}, {"seed": 0, "a": 2.0}], "a")
    {0: 1.5, 1: 3.0}
    """
    out: Dict[Any, List[float]] = {}
    for r in records:
        for name in ("seed", metric):
            if name not in r:
                raise ValueError(f"records: a record without {name!r}")
        out.setdefault(r["seed"], []).append(float(r[metric]))
    return {s: sum(v) / len(v) for s, v in out.items()}

def seed_measurement(name: str, small: Iterable[Mapping], large: Iterable[Mapping], metric: str,
                     statistic: str = "ratio") -> Measurement:
    r"""A paired-by-seed comparison of two groups of runs as a :class:`~flatness.claims.Measurement`.

    For every seed that both groups ran, with :math:`s_i` and :math:`l_i` the means of
    ``metric`` over the seed's runs in ``small`` and ``large`` (:func:`seed_values`), the
    per-seed value is :math:`l_i/s_i` (``"ratio"``, Keskar et al.'s LB/SB ratio),
    :math:`s_i - l_i` (``"difference"``, the gap SB − LB) or :math:`l_i` (``"large"``: the large
    group alone; ``small`` is then ignored and may be empty). The measurement is their mean with
    its 95 % percentile-bootstrap interval over seeds
    (:meth:`~flatness.claims.Measurement.bootstrap`); one seed gives no interval, so a claim
    decided on it is not testable.

    Args:
        name: what is measured.
        small, large: the runs of the two groups (records with ``seed`` and ``metric``).
        metric: the record field.
        statistic: ``"ratio"``, ``"difference"`` or ``"large"``.

    Returns:
        The measurement, over the seeds both groups share.

    Raises:
        ValueError: an unknown ``statistic``, or no seed in common.

    >>> sb = [{"seed": 0, "m": 1.0}, {"seed": 1, "m": 2.0}]
    >>> lb = [{"seed": 0, "m": 3.0}, {"seed": 1, "m": 2.0}]
    >>> m = seed_measurement("LB/SB", sb, lb, "m")
    >>> m.estimate, m.n, m.interval
    (2.0, 2, (1.0, 3.0))
    """
    if statistic not in ("ratio", "difference", "large"):
        raise ValueError(f"statistic: expected 'ratio', 'difference' or 'large', got {statistic!r}")
    lv = seed_values(large, metric)
    sv = seed_values(small, metric) if statistic != "large" else lv
    seeds = [s for s in lv if s in sv]
    if not seeds:
        raise ValueError("small, large: no seed in common")
    op = {"ratio": lambda a, b: b / a, "difference": lambda a, b: a - b, "large": lambda a, b: b}
    return Measurement.bootstrap(name, [op[statistic](sv[s], lv[s]) for s in seeds])

def large_batch_measurements(sb: Sequence[Mapping], lb: Sequence[Mapping], sqrt_sb: Sequence[Mapping],
                             sqrt_lb: Sequence[Mapping], augmented: Sequence[Mapping]
                             ) -> Dict[str, Measurement]:
    r"""The numbers the large-batch claims rest on, each paired by seed (:func:`seed_measurement`).

    Args:
        sb, lb: the small- and large-batch runs at one learning rate (Keskar et al.'s protocol).
        sqrt_sb, sqrt_lb: the small- and large-batch runs with :math:`\eta \propto \sqrt{B}`.
        augmented: the large-batch runs with data augmentation, at ``sb``'s learning rate.

    Returns:
        ``{"const-lam", "const-kes"}``: LB/SB ratios of :math:`\lambda_{\max}` and of Keskar's
        full-space sharpness at ε = 1e-3 (one learning rate); ``"const-gap"``: SB − LB test
        accuracy; ``"edge-lb"``: :math:`\eta\lambda_{\max}` of LB; ``"edge-ratio"``: SB's
        :math:`\eta\lambda_{\max}` over LB's; ``"sqrt-lam"``, ``"sqrt-gap"``: the ratio and gap
        with :math:`\eta \propto \sqrt{B}`; ``"aug-lam"``: augmented LB / SB
        :math:`\lambda_{\max}`; ``"aug-gap"``: SB − augmented LB test accuracy.
    """
    kes = "keskar_full_0.001"
    return {"const-lam": seed_measurement("LB/SB λ_max, constant η", sb, lb, "lambda_max"),
            "const-kes": seed_measurement("LB/SB Keskar ε=1e-3, constant η", sb, lb, kes),
            "const-gap": seed_measurement("SB − LB test accuracy, constant η", sb, lb, "test_acc",
                                          "difference"),
            "edge-lb": seed_measurement("η·λ_max of LB", [], lb, "eta_lambda", "large"),
            "edge-ratio": seed_measurement("η·λ_max SB / LB", lb, sb, "eta_lambda"),
            "sqrt-lam": seed_measurement("LB/SB λ_max, η ∝ √B", sqrt_sb, sqrt_lb, "lambda_max"),
            "sqrt-gap": seed_measurement("SB − LB test accuracy, η ∝ √B", sqrt_sb, sqrt_lb,
                                         "test_acc", "difference"),
            "aug-lam": seed_measurement("augmented LB / SB λ_max", sb, augmented, "lambda_max"),
            "aug-gap": seed_measurement("SB − augmented LB test accuracy", sb, augmented,
                                        "test_acc", "difference")}

#: The claims of the large-batch chapter: id -> (the claim, the paper's number, its source, the
#: section of the chapter that tests it). The decisions are :func:`large_batch_claims`'.
LARGE_BATCH_CLAIMS = {
    "same-criterion": ("Every compared run reaches the training-accuracy target, with λ_max converged.",
                       "train accuracy ≈ 99–100 % for SB and LB", "Keskar et al. (2017), Table 2",
                       "The experiment"),
    "lb-sharper": ("At one learning rate, large batches converge to sharper minima.",
                   "F1 (MNIST MLP): 1.23 SB / 205.14 LB, full space ε = 1e-3",
                   "Keskar et al. (2017), Tables 3–4", "Keskar et al.'s comparison: SB against LB"),
    "lb-gap": ("At one learning rate, large batches test worse.",
               "F1: 98.03 % SB / 97.81 % LB test accuracy", "Keskar et al. (2017), Table 2",
               "Keskar et al.'s comparison: SB against LB"),
    "edge-of-stability": ("Large batches train at the edge of stability, η·λ_max ≈ 2; small batches "
                          "stay below.", "λ_max rises to 2/η and hovers there (full-batch GD)",
                          "Cohen et al. (2021), Fig. 1 [from the abstract, not verified]",
                          "The edge-of-stability confounder"),
    "yao-sharper": ("Larger batches converge to a larger λ_max (here with η ∝ √B).",
                    "λ₁ 0.64 at B = 16 to 80.18 at B = 2048 (CIFAR-10)",
                    "Yao et al. (2018), via the slide deck's table [parenthesized column unverified]",
                    "Yao et al.'s table: accuracy and λ₁ against the batch size"),
    "sqrt-gap": ("With η ∝ √B, large batches still test worse.",
                 "F1: 98.03 % SB / 97.81 % LB test accuracy", "Keskar et al. (2017), Table 2",
                 "Keskar et al.'s comparison: SB against LB"),
    "augmented-lb": ("Augmented large batches stay sharper than SB yet test at least as well.",
                     "C2: 90.26 % augmented LB / 89.82 % SB, sharpness 468.65 at ε = 1e-3",
                     "Keskar et al. (2017), Table 6",
                     "Keskar et al.'s Table 6: large batches with data augmentation")}

def large_batch_claims(measured: Mapping[str, Measurement], compared: Sequence[Mapping],
                       expected: Mapping[str, str], chapter: str = "01_large_batch") -> List[Claim]:
    r"""The large-batch chapter's claims (:data:`LARGE_BATCH_CLAIMS`), decided on ``measured``.

    The rules: ``same-criterion``: every run of ``compared`` reached its target and its
    :math:`\lambda_{\max}` converged; ``lb-sharper``: the intervals of the LB/SB ratios of
    :math:`\lambda_{\max}` above 1.5 and of Keskar's sharpness above 1; ``lb-gap`` and
    ``sqrt-gap``: the interval of SB − LB test accuracy above 0; ``edge-of-stability``: LB's
    :math:`\eta\lambda_{\max}` inside (1.6, 2.2) and SB's below 3/4 of LB's; ``yao-sharper``:
    the √B ratio of :math:`\lambda_{\max}` above 1; ``augmented-lb``: augmented LB's
    :math:`\lambda_{\max}` above SB's (ratio above 1) and SB − augmented LB accuracy below 0.
    With one seed the seed comparisons have no interval and are not testable.

    Args:
        measured: from :func:`large_batch_measurements`.
        compared: every run the claims compare (records with ``reached`` and
            ``lambda_max_converged``).
        expected: ``{claim id: expected outcome}`` for every claim, written in the chapter.
        chapter: the chapter's file stem.

    Returns:
        The claims, in the order of :data:`LARGE_BATCH_CLAIMS`.

    Raises:
        ValueError: ``expected`` does not name exactly the claims' ids, or ``compared`` is empty.
    """
    if set(expected) != set(LARGE_BATCH_CLAIMS):
        raise ValueError(f"expected: give an outcome for exactly {sorted(LARGE_BATCH_CLAIMS)}")
    if not compared:
        raise ValueError("compared: expected at least one run")
    m = measured
    ok = min(float(bool(r["reached"]) and bool(r["lambda_max_converged"])) for r in compared)
    decisions = {
        "same-criterion": interval_above(Measurement("every run reached (1) or not (0)", ok),
                                         threshold=0.5),
        "lb-sharper": all_of(interval_above(m["const-lam"], threshold=1.5),
                             interval_above(m["const-kes"], threshold=1.0)),
        "lb-gap": interval_above(m["const-gap"], threshold=0.0),
        "edge-of-stability": all_of(interval_above(m["edge-lb"], threshold=1.6),
                                    interval_below(m["edge-lb"], threshold=2.2),
                                    interval_below(m["edge-ratio"], threshold=0.75)),
        "yao-sharper": interval_above(m["sqrt-lam"], threshold=1.0),
        "sqrt-gap": interval_above(m["sqrt-gap"], threshold=0.0),
        "augmented-lb": all_of(interval_above(m["aug-lam"], threshold=1.0),
                               interval_below(m["aug-gap"], threshold=0.0))}
    return [Claim(chapter, cid, statement, paper, source, decisions[cid], expected[cid],
                  section=section)
            for cid, (statement, paper, source, section) in LARGE_BATCH_CLAIMS.items()]
