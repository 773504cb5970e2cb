"""Kendall τ, its bootstrap, Jiang et al.'s granulated Ψ, the population grid."""

import itertools

import numpy as np
import pytest
from scipy.stats import kendalltau

from flatness import ranking as R
from flatness.measures import MEASURES
from flatness.training import TrainConfig


def test_kendall_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for n in (2, 5, 17, 40):
        x = rng.integers(0, 5, n).astype(float)
        y = x + rng.integers(0, 3, n)
        if np.ptp(x) and np.ptp(y):
            assert R.kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)
    assert R.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert np.isnan(R.kendall_tau([1, 1, 1], [1, 2, 3]))


def test_kendall_ci_resamples_networks():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    ci = R.kendall_ci(x, 2 * x + 1)            # a monotone map: every resample has τ = 1
    assert ci.estimate == 1.0 and ci.ci == (1.0, 1.0) and ci.n == 30
    y = rng.normal(size=30)
    ci = R.kendall_ci(x, y, n_resamples=500)
    assert ci.low <= ci.estimate <= ci.high
    assert ci.estimate == pytest.approx(kendalltau(x, y).statistic)


def test_kendall_difference():
    x = np.arange(10.0)
    d = R.kendall_difference_ci(x, x ** 3, -x, n_resamples=200)   # |1| - |-1| = 0 always
    assert d.estimate == 0.0 and d.ci == (0.0, 0.0)
    rng = np.random.default_rng(2)
    z = rng.permutation(10).astype(float)
    d = R.kendall_difference_ci(x, x, z, n_resamples=200)
    assert d.estimate == pytest.approx(1 - abs(kendalltau(x, z).statistic))


def test_granulated_by_hand():
    # 2 x 2 grid, 2 seeds: the measure follows lr exactly, the gap follows lr for seed 0 only
    hps, values, gap = [], [], []
    for lr, bs, seed in itertools.product([0.1, 0.2], [32, 64], [0, 1]):
        hps.append({"lr": lr, "batch_size": bs, "seed": seed})
        values.append(lr * 10 + bs / 1000)
        gap.append(lr if seed == 0 else -lr + bs / 1e4)
    g = R.granulated_tau(values, gap, hps, n_resamples=200)
    # lr-groups (bs, seed): seed 0 → τ = 1, seed 1 → τ = -1; bs-groups (lr, seed): measure and
    # gap both increase with bs for seed 1, gap constant for seed 0 (skipped)
    assert g.groups == {"batch_size": 2, "lr": 4}
    assert g.psi["lr"].estimate == 0.0
    assert g.psi["batch_size"].estimate == 1.0
    assert g.Psi.estimate == 0.5
    with pytest.raises(ValueError, match="names"):
        R.granulated_tau(values, gap, hps, names=["width"])


def test_bad_input():
    with pytest.raises(ValueError, match="same length"):
        R.kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        R.kendall_tau([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="constant"):
        R.kendall_ci([1, 1, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="same keys"):
        R.granulated_tau([1, 2], [1, 2], [{"lr": 1}, {"bs": 2}])


def test_population_grid():
    base = TrainConfig(model={"name": "mlp", "widths": [8, 8]}, data={"name": "mnist1d"})
    configs, hps = R.population_grid(base, {"lr": [0.1, 0.2], "width": [4, 16]}, seeds=(0, 1))
    assert len(configs) == 8 == len({c.key() for c in configs})
    assert configs[0].model["widths"] == [4, 4] and configs[-1].model["widths"] == [16, 16]
    assert hps[-1] == {"seed": 1, "lr": 0.2, "width": 16} and configs[-1].seed == 1
    with pytest.raises(ValueError, match="grid"):
        R.population_grid(base, {"colour": [1]})


def test_measure_population():
    import torch
    from flatness.models import mlp

    X, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    nets = [mlp(3, (4,), 2) for _ in range(2)]
    out = R.measure_population(nets, torch.nn.CrossEntropyLoss(), (X, y),
                               {"trace": MEASURES["trace"]}, progress=False)
    assert out["trace"].shape == (2,)
    assert out["trace"][1] == MEASURES["trace"](nets[1], torch.nn.CrossEntropyLoss(), (X, y))


def test_rank_measures_and_rows():
    hps = [{"lr": lr, "seed": s} for lr in (0.1, 0.2) for s in range(4)]
    gap = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    values = {"up": gap * 2, "down": -gap}
    r = R.rank_measures(values, gap, hps, n_resamples=100)
    assert r["up"].tau.estimate == 1.0 and r["down"].tau.estimate == -1.0
    assert r["up"].granulated.psi["lr"].estimate == 1.0
    header, rows = R.ranking_rows(r, {"up": "Up"}, extra={"up": ["x"], "down": ["y"]})
    assert header == ["measure", "τ (all)", "ψ lr", "Ψ"]
    assert rows[0][0] == "Up" and rows[0][1].startswith("+1.00") and rows[1][-1] == "y"


def test_residual_mlp_has_a_skip_connection():
    import torch

    net = R.ResidualMLP(3, 4, 2)
    x = torch.randn(5, 3)
    h = torch.relu(net.fc1(x))
    with torch.no_grad():
        net.fc2.weight.zero_()
        net.fc2.bias.fill_(-1.0)          # relu(W2 h + b2) = 0: only the skip path is left
    assert torch.allclose(net(x), net.out(h))


def test_train_module_uses_the_config():
    import torch

    cfg = TrainConfig(model={"name": "mlp"}, data={"name": "mnist1d", "n_train": 64, "n_test": 32},
                      epochs=2, batch_size=32)
    torch.manual_seed(0)
    net = R.ResidualMLP(40, 8, 10)
    hist = R.train_module(net, cfg)
    assert hist["epochs"] == 2 and not net.training
    with pytest.raises(ValueError, match="config"):
        R.train_module(net, cfg.replace(track_sharpness_every=1))
