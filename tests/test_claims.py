"""Claims as data (flatness.claims) and the resampling statistics they decide on (flatness.stats).

The bootstrap is checked against its exact distribution, enumerated over all n^n resamples of a
small sample; the sign-flip test against a brute-force enumeration of all 2^n sign patterns.
"""

import itertools
import json
import math
import os

import numpy as np
import pytest

from flatness import claims as C
from flatness.stats import bootstrap_ci, paired_bootstrap_ci, sign_flip_test

K = 5.0  # k-sigma bounds on Monte Carlo error


# --- bootstrap ---------------------------------------------------------------------------------

def test_bootstrap_of_constant_values_is_a_point():
    b = bootstrap_ci([2.5] * 7, n_resamples=500)
    assert (b.estimate, b.low, b.high, b.n, b.level) == (2.5, 2.5, 2.5, 7, 0.95)


def test_bootstrap_of_two_values_spans_them():
    # The resampled mean of {a, b} is a, (a+b)/2, b with probabilities 1/4, 1/2, 1/4: both ends
    # carry more than 2.5 % of the mass, so the percentile interval is exactly [a, b].
    b = bootstrap_ci([1.0, 4.0], n_resamples=10_000)
    assert b.ci == (1.0, 4.0) and b.estimate == 2.5


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_bootstrap_ends_are_quantiles_of_the_exact_bootstrap_distribution(level):
    x = np.array([0.0, 1.0, 3.0, 7.0])
    n, R = x.size, 20_000
    exact = np.sort([x[list(idx)].mean() for idx in itertools.product(range(n), repeat=n)])
    b = bootstrap_ci(x, level=level, n_resamples=R, seed=3)
    for end, q in ((b.low, (1 - level) / 2), (b.high, 1 - (1 - level) / 2)):
        sigma = math.sqrt(q * (1 - q) / R)
        below = np.mean(exact < end)       # F(end-)
        at_or_below = np.mean(exact <= end)  # F(end)
        assert below <= q + K * sigma and at_or_below >= q - K * sigma


def test_bootstrap_statistic_without_axis_matches_the_vectorized_one():
    x = np.random.default_rng(1).normal(size=9)
    fast = bootstrap_ci(x, np.median, n_resamples=300, seed=5)
    slow = bootstrap_ci(x, lambda v: float(np.median(v)), n_resamples=300, seed=5)
    assert fast == slow


def test_bootstrap_is_a_function_of_its_inputs_and_single_values_have_no_interval():
    x = [0.3, 0.9, 0.4, 0.7]
    assert bootstrap_ci(x, seed=2) == bootstrap_ci(x, seed=2)
    one = bootstrap_ci([0.8])
    assert one.estimate == 0.8 and math.isnan(one.low) and math.isnan(one.high) and one.n == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(values=[]), "values"), (dict(values=[1.0, math.nan]), "values"),
    (dict(values=[[1.0, 2.0]]), "values"), (dict(values=[1.0, 2.0], level=1.0), "level"),
    (dict(values=[1.0, 2.0], n_resamples=0), "n_resamples")])
def test_bootstrap_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(**kwargs)


def test_paired_bootstrap_resamples_pairs_together():
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    b = a + 0.25                                # every pair differs by exactly -0.25
    p = paired_bootstrap_ci(a, b, n_resamples=400)
    assert p.low == pytest.approx(-0.25, abs=1e-12) and p.high == pytest.approx(-0.25, abs=1e-12)
    # with the same seed, the same indices: the mean difference is the bootstrap of d = a - b
    c = rng.normal(size=30)
    p, d = paired_bootstrap_ci(a, c, n_resamples=400, seed=7), bootstrap_ci(a - c, n_resamples=400, seed=7)
    assert abs(p.low - d.low) < 1e-12 and abs(p.high - d.high) < 1e-12
    with pytest.raises(ValueError, match="a, b"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])


# --- sign-flip test ----------------------------------------------------------------------------

def _brute_force_p(d, alternative):
    d = np.asarray(d, dtype=float)
    obs = d.mean()
    ts = np.array([np.dot(s, d) / d.size for s in itertools.product([-1.0, 1.0], repeat=d.size)])
    tol = 1e-12
    if alternative == "greater":
        return np.mean(ts >= obs - tol)
    if alternative == "less":
        return np.mean(ts <= obs + tol)
    return np.mean(np.abs(ts) >= abs(obs) - tol)


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_sign_flip_exact_p_is_the_enumerated_fraction(alternative):
    a = np.random.default_rng(4).normal(0.4, 1.0, size=9)
    b = np.random.default_rng(5).normal(0.0, 1.0, size=9)
    res = sign_flip_test(a, b, alternative=alternative)
    assert res.exact and res.n == 9
    assert res.p_value == _brute_force_p(a - b, alternative)
    assert res.statistic == pytest.approx(np.mean(a - b), abs=1e-15)


@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_sign_flip_monte_carlo_is_within_k_sigma_of_the_exact_p(alternative):
    d = np.random.default_rng(6).normal(0.3, 1.0, size=12)
    exact = sign_flip_test(d, alternative=alternative).p_value
    R = 20_000
    mc = sign_flip_test(d, alternative=alternative, n_resamples=R, exact_up_to=0)
    assert not mc.exact
    assert abs(mc.p_value - exact) <= K * math.sqrt(exact * (1 - exact) / R) + 1.0 / R


def test_sign_flip_of_all_positive_differences_is_one_over_two_to_the_n():
    assert sign_flip_test([0.3, 0.1, 0.2, 0.5, 0.4, 0.6]).p_value == 1 / 64
    # Monte Carlo p is never 0: (1 + count) / (R + 1)
    big = sign_flip_test(np.ones(40), n_resamples=99, exact_up_to=0)
    assert big.p_value >= 1 / 100
    with pytest.raises(ValueError, match="alternative"):
        sign_flip_test([1.0], alternative="bigger")


# --- decision rules ----------------------------------------------------------------------------

def _claim(decision, expected=C.HELD, cid="lb-sharper", chapter="02_large_batch"):
    return C.Claim(chapter, cid, "Large batches reach sharper minima.", "LB/SB ratio 1.5–5",
                   "Keskar et al. (2017), Table 2", decision, expected,
                   "LB/SB ratio of λ_max > 1 with the 95 % bootstrap interval above 1",
                   "Keskar et al.'s comparison: SB against LB")


def test_a_claim_whose_numbers_flip_changes_its_outcome():
    sharper = C.Measurement.bootstrap("LB/SB λ_max ratio", [1.6, 2.1, 2.4, 1.9, 2.8])
    flatter = C.Measurement.bootstrap("LB/SB λ_max ratio", [0.6, 0.8, 0.7, 0.9, 0.5])
    straddle = C.Measurement.bootstrap("LB/SB λ_max ratio", [0.6, 1.8, 0.7, 1.9, 1.2])
    held = _claim(C.interval_above(sharper, threshold=1.0))
    assert held.outcome == C.HELD and held.check() is held
    for m in (flatter, straddle):
        flipped = _claim(C.interval_above(m, threshold=1.0))
        assert flipped.outcome == C.NOT_HELD
        with pytest.raises(AssertionError, match=r"02_large_batch/lb-sharper.*expected 'held'"):
            flipped.check()
        assert _claim(C.interval_above(m, threshold=1.0), expected=C.NOT_HELD).check()


def test_interval_rules_are_strict_at_the_threshold():
    assert C.interval_above(1.5, (1.0, 2.0), 1.0).outcome == C.NOT_HELD      # L = t
    assert C.interval_above(1.5, (1.0 + 1e-12, 2.0), 1.0).outcome == C.HELD
    assert C.interval_below(1.5, (1.0, 2.0), 2.0).outcome == C.NOT_HELD      # H = t
    assert C.interval_below(1.5, (1.0, 2.0 - 1e-12), 2.0).outcome == C.HELD
    assert C.interval_contains(1.5, (1.0, 2.0), 2.0).outcome == C.HELD       # closed interval
    assert C.interval_contains(1.5, (1.0, 2.0), 2.0 + 1e-12).outcome == C.NOT_HELD
    assert C.within_tolerance(1.5, (1.0, 2.0), 1.5, 0.5).outcome == C.HELD
    assert C.within_tolerance(1.5, (1.0, 2.0), 1.5, 0.5 - 1e-12).outcome == C.NOT_HELD


def test_exact_numbers_are_compared_as_points():
    assert C.interval_above(2.0, None, 1.0).outcome == C.HELD
    assert C.interval_above(1.0, None, 1.0).outcome == C.NOT_HELD
    assert C.interval_below(0.0, None, 1e-8, name="max |Δ logit|").outcome == C.HELD
    assert C.interval_contains(0.0, None, 0.0).outcome == C.HELD
    assert C.interval_contains(1e-300, None, 0.0).outcome == C.NOT_HELD
    assert C.within_tolerance(2.05, None, 2.0, 0.1).outcome == C.HELD
    assert C.within_tolerance(2.2, None, 2.0, 0.1).outcome == C.NOT_HELD


def test_a_single_seed_is_not_testable():
    one = C.Measurement.bootstrap("ratio", [3.0])
    assert one.interval is None and one.n == 1 and not one.testable
    for rule in (C.interval_above(one, threshold=1.0), C.interval_below(one, threshold=1.0),
                 C.interval_contains(one, target=1.0),
                 C.within_tolerance(one, target=1.0, tolerance=0.1),
                 C.interval_above(bootstrap_ci([3.0]), threshold=1.0),
                 C.interval_above(3.0, (math.nan, math.nan), 1.0)):
        assert rule.outcome == C.NOT_TESTABLE and "1 seed" in rule.detail


def test_all_of_combines_outcomes():
    h, n, t = (C.interval_above(2.0, None, 1.0), C.interval_above(0.0, None, 1.0),
               C.not_testable("needs ImageNet"))
    assert C.all_of(h, h).outcome == C.HELD
    assert C.all_of(h, n).outcome == C.NOT_HELD and C.all_of(n, t).outcome == C.NOT_HELD
    assert C.all_of(h, t).outcome == C.NOT_TESTABLE
    assert len(C.all_of(h, n).measured) == 2
    with pytest.raises(ValueError, match="decisions"):
        C.all_of()


def test_paired_comparison_on_a_shared_test_set():
    rng = np.random.default_rng(0)
    b = (rng.random(400) < 0.7).astype(float)           # arm B right on 70 % of the examples
    a = b.copy()
    a[np.flatnonzero(b == 0)[:60]] = 1.0                # arm A also right on 60 more
    for method in ("bootstrap", "sign-flip"):
        d = C.paired_comparison(a, b, name="Δ accuracy", method=method)
        assert d.outcome == C.HELD, d.detail
        assert d.measured[0].estimate == pytest.approx(60 / 400, abs=1e-15)
        assert C.paired_comparison(a, b, alternative="less", method=method).outcome == C.NOT_HELD
        assert C.paired_comparison(a, b, margin=0.3, method=method).outcome == C.NOT_HELD
    # identical arms: no difference to detect
    assert C.paired_comparison(b, b).outcome == C.NOT_HELD
    with pytest.raises(ValueError, match="method"):
        C.paired_comparison(a, b, method="t-test")


def test_decision_rules_reject_bad_arguments():
    with pytest.raises(TypeError, match="threshold"):
        C.interval_above(1.0, None)
    with pytest.raises(ValueError, match="ci"):
        C.interval_above(1.0, (0.0, 1.0, 2.0), 0.5)
    with pytest.raises(ValueError, match="low, high"):
        C.interval_above(1.0, (2.0, 0.0), 0.5)
    with pytest.raises(ValueError, match="tolerance"):
        C.within_tolerance(1.0, None, 1.0, -1.0)
    with pytest.raises(ValueError, match="estimate"):
        C.interval_above(math.inf, None, 0.0)


# --- claims, rendering, serialization ----------------------------------------------------------

def _claims():
    m = C.Measurement("λ ratio | LB/SB", 0.1 + 0.2, 1 / 3, 0.7, 0.95, 5, "seeds",
                      "percentile bootstrap")
    return [
        _claim(C.interval_above(m, threshold=0.25)),
        _claim(C.all_of(C.interval_below(1e-300, None, 1e-8, name="error"),
                        C.interval_contains(2.0, (1.8, 2.2), 2.0, name="slope")),
               cid="alpha-scale"),
        _claim(C.not_testable("the paper's ImageNet runs are out of reach"), C.NOT_TESTABLE,
               cid="imagenet"),
    ]


def test_claims_round_trip_exactly_through_json():
    for c in _claims():
        again = C.Claim.from_dict(json.loads(json.dumps(c.to_dict())))
        assert again == c and again.measured == c.measured
    m = _claims()[0].measured[0]
    assert C.Measurement.from_dict(json.loads(json.dumps(m.to_dict()))).estimate == 0.1 + 0.2


def test_write_and_read_claims(tmp_path, monkeypatch):
    cs = _claims()
    monkeypatch.setenv("FLATNESS_CLAIMS_DIR", str(tmp_path / "claims"))
    path = C.write_claims(cs, "02_large_batch", quick=True)
    assert path == tmp_path / "claims" / "quick" / "02_large_batch.json"
    assert sorted(os.listdir(path.parent)) == ["02_large_batch.json"]   # no temporary file left
    back = C.read_claims(path)
    assert back.chapter == "02_large_batch" and back.mode == "quick" and list(back.claims) == cs
    # the mode comes from $FLATNESS_QUICK when not given; an explicit directory wins
    monkeypatch.setenv("FLATNESS_QUICK", "0")
    assert C.write_claims(cs, "02_large_batch", tmp_path / "other").parent == tmp_path / "other" / "full"
    # rewriting replaces the file
    C.write_claims(cs[:1], "02_large_batch", quick=True)
    assert len(C.read_claims(path).claims) == 1


def test_default_claims_directory_is_the_repository_build_folder(monkeypatch):
    monkeypatch.delenv("FLATNESS_CLAIMS_DIR", raising=False)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(C.__file__)))
    assert str(C.claims_directory(quick=False)) == os.path.join(repo, "_build", "claims", "full")


def test_write_claims_rejects_bad_sets(tmp_path):
    cs = _claims()
    with pytest.raises(ValueError, match="belongs to chapter"):
        C.write_claims(cs, "03_alpha_scale", tmp_path, quick=True)
    with pytest.raises(ValueError, match="twice"):
        C.write_claims([cs[0], cs[0]], "02_large_batch", tmp_path, quick=True)
    with pytest.raises(ValueError, match="at least one"):
        C.write_claims([], "02_large_batch", tmp_path, quick=True)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a claims file"):
        C.read_claims(tmp_path / "bad.json")


def test_rendering():
    cs = _claims()
    table = str(C.claims_table(cs))
    lines = table.splitlines()
    assert lines[0] == "| claim | paper | ours | test | outcome |" and len(lines) == 2 + len(cs)
    assert "λ ratio \\| LB/SB 0.3 (95 % CI 0.333 to 0.7, 5 seeds)" in lines[2]
    assert "not testable here: the paper's ImageNet runs are out of reach" in lines[4]
    # the nbval line: ids and outcomes only, never numbers
    assert C.outcome_line(cs) == "lb-sharper: held\nalpha-scale: held\nimagenet: not testable here"


def test_check_claims_names_every_mismatch():
    cs = _claims()
    assert C.check_claims(cs) == cs
    wrong = [_claim(c.decision, C.NOT_HELD, c.id) for c in cs[:2]]
    with pytest.raises(AssertionError) as e:
        C.check_claims(wrong + cs[2:])
    assert "lb-sharper" in str(e.value) and "alpha-scale" in str(e.value)
    assert "imagenet" not in str(e.value)
    with pytest.raises(ValueError, match="twice"):
        C.check_claims([cs[0], cs[0]])


@pytest.mark.parametrize("field, value, error", [
    ("id", "LB sharper", ValueError), ("expected", "reproduced", ValueError),
    ("decision", "held", TypeError), ("statement", "", ValueError),
    ("chapter", "../x", ValueError)])
def test_claim_rejects_bad_fields(field, value, error):
    kwargs = dict(chapter="02_large_batch", id="a", statement="S.", paper="1", source="",
                  decision=C.interval_above(2.0, None, 1.0), expected=C.HELD)
    kwargs[field] = value
    with pytest.raises(error, match=field):
        C.Claim(**kwargs)


def test_test_defaults_to_the_decision_rule():
    c = C.Claim("00_x", "a", "S.", "1", "", C.interval_above(2.0, (1.5, 2.5), 1.0), C.HELD)
    assert c.test == "95 % interval above 1"


def test_all_of_lists_a_number_tested_twice_once():
    from flatness.claims import Measurement, all_of, interval_above, interval_below

    m = Measurement("η·λ_max", 2.0, 1.9, 2.1, level=0.95, n=5)
    d = all_of(interval_above(m, threshold=1.6), interval_below(m, threshold=2.2))
    assert d.measured == (m,) and d.outcome == "held"
