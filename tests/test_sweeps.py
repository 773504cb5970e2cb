"""Tests of flatness.sweeps: sweeps, warm starts, the stability bound, summaries, records and their tables."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from oracles import oracle_hessian
from torch import nn

from flatness import cache as cache_module
from flatness import sweeps
from flatness.cache import load_or_train
from flatness.data import from_spec
from flatness.sharpness import keskar_sharpness
from flatness.stability import stability_threshold
from flatness.stats import compare_by_group, group_records
from flatness.sweeps import (
    COLUMNS,
    comparison_table,
    correlation_cell,
    flatness_summary,
    fraction_cell,
    gap_table,
    join_cells,
    mean_std_cell,
    records_table,
    run_sweep,
    scaled_lr,
    select,
    sharpness_key,
    sweep_configs,
    value_cell,
    warm_start,
)
from flatness.training import TrainConfig

BASE = TrainConfig(model={"name": "mlp", "input_dim": 4, "widths": [3], "num_classes": 3},
                   data={"name": "mnist1d"}, lr=0.1, target_train_acc=0.99, max_epochs=100)


# --- learning-rate rules and sweeps -------------------------------------------------------------

@pytest.mark.parametrize("rule,expected", [("constant", 0.1), ("sqrt", 0.4), ("linear", 1.6)])
def test_scaled_lr_rules(rule, expected):
    assert scaled_lr(0.1, 1024, base_batch=64, rule=rule) == pytest.approx(expected)
    assert scaled_lr(0.1, 64, base_batch=64, rule=rule) == pytest.approx(0.1)


@pytest.mark.parametrize("kwargs,match", [
    ({"base_lr": 0.0}, "base_lr"), ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"), ({"rule": "cubic"}, "rule"), ({"max_lr": -1.0}, "max_lr")])
def test_scaled_lr_refuses(kwargs, match):
    args = {"base_lr": 0.1, "batch_size": 64, **kwargs}
    with pytest.raises(ValueError, match=match):
        scaled_lr(**args)


def test_sweep_configs_equal_learning_rate_budget():
    runs = sweep_configs(BASE, [16, 64, 4000], seeds=[0, 1, 2], rule="sqrt")
    assert len(runs) == 9 and list(runs)[:3] == [(16, 0), (16, 1), (16, 2)]
    N = 4000
    budgets = set()
    for (B, s), cfg in runs.items():
        assert cfg.batch_size == B and cfg.seed == s
        assert cfg.lr == pytest.approx(0.1 * math.sqrt(B / 64))
        budget = cfg.lr * cfg.max_epochs * N / B  # the sum of the learning rates over the cap
        budgets.add(round(budget / (0.1 * 100 * N / 64), 2))
        # everything else is the base configuration
        assert cfg.replace(batch_size=64, lr=0.1, max_epochs=100, seed=0) == BASE
    assert budgets <= {1.0, 1.01}  # equal up to the rounding of the cap to whole epochs


def test_sweep_configs_constant_rule_scales_epochs():
    runs = sweep_configs(BASE, [64, 128], seeds=[0], rule="constant")
    assert runs[(128, 0)].max_epochs == 2 * runs[(64, 0)].max_epochs
    assert runs[(128, 0)].lr == runs[(64, 0)].lr == 0.1


@pytest.mark.parametrize("sizes,seeds,match", [
    ([], [0], "batch_sizes"), ([64, 64], [0], "batch_sizes"), ([64], [0, 0], "seeds"),
    ([0], [0], "batch_sizes"), ([64], [-1], "seeds")])
def test_sweep_configs_refuses(sizes, seeds, match):
    with pytest.raises(ValueError, match=match):
        sweep_configs(BASE, sizes, seeds)
    with pytest.raises(TypeError, match="base"):
        sweep_configs({"lr": 0.1}, [64], [0])


def test_warm_start():
    sb, lb = BASE.replace(batch_size=64), BASE.replace(batch_size=4000, lr=0.8)
    assert warm_start(sb, lb, 0) is lb
    ws = warm_start(sb, lb, 3)
    assert ws.replace(init=None) == lb
    assert ws.init == sb.replace(epochs=3, target_train_acc=None)
    assert warm_start(sb, lb, 3).key() == ws.key() != warm_start(sb, lb, 4).key()
    with pytest.raises(ValueError, match="epochs"):
        warm_start(sb, lb, -1)
    with pytest.raises(ValueError, match="same model"):
        warm_start(sb, lb.replace(model={"name": "cnn1d"}), 2)
    with pytest.raises(TypeError, match="small"):
        warm_start(None, lb, 2)


# --- the stability bound: exact on a quadratic ---------------------------------------------------

def _sgd_on_quadratic(curvature: float, lr: float, momentum: float, steps: int = 400) -> float:
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr, momentum=momentum)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * x ** 2).sum().backward()
        opt.step()
    return abs(float(x.detach()))


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_stability_threshold_is_exact_for_heavy_ball(momentum):
    lr = 0.3
    bound = stability_threshold(lr, momentum)
    assert bound == pytest.approx((2 + 2 * momentum) / lr)
    assert _sgd_on_quadratic(0.95 * bound, lr, momentum, steps=400) < 1e-3  # converges
    assert not _sgd_on_quadratic(1.05 * bound, lr, momentum, steps=400) < 1e3  # diverges (inf/nan)


@pytest.mark.parametrize("lr,momentum", [(0.0, 0.0), (0.1, 1.0), (0.1, -0.1), (0.1, "0.9")])
def test_stability_threshold_refuses(lr, momentum):
    with pytest.raises(ValueError):
        stability_threshold(lr, momentum)


# --- flatness summary against dense oracles ------------------------------------------------------

@pytest.fixture
def tiny_split():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    Xtr, ytr = torch.randn(40, 4), torch.randint(0, 3, (40,))
    Xte, yte = torch.randn(12, 4), torch.randint(0, 3, (12,))
    return net, (Xtr, ytr), (Xte, yte)


def test_flatness_summary_matches_oracles(tiny_split):
    net, train, test = tiny_split
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = flatness_summary(net, train, test, eps=(1e-3,), subspace_dims=(None, 5),
                           lanczos_tol=1e-10)
    # the model is untouched and its mode restored
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    loss_fn = nn.CrossEntropyLoss()
    # λ_max against the dense float64 Hessian
    H = oracle_hessian(net, loss_fn, train)
    assert out["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-4)
    assert out["lambda_max_converged"] == 1.0
    # the input-Hessian λ_max against per-sample dense Hessians in float64
    net64 = copy.deepcopy(net).double()
    lams = []
    for x, t in zip(*test):
        h = torch.autograd.functional.hessian(
            lambda z: loss_fn(net64(z.unsqueeze(0)), t.unsqueeze(0)), x.double())
        lams.append(float(torch.linalg.eigvalsh(h)[-1]))
    assert out["input_lambda_max"] == pytest.approx(np.mean(lams), rel=1e-5)
    # accuracies and the sharpness entries are those of the direct calls
    with torch.no_grad():
        net.eval()
        correct = (net(test[0]).argmax(1) == test[1]).float().mean()
        assert out["test_acc"] == pytest.approx(float(correct))
        net.train()
    for p in (None, 5):
        assert out[sharpness_key(1e-3, p)] == pytest.approx(
            keskar_sharpness(net, loss_fn, train, eps=1e-3, subspace_dim=p, seed=0))
    assert set(out) == {"train_loss", "train_acc", "test_loss", "test_acc", "lambda_max",
                        "lambda_max_converged", "input_lambda_max", "keskar_full_0.001",
                        "keskar_p5_0.001"}


def test_flatness_summary_refuses(tiny_split):
    net, train, test = tiny_split
    with pytest.raises(ValueError, match="eps"):
        flatness_summary(net, train, test, eps=(0.0,))
    with pytest.raises(ValueError, match="subspace_dims"):
        flatness_summary(net, train, test, subspace_dims=(0,))
    with pytest.raises(ValueError, match="lanczos_tol"):
        flatness_summary(net, train, test, lanczos_tol=-1.0)
    with pytest.raises(ValueError, match="Dropout"):
        flatness_summary(nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)), train, test)


# --- running a sweep ---------------------------------------------------------------------------

SMALL = TrainConfig(model={"name": "mlp", "input_dim": 40, "widths": [6], "num_classes": 10},
                    data={"name": "mnist1d", "n_train": 200, "n_test": 60}, lr=0.05,
                    batch_size=50, epochs=2, seed=0)
FAST = {"eps": (1e-3,), "subspace_dims": (None,)}


def test_run_sweep_records_are_the_direct_measurements(cache, monkeypatch):
    configs = {("a", 50, 0): SMALL, ("b", 50, 0): SMALL, ("a", 100, 1): SMALL.replace(batch_size=100, seed=1)}
    calls = []
    real = sweeps.flatness_summary
    monkeypatch.setattr(sweeps, "flatness_summary", lambda *a, **k: calls.append(1) or real(*a, **k))
    records = run_sweep(configs, fields=("group", "batch_size", "seed"), seed=3, progress=False, **FAST)
    assert len(calls) == 2  # equal configurations are measured once
    assert [r["group"] for r in records] == ["a", "b", "a"]
    split = from_spec(SMALL.data)
    for (group, B, s), cfg in configs.items():
        r = records[list(configs).index((group, B, s))]
        model, history = load_or_train(cfg, progress=False)
        expected = real(model, split.train, split.test, seed=3, **FAST)
        assert {k: r[k] for k in expected} == expected
        assert (r["batch_size"], r["seed"], r["lr"]) == (cfg.batch_size, cfg.seed, cfg.lr)
        assert (r["epochs"], r["steps"], r["reached"]) == (
            history["epochs"], history["total_steps"], history["reached_target"])
        assert r["history"] == history
        assert r["eta_lambda"] == cfg.lr * expected["lambda_max"]


def test_run_sweep_trains_populations_on_the_trajectory_of_train(cache, monkeypatch, tmp_path):
    # three seeds at batch 50 train as one population, batch 100 as another; the tracked run falls
    # back to load_or_train. Records equal those of runs trained one by one, to float32 rounding.
    configs = {(50, s): SMALL.replace(seed=s) for s in (0, 1, 2)}
    configs[100, 0] = SMALL.replace(batch_size=100)
    configs[25, 0] = SMALL.replace(batch_size=25, track_sharpness_every=2)
    populations = []
    real_population = cache_module.train_population
    monkeypatch.setattr(cache_module, "train_population",
                        lambda models, *a, **k: populations.append(len(models)) or
                        real_population(models, *a, **k))
    records = run_sweep(configs, fields=("batch_size", "seed"), seed=3, progress=False, **FAST)
    assert sorted(populations) == [1, 3]  # the tracked run is not batched
    split = from_spec(SMALL.data)
    for r, cfg in zip(records, configs.values()):
        model, history = load_or_train(cfg, directory=tmp_path / "one-by-one", progress=False)
        cached, _ = load_or_train(cfg, progress=False)  # what run_sweep trained and cached
        deviation = max(float((p - q).detach().abs().max())
                        for p, q in zip(model.parameters(), cached.parameters()))
        assert deviation <= 1e-4  # float32 rounding over 2 epochs of SGD
        for key in ("epoch", "steps", "lr", "batch_size", "epochs", "total_steps", "reached_target"):
            assert r["history"][key] == history[key], key
        np.testing.assert_allclose(r["history"]["train_loss"], history["train_loss"], rtol=1e-5, atol=1e-6)
        if cfg.track_sharpness_every:
            assert r["history"]["lambda_max"] == history["lambda_max"]
        expected = sweeps.flatness_summary(model, split.train, split.test, seed=3, **FAST)
        for k, v in expected.items():
            if k.endswith("_acc"):  # a rounding flip moves one sample at most
                assert abs(r[k] - v) <= 1 / len(split.y_test) + 1e-12, k
            else:
                assert r[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
        assert (r["epochs"], r["steps"], r["reached"]) == (
            history["epochs"], history["total_steps"], history["reached_target"])


def test_run_sweep_refuses(cache):
    with pytest.raises(TypeError, match="configs"):
        run_sweep({"x": {"lr": 0.1}}, fields=["k"])
    with pytest.raises(ValueError, match="fields"):
        run_sweep({("a", 1): SMALL}, fields=["k"])


# --- records and their tables ------------------------------------------------------------------

RUNS = [dict(setting="S", batch_size=64, seed=0, lr=0.2, epochs=40, steps=2500, reached=True,
             train_acc=0.99, test_acc=0.80, lambda_max=4.0, input_lambda_max=12.0, eta_lambda=0.8,
             **{"keskar_full_0.001": 5.0}),
        dict(setting="S", batch_size=64, seed=1, lr=0.2, epochs=50, steps=3100, reached=False,
             train_acc=0.98, test_acc=0.84, lambda_max=5.0, input_lambda_max=11.0, eta_lambda=1.0,
             **{"keskar_full_0.001": 6.0}),
        dict(setting="S", batch_size=400, seed=0, lr=0.5, epochs=100, steps=1000, reached=True,
             train_acc=0.985, test_acc=0.75, lambda_max=4.1, input_lambda_max=10.0, eta_lambda=2.05,
             **{"keskar_full_0.001": 7.0})]


def test_select_and_group_records():
    assert select(RUNS, batch_size=64, seed=1) == [RUNS[1]]
    assert select(RUNS, batch_size=16) == []
    with pytest.raises(ValueError, match="bacth_size"):
        select(RUNS, bacth_size=64)
    groups = group_records(RUNS, ["batch_size"])
    assert list(groups) == [(64,), (400,)] and groups[64,] == RUNS[:2]
    with pytest.raises(ValueError, match="by"):
        group_records(RUNS, [])
    with pytest.raises(ValueError, match="rule"):
        group_records(RUNS, ["rule"])


def test_cells_format_exactly():
    std = np.std([80.0, 84.0], ddof=1)
    assert mean_std_cell("test_acc", 100, 1)(RUNS[:2]) == f"82.0 ± {std:.1f}"
    assert mean_std_cell("lambda_max")(RUNS[2:]) == "4.10"
    assert value_cell("lr", "{:.3g}")(RUNS[2:]) == "0.5"
    assert fraction_cell("reached")(RUNS) == "2/3"
    assert join_cells("{} ({})", "B", "λ_max")(RUNS[:2]) == "64 (4.50 ± 0.71)"
    assert correlation_cell("batch_size", "test_acc")(RUNS) == "-0.87 (n = 3)"


def test_records_table_text():
    table = records_table(RUNS, ["setting", "B", "η", "2/η", "epochs", "target reached",
                                 ("acc", "test acc, %"), ("k", lambda rows: len(rows))],
                          by=("setting", "batch_size"))
    e_std, a_std = np.std([40, 50], ddof=1), np.std([80.0, 84.0], ddof=1)
    assert str(table) == (
        "| setting | B | η | 2/η | epochs | target reached | acc | k |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| S | 64 | 0.2 | 10.00 | 45 ± {e_std:.0f} | 1/2 | 82.0 ± {a_std:.1f} | 2 |\n"
        "| S | 400 | 0.5 | 4.00 | 100 | 1/1 | 75.0 | 1 |")
    # a mapping gives the same table; every standard column is a function of the records
    same = records_table(RUNS, {"setting": "setting", "B": "batch_size"}, by=("setting", "batch_size"))
    assert str(same).splitlines()[2] == "| S | 64 |"
    assert set(COLUMNS) >= {"B", "η", "λ_max", "Keskar ε=1e-3", "test acc, %", "η·λ_max"}


def test_records_table_refuses():
    with pytest.raises(ValueError, match="records"):
        records_table([], ["B"])
    with pytest.raises(ValueError, match="columns"):
        records_table(RUNS, [])
    with pytest.raises(ValueError, match="neither a standard column"):
        records_table(RUNS, ["no such column"])
    with pytest.raises(TypeError, match="columns"):
        records_table(RUNS, [("h", 3)])
    with pytest.raises(TypeError, match="columns"):
        records_table(RUNS, "B")


def test_comparison_and_gap_tables():
    rs = [dict(r, rule="sqrt") for r in RUNS]
    comps = compare_by_group(rs, ["test_acc", "lambda_max"], small=[64], large=[400], by=["rule"])
    c = comps["sqrt", 400]
    table = comparison_table(comps, {"lambda_max": "λ_max"}, label=lambda rule: rule.upper())
    spread = 100 * c["test_acc"].seed_spread
    assert str(table).splitlines() == [
        "| setting | LB | test acc SB / LB, % | gap (seed spread), pp | λ_max: SB / LB (ratio) |",
        "|---|---|---|---|---|",
        f"| SQRT | 400 | 82.0 / 75.0 | +7.0 ({spread:.1f}) | 4.5 / 4.1 ({4.1 / 4.5:.2f}×) |"]
    sampling = math.sqrt((0.82 * 0.18 + 0.75 * 0.25) / 1000)
    noise = max(sampling, c["test_acc"].seed_spread)
    gaps = str(gap_table(comps, 1000)).splitlines()
    assert gaps[2] == (f"| sqrt | 400 | +7.0 | {spread:.1f} | {100 * sampling:.1f} | "
                       f"{'yes' if 0.07 > noise else 'no'} |")
    single = compare_by_group([r for r in rs if r["seed"] == 0], ["test_acc"], [64], [400], ["rule"])
    assert "| n/a |" in str(gap_table(single, 1000))




def test_flatness_summary_first_order_entries_and_no_input_hessian(tiny_split):
    from flatness.sharpness import keskar_first_order

    net, train, test = tiny_split
    loss_fn = nn.CrossEntropyLoss()
    plain = flatness_summary(net, train, test, eps=(1e-3,), subspace_dims=(None, 5))
    out = flatness_summary(net, train, test, eps=(1e-3,), subspace_dims=(None, 5), first_order=True,
                           input_hessian=False)
    assert "input_lambda_max" not in out
    for key in ("lambda_max", "keskar_full_0.001", "keskar_p5_0.001", "test_acc"):
        assert out[key] == plain[key]  # the old entries keep their numbers
    for p in (None, 5):
        lin = keskar_first_order(net, loss_fn, train, eps=1e-3, subspace_dim=p, seed=0)
        assert out[sharpness_key(1e-3, p) + "_first"] == lin["first_order"]
    assert out["gradient_norm"] == pytest.approx(lin["gradient_norm"])


def test_run_sweep_on_a_shared_test_set_with_tracking(cache):
    from flatness.large_batch import late_median

    X, y = from_spec({"name": "mnist1d", "n_train": 200, "n_test": 80}).test
    cfg = SMALL.replace(epochs=4, track_sharpness_every=1)
    (rec,) = run_sweep({"a": cfg}, fields=("k",), progress=False, test_data=(X, y), **FAST)
    assert rec["test_correct"].shape == (80,) and rec["test_correct"].dtype == bool
    assert rec["test_acc"] == pytest.approx(rec["test_correct"].mean())
    assert rec["lambda_late"] == late_median(rec["history"], 0.2)
    assert rec["eta_lambda_late"] == cfg.lr * rec["lambda_late"]
    (plain,) = run_sweep({"a": SMALL}, fields=("k",), progress=False, **FAST)
    assert "test_correct" not in plain and "lambda_late" not in plain
