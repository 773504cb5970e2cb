"""Tests of flatness.stats: groups of runs, SB-against-LB comparisons, their noise, rank correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flatness.stats import (GroupComparison, RankCorrelation, by_batch, compare_by_group,
                            compare_groups, rank_correlation)

# --- statistics --------------------------------------------------------------------------------

RECORDS = [{"batch_size": B, "acc": a, "lam": l_} for B, a, l_ in [
    (64, 0.80, 1.0), (64, 0.84, 3.0), (256, 0.78, 2.0), (256, 0.80, 2.0),
    (4000, 0.70, 20.0), (4000, 0.76, 40.0)]]


def test_by_batch():
    rows = by_batch(RECORDS, "acc")
    assert [r[0] for r in rows] == [64, 256, 4000]
    B, mean, std, n = rows[0]
    assert (mean, n) == (pytest.approx(0.82), 2)
    assert std == pytest.approx(np.std([0.8, 0.84], ddof=1))
    assert math.isnan(by_batch([{"batch_size": 1, "acc": 0.5}], "acc")[0][2])


def test_compare_groups_against_hand_computation():
    c = compare_groups(RECORDS, "lam", small=[64, 256], large=[4000])
    assert c.small_mean == pytest.approx(2.0) and c.large_mean == pytest.approx(30.0)
    assert c.ratio == pytest.approx(15.0) and c.gap == pytest.approx(-28.0)
    assert c.small_std == pytest.approx(np.std([1, 3, 2, 2], ddof=1))
    # pooled within-batch-size variance: (2 + 0 + 200) / 3
    assert c.seed_spread == pytest.approx(math.sqrt(202 / 3))
    assert (c.n_small, c.n_large) == (4, 2)
    single = compare_groups([r for r in RECORDS if r["acc"] not in (0.84, 0.80, 0.76)], "acc",
                            small=[256], large=[4000])
    assert math.isnan(single.seed_spread) and math.isnan(single.large_std)


@pytest.mark.parametrize("kwargs,match", [
    ({"small": [64], "large": [64, 4000]}, "share"), ({"small": [16], "large": [4000]}, "small"),
    ({"small": [64], "large": [999]}, "large"), ({"metric": "loss"}, "metric")])
def test_compare_groups_refuses(kwargs, match):
    args = {"records": RECORDS, "metric": "acc", "small": [64], "large": [4000], **kwargs}
    with pytest.raises(ValueError, match=match):
        compare_groups(**args)
    with pytest.raises(ValueError, match="records"):
        compare_groups([], "acc", [64], [4000])
    with pytest.raises(ValueError, match="batch_size"):
        by_batch([{"acc": 1.0}], "acc")


def test_sampling_error_and_noise_are_the_formulas():
    c = compare_groups(RECORDS, "acc", small=[64], large=[4000])
    p1, p2 = c.small_mean, c.large_mean
    assert c.sampling_error(1000) == pytest.approx(math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / 1000),
                                                   rel=1e-15)
    # four times the test set halves the standard error
    assert c.sampling_error(4000) == pytest.approx(c.sampling_error(1000) / 2, rel=1e-12)
    assert c.noise(1000) == max(c.sampling_error(1000), c.seed_spread)
    single = GroupComparison(0.8, math.nan, 0.7, math.nan, 0.875, 0.1, math.nan, 1, 1)
    assert single.noise(100) == single.sampling_error(100)
    with pytest.raises(ValueError, match="n"):
        c.sampling_error(0)
    with pytest.raises(ValueError, match="small_mean"):
        GroupComparison(2.0, 0, 0.5, 0, 0.25, 1.5, 0, 1, 1).sampling_error(10)
    assert GroupComparison(2.0, 0, 30.0, 0, 15.0, -28.0, 0, 1, 1).ratio_text() == "2 / 30 (15.00×)"


def test_compare_by_group_is_compare_groups_within_each_group():
    rs = [dict(r, opt=o) for o in ("sgd", "adam") for r in RECORDS]
    rs = [r for r in rs if not (r["opt"] == "adam" and r["batch_size"] == 4000)]
    out = compare_by_group(rs, ["acc", "lam"], small=[64, 256], large=[4000, 256 * 100], by=["opt"])
    assert list(out) == [("sgd", 4000)]  # adam has no large-batch run; absent sizes are skipped
    assert out["sgd", 4000]["lam"] == compare_groups(RECORDS, "lam", [64, 256], [4000])
    two = compare_by_group(rs, ["acc"], small=[64], large=[256, 4000], by="opt")
    assert list(two) == [("sgd", 256), ("sgd", 4000), ("adam", 256)]
    with pytest.raises(ValueError, match="by"):
        compare_by_group(rs, ["acc"], [64], [4000], by=["rule"])
    with pytest.raises(ValueError, match="small"):
        compare_by_group(rs, ["acc"], [16], [4000], by=["opt"])


def _ranks(v):
    """Ranks 1..n with ties at their mean rank (the oracle)."""
    v = np.asarray(v, dtype=float)
    ranks = np.empty(len(v))
    for i, x in enumerate(v):
        below, equal = np.sum(v < x), np.sum(v == x)
        ranks[i] = below + (equal + 1) / 2
    return ranks


def test_rank_correlation_is_pearson_of_ranks():
    rng = np.random.default_rng(0)
    x = rng.choice([16, 64, 256, 4000], size=18)  # ties, as in a sweep with seeds
    y = rng.normal(size=18)
    rs = [{"B": int(a), "lam": float(b)} for a, b in zip(x, y)]
    res = rank_correlation(rs, "B", "lam")
    assert res.rho == pytest.approx(np.corrcoef(_ranks(x), _ranks(y))[0, 1], abs=1e-12)
    assert res.n == 18 and 0.0 <= res.pvalue <= 1.0
    # a monotone transformation leaves ρ at exactly ±1
    mono = [{"B": b, "lam": math.log(b)} for b in (16, 64, 256)]
    assert rank_correlation(mono, "B", "lam").rho == pytest.approx(1.0, abs=1e-12)
    reverse = [dict(r, lam=-r["lam"]) for r in mono]
    assert rank_correlation(reverse, "B", "lam").rho == pytest.approx(-1.0, abs=1e-12)
    assert RankCorrelation(0.5, 0.01234, 12).describe() == "+0.50 (p = 0.012, n = 12)"
    assert RankCorrelation(0.5, 0.01234, 12).describe(p_from=13) == "+0.50 (n = 12)"
    with pytest.raises(ValueError, match="records"):
        rank_correlation(rs[:1], "B", "lam")
    with pytest.raises(ValueError, match="y"):
        rank_correlation(rs, "B", "acc")
