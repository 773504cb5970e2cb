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
