"""Tests of benchmarks.report: parsing the committed benchmark and checking its goals."""

from __future__ import annotations

import json

import pytest

from benchmarks import report


def rec(model, task, method, products, seconds, rel_error=None, setting=""):
    return dict(model=model, task=task, method=method, products=products, seconds=seconds,
                rel_error=rel_error, setting=setting)


BENCH = {"tolerance": 1e-3, "records": [
    rec("cnn", "lambda_max", "flatness", 10, 1.0, 5e-4, "tol=0.01"),
    rec("cnn", "lambda_max", "pyhessian", 40, 3.0, 5e-4),
    rec("mlp", "lambda_max", "flatness", 10, 1.0, 5e-4),
    rec("mlp", "lambda_max", "pyhessian", 20, 1.5, 5e-4),
    rec("mlp", "top5", "flatness", 30, 2.0, 1e-4),
    rec("mlp", "top5", "pyhessian", 60, 4.0, 1e-4),
    rec("mlp", "top5", "curvlinops", 20, 4.0, 0.5),  # fewer products, but never reached the tolerance
    rec("mlp", "trace@10", "flatness", 10, 0.1, 0.01),
    rec("mlp", "trace@10", "pyhessian", 10, 0.1, 0.05),
    rec("mlp", "trace@30", "flatness", 30, 0.3, 0.04),
    rec("mlp", "trace@30", "pyhessian", 30, 0.3, 0.05),
    rec("mlp", "hvp", "flatness", 8, 0.16, None, "a | b"),
    rec("cnn", "dense_spectrum", "flatness", 3002, 75.0, 1e-9)]}


def test_models_get_and_ratio():
    assert report.models(BENCH) == ["mlp", "cnn"]
    assert report.get(BENCH, "mlp", "top5", "pyhessian")["products"] == 60
    assert report.get(BENCH, "mlp", "top5", "nobody") is None
    assert report.ratio(BENCH, "mlp", "lambda_max", "pyhessian", "products") == 0.5
    assert report.ratio(BENCH, "cnn", "top5", "pyhessian", "products") is None


def test_tables_are_exact():
    t = str(report.results_table(BENCH, ["lambda_max"], ["flatness", "pyhessian"])).splitlines()
    assert t[0] == "| model | task | method | products | seconds | rel. error | setting |"
    assert t[2] == "| mlp | lambda_max | flatness | 10 | 1.00 | 5.0e-04 |  |"
    assert t[4] == "| cnn | lambda_max | flatness | 10 | 1.00 | 5.0e-04 | tol=0.01 |"
    assert len(t) == 6
    assert str(report.hvp_table(BENCH)).splitlines()[2] == "| mlp | flatness | 8 | 20.0 | a \\| b |"


def test_check_goals_every_branch():
    goals, table = report.check_goals(BENCH)
    assert goals == {
        "mlp: λ_max ≤ 1/3 of PyHessian's products and ≤ 1/2 of its time": False,  # ×0.50
        "mlp: top-5 with fewer products than every peer": True,  # curvlinops never reached 1e-3
        "mlp: trace error at 10 products ≤ 1/2 of Hutchinson's": True,  # ×0.2
        "mlp: trace error at 30 products ≤ 1/2 of Hutchinson's": False,  # ×0.8
        "cnn: λ_max ≤ 1/3 of PyHessian's products and ≤ 1/2 of its time": True,  # ×0.25, ×0.33
        "cnn: dense spectrum in under a minute": False}
    lines = str(table).splitlines()
    assert "| mlp | λ_max vs PyHessian | products ×0.50, seconds ×0.67 | False |" in lines
    assert "| mlp | top-5 products vs pyhessian, curvlinops | ×0.50, ×1.50 | True |" in lines
    assert lines[-1] == "| cnn | dense spectrum | 75 s | False |"


def test_load_round_trip_and_refusals(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(BENCH))
    assert report.load(good) == BENCH
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tolerance": 1e-3, "records": [{"model": "mlp"}]}))
    with pytest.raises(ValueError, match="record 0"):
        report.load(bad)
    bad.write_text(json.dumps({"records": []}))
    with pytest.raises(ValueError, match="tolerance"):
        report.load(bad)


# --- goals as claims --------------------------------------------------------------------------

def test_goals_have_check_goals_outcomes():
    from flatness.claims import HELD, NOT_HELD

    committed = report.load(report.Path(__file__).parent.parent / "benchmarks/results/curvature.json")
    for bench in (BENCH, committed):
        held, _ = report.check_goals(bench)
        found = report.goals(bench)
        assert len(found) == len(held)
        assert [g.decision.outcome for g in found] == [HELD if ok else NOT_HELD for ok in held.values()]
    # 10 products against 20 is a ratio of exactly 1/2 and 1/3 is the bound: "at most" includes it
    edge = {"tolerance": 1e-3, "records": [rec("mlp", "lambda_max", "flatness", 5, 1.0, 5e-4),
                                           rec("mlp", "lambda_max", "pyhessian", 15, 2.0, 5e-4)]}
    assert report.goals(edge)[0].decision.outcome == HELD and report.check_goals(edge)[0] == {
        "mlp: λ_max ≤ 1/3 of PyHessian's products and ≤ 1/2 of its time": True}


def test_goal_claims_need_every_expected_outcome():
    from flatness.claims import HELD

    found = report.goals(BENCH)
    expected = {g.id: g.decision.outcome for g in found}
    claims = report.goal_claims(found, expected, "appendix_speed", "Goals", "the page")
    assert [c.id for c in claims] == [g.id for g in found] and all(c.as_expected for c in claims)
    # 30 products against PyHessian's 60; curvlinops' 20 never reached the tolerance, so it does not count
    assert {c.id: c.outcome for c in claims}["mlp-top5"] == HELD
    assert {c.id: c.outcome for c in claims}["cnn-lambda-max"] == HELD
    with pytest.raises(ValueError, match="expected"):
        report.goal_claims(found, {**expected, "nobody": HELD}, "appendix_speed", "Goals", "the page")
    with pytest.raises(ValueError, match="expected"):
        report.goal_claims(found, {}, "appendix_speed", "Goals", "the page")


def pop(task, model, P, B, speedup):
    return dict(task=task, model=model, P=P, batch_size=B, population_seconds=1.0,
                loop_seconds=speedup, speedup=speedup)


def test_population_goals_and_table(tmp_path):
    from flatness.claims import HELD, NOT_HELD

    bench = {"records": [pop("train", "mlp", 1, 64, 1.0), pop("train", "mlp", 20, 64, 10.0),
                         pop("train", "cnn", 1, 64, 0.99), pop("lambda_max", "mlp", 20, None, 4.9)]}
    found = {g.id: g.decision for g in report.population_goals(bench)}
    assert found["population-train"].outcome == HELD  # exactly 10× meets "at least 10×"
    assert found["population-lambda-max"].outcome == NOT_HELD
    assert found["population-p1"].outcome == NOT_HELD  # the CNN cell is 1 % slower
    assert found["population-p1"].measured[0].estimate == 0.99
    assert report.population_goals({"records": [pop("train", "mlp", 5, 16, 3.0)]}) == []
    assert str(report.population_table(bench)).splitlines()[3] == "| train | mlp | 20 | 64 | 1.00 | 10.00 | ×10.00 |"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(bench))
    assert report.load_population(path) == bench
    path.write_text(json.dumps({"records": [{"task": "train"}]}))
    with pytest.raises(ValueError, match="lacks"):
        report.load_population(path)
    committed = report.load_population(report.Path(__file__).parent.parent / "benchmarks/results/population.json")
    assert {g.id for g in report.population_goals(committed)} == {
        "population-train", "population-lambda-max", "population-p1"}


def test_defaults_goal_needs_error_products_and_time():
    from flatness.claims import HELD, NOT_HELD

    def bench(fl_products, fl_seconds, fl_error):
        return {"tolerance": 1e-3, "records": [
            rec("mlp", "lambda_max@defaults", "flatness@defaults", fl_products, fl_seconds, fl_error),
            rec("mlp", "lambda_max@defaults", "pyhessian@defaults", 12, 1.0, 3e-3)]}

    cases = [((6, 0.5, 1e-7), HELD),       # exactly half of both, within the tolerance
             ((7, 0.5, 1e-7), NOT_HELD),   # one product too many
             ((6, 0.6, 1e-7), NOT_HELD),   # too slow
             ((3, 0.1, 2e-3), NOT_HELD)]   # cheap but not within 1e-3
    for args, outcome in cases:
        found = {g.id: g.decision.outcome for g in report.goals(bench(*args))}
        assert found == {"mlp-lambda-max-defaults": outcome}
        held, _ = report.check_goals(bench(*args))
        assert list(held.values()) == [outcome == HELD]
