"""Tests of flatness.sweeps and flatness.stats: sweeps, warm starts, the stability bound, summaries, statistics."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from oracles import oracle_hessian
from torch import nn

from flatness.sharpness import keskar_sharpness
from flatness.stability import stability_threshold
from flatness.stats import by_batch, compare_groups
from flatness.sweeps import batch_sweep, flatness_summary, scaled_lr, sharpness_key, warm_start
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


def test_batch_sweep_equal_learning_rate_budget():
    runs = batch_sweep(BASE, [16, 64, 4000], seeds=[0, 1, 2], rule="sqrt")
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


def test_batch_sweep_constant_rule_scales_epochs():
    runs = batch_sweep(BASE, [64, 128], seeds=[0], rule="constant")
    assert runs[(128, 0)].max_epochs == 2 * runs[(64, 0)].max_epochs
    assert runs[(128, 0)].lr == runs[(64, 0)].lr == 0.1


@pytest.mark.parametrize("sizes,seeds,match", [
    ([], [0], "batch_sizes"), ([64, 64], [0], "batch_sizes"), ([64], [0, 0], "seeds"),
    ([0], [0], "batch_sizes"), ([64], [-1], "seeds")])
def test_batch_sweep_refuses(sizes, seeds, match):
    with pytest.raises(ValueError, match=match):
        batch_sweep(BASE, sizes, seeds)
    with pytest.raises(TypeError, match="base"):
        batch_sweep({"lr": 0.1}, [64], [0])


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
