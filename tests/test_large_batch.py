"""Tests of flatness.large_batch: per-seed measurements and the large-batch chapter's claims."""

from __future__ import annotations

import numpy as np
import pytest

from flatness import large_batch


def test_seed_measurement_pairs_runs_by_seed():
    sb = [dict(seed=0, batch_size=64, m=1.0), dict(seed=0, batch_size=256, m=3.0),
          dict(seed=1, batch_size=64, m=4.0), dict(seed=2, batch_size=64, m=5.0)]
    lb = [dict(seed=0, m=4.0), dict(seed=1, m=2.0)]  # seed 2 has no LB run: left out
    assert large_batch.seed_values(sb, "m") == {0: 2.0, 1: 4.0, 2: 5.0}
    ratio = large_batch.seed_measurement("LB/SB", sb, lb, "m")
    assert ratio.estimate == (4.0 / 2.0 + 2.0 / 4.0) / 2 and ratio.n == 2 and ratio.unit == "seeds"
    assert ratio.interval == (0.5, 2.0)  # the bootstrap of two values spans them
    gap = large_batch.seed_measurement("SB − LB", sb, lb, "m", "difference")
    assert gap.estimate == ((2.0 - 4.0) + (4.0 - 2.0)) / 2
    alone = large_batch.seed_measurement("LB", [], lb[:1], "m", "large")
    assert alone.estimate == 4.0 and alone.interval is None and not alone.testable  # one seed
    with pytest.raises(ValueError, match="statistic"):
        large_batch.seed_measurement("x", sb, lb, "m", "mean")
    with pytest.raises(ValueError, match="no seed in common"):
        large_batch.seed_measurement("x", sb, [dict(seed=7, m=1.0)], "m")
    with pytest.raises(ValueError, match="'m'"):
        large_batch.seed_values([dict(seed=0)], "m")


def _runs(batch_size, values, **extra):
    return [dict(seed=s, batch_size=batch_size, reached=True, lambda_max_converged=1.0, **extra,
                 **{k: v[s] for k, v in values.items()}) for s in range(len(values["lambda_max"]))]


def test_large_batch_claims_decide_each_rule():
    from flatness.claims import HELD, NOT_HELD, NOT_TESTABLE

    kes = "keskar_full_0.001"
    sb = _runs(64, {"lambda_max": [4.0, 5.0, 4.5], kes: [5.0, 5.5, 6.0], "test_acc": [0.65, 0.64, 0.66],
                    "eta_lambda": [0.8, 1.0, 0.9]})
    lb = _runs(400, {"lambda_max": [10.0, 10.1, 9.9], kes: [7.0, 7.5, 8.0], "test_acc": [0.61, 0.62, 0.60],
                     "eta_lambda": [2.0, 2.02, 1.98]})
    sqrt_lb = _runs(400, {"lambda_max": [4.0, 4.4, 4.1], kes: [5.0, 5.1, 5.2], "test_acc": [0.66, 0.65, 0.66],
                          "eta_lambda": [2.0, 2.2, 2.05]})
    aug = _runs(400, {"lambda_max": [9.0, 8.9, 9.1], kes: [6.0, 6.1, 6.2], "test_acc": [0.70, 0.69, 0.71],
                      "eta_lambda": [1.8, 1.78, 1.82]})
    m = large_batch.large_batch_measurements(sb, lb, sb, sqrt_lb, aug)
    assert m["const-lam"].estimate == pytest.approx(np.mean([10.0 / 4.0, 10.1 / 5.0, 9.9 / 4.5]))
    assert m["edge-ratio"].estimate == pytest.approx(np.mean([0.8 / 2.0, 1.0 / 2.02, 0.9 / 1.98]))
    assert m["aug-gap"].estimate == pytest.approx(np.mean([-0.05, -0.05, -0.05]))
    outcomes = {"same-criterion": HELD, "lb-sharper": HELD, "lb-gap": HELD, "edge-of-stability": HELD,
                "yao-sharper": NOT_HELD, "sqrt-gap": NOT_HELD, "augmented-lb": HELD}
    claims = large_batch.large_batch_claims(m, sb + lb + aug, outcomes)
    assert {c.id: c.outcome for c in claims} == outcomes
    assert [c.id for c in claims] == list(large_batch.LARGE_BATCH_CLAIMS)
    # a run that missed its target fails the shared criterion
    missed = [dict(lb[0], reached=False)]
    assert large_batch.large_batch_claims(m, sb + missed, outcomes)[0].outcome == NOT_HELD
    # one seed: every comparison over seeds is untestable, the criterion is not
    one = large_batch.large_batch_measurements(sb[:1], lb[:1], sb[:1], sqrt_lb[:1], aug[:1])
    single = {c.id: c.outcome for c in large_batch.large_batch_claims(one, sb[:1], outcomes)}
    assert single.pop("same-criterion") == HELD and set(single.values()) == {NOT_TESTABLE}
    with pytest.raises(ValueError, match="expected"):
        large_batch.large_batch_claims(m, sb, {"lb-gap": HELD})
    with pytest.raises(ValueError, match="compared"):
        large_batch.large_batch_claims(m, [], outcomes)
