"""The flatness report: rows, costs, budgets, exports."""

import json
import math

import pytest
import torch

from flatness import measures as M
from flatness.models import mlp
from flatness.report import Budget, FlatnessReport, report
from oracles import assert_unperturbed, snapshot

LOSS = torch.nn.CrossEntropyLoss()


@pytest.fixture(scope="module")
def setting():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(48, 4, generator=g)
    y = (X[:, 0] > 0).long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = mlp(4, (5,), 2)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        LOSS(net(X), y).backward()
        opt.step()
    net.zero_grad(set_to_none=True)
    return net.eval(), (X[:32], y[:32]), (X[32:], y[32:])


def test_rows_match_the_measures(setting):
    net, train, test = setting
    names = ["lambda_max", "trace", "keskar"]
    snap = snapshot(net)
    rep = report(net, LOSS, train, test, measures=names, progress=False)
    assert_unperturbed(net, snap)
    assert isinstance(rep, FlatnessReport) and [r.name for r in rep.rows] == names
    for r in rep.rows:
        assert r.value == pytest.approx(M.MEASURES[r.name](net, LOSS, train, seed=0), rel=1e-9)
        assert r.status == "ok" and r.seconds >= 0
        assert r.invariant_to == M.MEASURES[r.name].invariance_flags()
    assert rep["trace"].hvps == 30 and rep["keskar"].hvps == 0 and rep["lambda_max"].hvps > 0
    s = rep.summary
    assert s["gap"] == pytest.approx(s["train accuracy"] - s["test accuracy"])


def test_hvp_budget_truncates_and_says_so(setting):
    net, train, _ = setting
    rep = report(net, LOSS, train, measures=["trace", "frobenius", "keskar"],
                 budget={"hvps": 8}, progress=False)
    assert rep["trace"].hvps == 8 and rep["trace"].status.startswith("truncated")
    assert rep["frobenius"].hvps == 8 and "8 of 30" in rep["frobenius"].status
    assert rep["keskar"].status == "ok"  # not Hessian-based: untouched
    assert "truncated" in rep.to_markdown()


def test_time_budget_skips_the_rest(setting):
    net, train, _ = setting
    slow = M.Measure("slow", lambda *a, **k: (__import__("time").sleep(0.2), 1.0)[1], frozenset(),
                     "slow", "sleeps", "none")
    rep = report(net, LOSS, train, measures=[slow, "trace", "log_volume"],
                 budget=Budget(seconds=0.1), progress=False)
    assert rep["slow"].status == "ok" and rep["slow"].value == 1.0
    for name in ("trace", "log_volume"):
        assert rep[name].status.startswith("skipped") and math.isnan(rep[name].value)
        assert rep[name].hvps == 0


def test_expensive_measure_skipped_when_half_the_budget_is_gone(setting):
    net, train, _ = setting
    slow = M.Measure("slow", lambda *a, **k: (__import__("time").sleep(0.3), 1.0)[1], frozenset(),
                     "slow", "sleeps", "none")
    rep = report(net, LOSS, train, measures=[slow, "log_volume", "keskar"],
                 budget=Budget(seconds=0.5), progress=False)
    assert rep["log_volume"].status.startswith("skipped: expensive")
    assert rep["keskar"].status == "ok"


def test_exports(setting):
    net, train, test = setting
    rep = report(net, LOSS, train, test, measures=["lambda_max", "keskar"], progress=False)
    d = rep.to_dict()
    json.dumps(d)  # plain data
    assert set(d["measures"]) == {"lambda_max", "keskar"}
    assert d["measures"]["keskar"]["invariant_to"] == {s: False for s in M.INVARIANCES}
    md = rep.to_markdown()
    assert md == rep._repr_markdown_() and "| measure |" in md and "λ_max" in md
    assert "<table>" in rep._repr_html_() and "&lt;" not in rep._repr_html_().split("<table>")[0]


def test_bad_input(setting):
    net, train, _ = setting
    with pytest.raises(ValueError, match="measures"):
        report(net, LOSS, train, measures=["no such measure"], progress=False)
    with pytest.raises(ValueError, match="measures"):
        report(net, LOSS, train, measures=[], progress=False)
    with pytest.raises(ValueError, match="budget"):
        report(net, LOSS, train, measures=["keskar"], budget={"products": 3}, progress=False)
    with pytest.raises(ValueError, match="budget.hvps"):
        Budget(hvps=0)
    with pytest.raises(TypeError, match="budget"):
        report(net, LOSS, train, measures=["keskar"], budget="fast", progress=False)
    with pytest.raises(KeyError):
        report(net, LOSS, train, measures=["keskar"], progress=False)["trace"]


def test_measure_too_large_for_the_model_is_skipped(setting):
    net, train, _ = setting
    small = M.MEASURES["trace"].__class__(**{**M.MEASURES["trace"].__dict__, "name": "tiny",
                                              "max_params": 3})
    rep = report(net, LOSS, train, measures=[small, "keskar"], progress=False)
    assert rep["tiny"].status.startswith("skipped: more than the 3 parameters")
    assert math.isnan(rep["tiny"].value) and rep["keskar"].status == "ok"
