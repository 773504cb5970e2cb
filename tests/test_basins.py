"""Tests of flatness.basins (Wu, Zhu & E 2017) against dense float64 oracles."""

import copy
import math

import pytest
import torch
from torch import nn

from flatness import basins, data
from flatness.models import mlp
from tests.oracles import assert_unperturbed, oracle_hessian, snapshot


def _toy(n=24, d=5, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, K, (n,), generator=g)


# --- attack labels -----------------------------------------------------------------------

def test_attack_labels_are_never_right_and_reproducible():
    y = torch.randint(0, 10, (5000,), generator=torch.Generator().manual_seed(1))
    X = torch.zeros(5000, 2)
    Xa, ya = basins.attack_set((X, y), 10, seed=3)
    assert Xa is X and bool((ya != y).all())
    assert torch.equal(ya, basins.attack_set((X, y), 10, seed=3)[1])
    assert not torch.equal(ya, basins.attack_set((X, y), 10, seed=4)[1])


def test_attack_labels_are_uniform_among_the_wrong_classes():
    # the shift r = (y' - y) mod C is uniform on 1..C-1: each count ~ Binomial(N, 1/(C-1))
    N, C = 9000, 10
    y = torch.randint(0, C, (N,), generator=torch.Generator().manual_seed(2))
    _, ya = basins.attack_set((torch.zeros(N, 1), y), C, seed=0)
    counts = torch.bincount((ya - y) % C, minlength=C)
    assert counts[0] == 0
    p = 1 / (C - 1)
    sd = math.sqrt(N * p * (1 - p))
    assert all(abs(int(c) - N * p) < 5 * sd for c in counts[1:])


@pytest.mark.parametrize("labels, C, err", [(torch.tensor([0, 1]), 1, ValueError),
                                            (torch.tensor([0, 3]), 3, ValueError),
                                            (torch.tensor([0.0, 1.0]), 3, TypeError)])
def test_attack_bad_input(labels, C, err):
    with pytest.raises(err, match="num_classes|y:|labels"):
        basins.attack_set((torch.zeros(2, 1), labels), C)


def test_attack_and_first_specs_split_the_training_part():
    base = {"name": "digits", "images": True}
    full = data.from_spec(base)
    S = data.from_spec({"name": "first", "base": base, "n": 512})
    T = data.from_spec({"name": "attack", "base": base, "n_s": 512, "size": 300, "seed": 5})
    assert S.X_train.shape == (512, 1, 8, 8) and torch.equal(S.X_train, full.X_train[:512])
    assert torch.equal(S.X_test, full.X_test) and torch.equal(T.X_test, full.X_test)
    rest = full.X_train[512:].reshape(len(full.X_train) - 512, -1)
    flat_T = T.X_train.reshape(300, -1)
    # every attack item is one of the items after the first 512, with a wrong label
    match = (flat_T[:, None, :] == rest[None]).all(-1)
    assert bool(match.any(1).all())
    where = match.float().argmax(1)
    assert bool((T.y_train != full.y_train[512:][where]).all())
    first = full.X_train[:512].reshape(512, -1)
    assert not bool((flat_T[:, None, :] == first[None]).all(-1).any())
    again = data.from_spec({"name": "attack", "base": base, "n_s": 512, "size": 300, "seed": 5})
    assert torch.equal(again.X_train, T.X_train) and torch.equal(again.y_train, T.y_train)


@pytest.mark.parametrize("spec, match", [
    ({"name": "attack", "base": {"name": "digits"}, "n_s": 512, "size": 5000}, "size"),
    ({"name": "attack", "base": {"name": "digits"}, "n_s": -1, "size": 5}, "n_s"),
    ({"name": "first", "base": {"name": "digits"}, "n": 0}, "n:"),
    ({"name": "first", "n": 3}, "base")])
def test_attack_spec_bad_input(spec, match):
    with pytest.raises(ValueError, match=match):
        data.from_spec(spec)


def test_digits_images_are_the_flat_digits():
    a, b = data.digits(), data.digits(images=True)
    assert b.X_train.shape[1:] == (1, 8, 8)
    assert torch.equal(b.X_train.reshape(len(b.X_train), -1), a.X_train)
    assert torch.equal(b.y_test, a.y_test)


# --- log volume ----------------------------------------------------------------------------

def test_log_volume_on_known_spectra():
    lam = torch.tensor([0.5, -3.0, 8.0, 0.0, 2.0, 1e-3], dtype=torch.float64)
    assert basins.log_volume(lam, 1) == pytest.approx(-math.log(8.0), abs=1e-15)
    assert basins.log_volume(lam, 3) == pytest.approx(-math.log(8.0 * 2.0 * 0.5), abs=1e-14)
    assert basins.log_volume(lam.numpy(), 4) == pytest.approx(-math.log(8e-3), abs=1e-13)


@pytest.mark.parametrize("lam, k", [([1.0, -2.0, 0.0], 2), ([1.0, 2.0], 3), ([1.0], 0),
                                    ([1.0], 1.5), ([1.0, float("nan")], 1)])
def test_log_volume_bad_input(lam, k):
    with pytest.raises(ValueError, match="k|eigenvalues"):
        basins.log_volume(lam, k)


# --- finite-difference Frobenius norm -----------------------------------------------------

def _directions(P, M, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(P, generator=g, dtype=torch.float64) for _ in range(M)])


def test_fd_is_exact_for_a_quadratic_loss():
    # a linear model with the squared error has a constant Hessian: the difference quotient
    # is H v exactly, so the estimate is (1/M) Σ ||H v_j||² with the same directions
    X, y = _toy()
    Y = nn.functional.one_hot(y, 3).double()
    net = nn.Linear(5, 3).double()
    loss = basins.squared_error()
    H = oracle_hessian(net, loss, (X.double(), Y))
    V = _directions(H.shape[0], 7, seed=11)
    want = float(((V @ H) ** 2).sum(1).mean())
    for delta in (1e-3, 1.0, 30.0):
        got = basins.frobenius_fd(net, loss, (X.double(), Y), 7, delta, seed=11)
        assert got ** 2 == pytest.approx(want, rel=1e-9)


def test_fd_matches_the_dense_norm_within_its_statistical_error():
    X, y = _toy(n=40)
    net = mlp(5, (6,), 3).double()
    loss = nn.CrossEntropyLoss()
    snap = snapshot(net)
    H = oracle_hessian(net, loss, (X.double(), y))
    exact = float((H ** 2).sum())
    M = 400
    est, samples = basins.frobenius_fd(net, loss, (X.double(), y), M, 1e-5, seed=0,
                                       return_samples=True)
    assert samples.shape == (M,)
    sd = basins.fd_relative_sd(H) * exact / math.sqrt(M)  # exact variance 2 tr H⁴ / M
    assert abs(est ** 2 - exact) < 4 * sd
    assert_unperturbed(net, snap)


def test_fd_relative_sd_is_the_exact_gaussian_variance():
    H = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
    # ||Hv||² = Σ λ_i² v_i²: Var = Σ λ_i⁴ · 2
    assert basins.fd_relative_sd(H) == pytest.approx(math.sqrt(2 * (81 + 1 + 0.0625)) / 10.25)


def test_fd_study_rows_agree_with_frobenius_fd():
    X, y = _toy(n=30)
    net = mlp(5, (4,), 3).double()
    loss = nn.CrossEntropyLoss()
    exact = float((oracle_hessian(net, loss, (X.double(), y)) ** 2).sum())
    rows = basins.fd_study(net, loss, (X.double(), y), [1e-4, 1e-2], 20, exact, seed=3)
    for r in rows:
        assert r["estimate"] == pytest.approx(
            basins.frobenius_fd(net, loss, (X.double(), y), 20, r["delta"], seed=3) ** 2, rel=1e-12)
        assert r["relative_bias"] == pytest.approx(r["estimate"] / exact - 1, abs=1e-12)


@pytest.mark.parametrize("M, delta", [(0, 1e-3), (-1, 1e-3), (3, 0.0), (3, -1.0),
                                      (3, float("nan")), (2.5, 1e-3)])
def test_fd_bad_input(M, delta):
    X, y = _toy()
    with pytest.raises(ValueError, match="num_vectors|delta"):
        basins.frobenius_fd(mlp(5, (4,), 3), nn.CrossEntropyLoss(), (X, y), M, delta)


# --- the 2-layer analysis ------------------------------------------------------------------

def test_two_layer_decomposition_against_autograd():
    X, y = _toy(n=20, d=4, K=3)
    net = mlp(4, (5,), 3)
    snap = snapshot(net)
    parts = basins.two_layer_decomposition(net, (X, y))
    Y = nn.functional.one_hot(y, 3).double()
    H = oracle_hessian(net, basins.squared_error(), (X.double(), Y))
    assert torch.allclose(parts["hessian"], H, atol=1e-12, rtol=1e-10)
    # R, independently: the Hessian of (1/n) Σ_i Σ_c r_ic f_c(x_i) with the residuals frozen
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        r = net64(X.double()) - Y
    R = oracle_hessian(net64, lambda out, _: (r * out).sum() / len(X), (X.double(), Y))
    assert torch.allclose(parts["residual"], R, atol=1e-12)
    F = parts["fisher"]
    assert torch.linalg.eigvalsh(F).min() > -1e-12 * torch.linalg.eigvalsh(F).max()
    assert abs(float(torch.trace(parts["residual"]))) < 1e-12  # ReLU: tr R = 0
    assert_unperturbed(net, snap)


def test_complexity_bound_chain():
    X, y = _toy(n=30, d=4, K=3, seed=4)
    net = mlp(4, (6,), 3)
    b = basins.complexity_bound(net, (X, y))
    # the complexity by autograd on the inputs
    Xd = X.double().requires_grad_(True)
    net64 = copy.deepcopy(net).double()
    J = torch.autograd.functional.jacobian(lambda x: net64(x).sum(0), Xd)  # (K, n, d)
    assert b["complexity"] == pytest.approx(float((J ** 2).sum()) / len(X), rel=1e-12)
    assert b["complexity"] <= b["bound_bias"] <= b["bound_fisher"] <= b["bound_hessian"]
    assert b["hessian_trace"] == pytest.approx(b["fisher_trace"], rel=1e-10)
    assert b["weight_norm_sq"] == pytest.approx(float((net[0].weight.detach().double() ** 2).sum()))


def test_complexity_bound_is_tight_for_one_hidden_unit():
    # one unit, one output: ||∇_x f||² = g² ||w||² = ||W||_F² (∂f/∂b)² for every x
    X, y = _toy(n=30, d=4, K=2, seed=5)
    net = mlp(4, (1,), 1)
    b = basins.complexity_bound(net, (X, y.float()), hessian=None)
    assert b["complexity"] == pytest.approx(b["bound_bias"], rel=1e-12)


def test_complexity_bound_refuses_other_models():
    X, y = _toy()
    with pytest.raises(ValueError, match="2-layer"):
        basins.complexity_bound(mlp(5, (4, 4), 3), (X, y))
    with pytest.raises(ValueError, match="bias"):
        basins.complexity_bound(mlp(5, (4,), 3, bias=False), (X, y))


# --- helpers ----------------------------------------------------------------------------

def test_perturb_moves_a_relative_distance_and_leaves_the_model():
    net = mlp(5, (4,), 3)
    snap = snapshot(net)
    new = basins.perturb(net, 0.3, seed=2)
    d = torch.cat([(a - b).reshape(-1) for a, b in zip(new.parameters(), net.parameters())])
    assert float(d.double().norm()) == pytest.approx(0.3 * basins.weight_norm(net), rel=1e-5)
    assert_unperturbed(net, snap)
    with pytest.raises(ValueError, match="radius"):
        basins.perturb(net, -1.0)


def test_spectrum_counts_and_is_bad():
    c = basins.spectrum_counts(torch.tensor([-1.0, 0.0, 1e-8, 2.0]), 1e-6)
    assert c == {"negative": 1, "near_zero": 2, "positive": 1, "total": 4}
    assert basins.is_bad(0.40, 0.85, 10) and not basins.is_bad(0.60, 0.85, 10)
    with pytest.raises(ValueError, match="tol"):
        basins.spectrum_counts([1.0], -1.0)


def test_measure_minimum_fields_are_consistent():
    X, y = _toy(n=40, d=5, K=3, seed=6)
    net = mlp(5, (6,), 3)
    snap = snapshot(net)
    m = basins.measure_minimum(net, (X, y), (X[:10], y[:10]), k=3, num_vectors=8, delta=1e-3)
    H = oracle_hessian(net, nn.CrossEntropyLoss(), (X.double(), y))
    lam = torch.linalg.eigvalsh(H).flip(0)
    assert m["top"] == pytest.approx(lam[:3].tolist(), rel=1e-4, abs=1e-8)
    assert m["lambda_max"] == m["top"][0]
    pos = [v for v in m["top"] if v > 0]
    want = sum(math.log(v) for v in pos) if len(pos) == 3 else float("nan")
    assert (math.isnan(want) and math.isnan(m["log_inv_volume"])) or m["log_inv_volume"] == pytest.approx(want)
    assert m["weight_norm"] == pytest.approx(basins.weight_norm(net))
    assert_unperturbed(net, snap)


def test_rank_correlation_interval():
    from scipy.stats import spearmanr
    x = [0.1, 0.5, 0.2, 0.9, 0.7, 0.3, float("nan")]
    y = [3.0, 1.0, 2.5, 0.2, 0.4, 2.0, 5.0]
    m = basins.rank_correlation_interval(x, y, "ρ")
    assert m.estimate == pytest.approx(spearmanr(x[:6], y[:6]).statistic)
    assert m.low <= m.estimate <= m.high and m.n == 6
    with pytest.raises(ValueError, match="three"):
        basins.rank_correlation_interval([1.0, 2.0], [1.0, 2.0], "ρ")


def test_complexity_bound_estimate_and_chunks_agree_with_dense():
    X, y = _toy(n=30, d=4, K=3, seed=7)
    net = mlp(4, (5,), 3)
    dense = basins.complexity_bound(net, (X, y), chunk=7)
    est = basins.complexity_bound(net, (X, y), hessian="estimate", num_vectors=10_000)
    for key in ("complexity", "fisher_trace", "bound_fisher"):
        assert est[key] == pytest.approx(dense[key], rel=1e-12)
    # num_vectors ≥ P: the estimator is exact
    assert est["hessian_frobenius"] == pytest.approx(dense["hessian_frobenius"], rel=1e-10)
    with pytest.raises(ValueError, match="hessian"):
        basins.complexity_bound(net, (X, y), hessian="exact")


def test_restarts_rows_and_model_left_alone():
    X, y = _toy(n=40, d=5, K=3, seed=8)
    net = mlp(5, (8,), 3)
    snap = snapshot(net)
    rows = basins.restarts(net, (X, y), (X, y), [0.0, 0.5], [0, 1], epochs=2, lr=0.05)
    assert [(r["radius"], r["seed"]) for r in rows] == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
    assert all(r["epochs"] == 2 for r in rows)
    assert_unperturbed(net, snap)


def test_relu_flips_counts_sign_changes_of_the_pre_activations():
    X, y = _toy(n=50, d=4, K=3, seed=9)
    net = mlp(4, (6,), 3)
    snap = snapshot(net)
    deltas = [1e-6, 0.3]
    got = basins.relu_flips(net, (X, y), deltas, 3, seed=4)
    # by hand: the same directions, the hidden pre-activations X W'ᵀ + b'
    P = sum(p.numel() for p in net.parameters())
    V = _directions(P, 3, seed=4).float()
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    pre = lambda t: X @ t[:24].reshape(6, 4).T + t[24:30]  # noqa: E731
    want = [sum(int(((pre(theta) > 0) != (pre(theta + d * v) > 0)).sum()) for v in V) / 3 for d in deltas]
    assert got == want and got[1] > 0
    assert basins.relu_flips(torch.nn.Linear(4, 3), (X, y), [1.0], 2) == [0.0]
    assert_unperturbed(net, snap)


def test_population_runs_design():
    runs = basins.population_runs([0, 1, 2], [(50, 0.3), (835, 1.0)], adam_attack=True)
    groups = [g for _, g in runs.values()]
    assert groups.count("init") == 12 and groups.count("gd") == 3 and groups.count("adam") == 3
    assert groups.count("attack") == 2 * 2 + 1
    c, _ = runs["|T| = 835, γ = 1.0, seed 1"]
    assert c.attack == {"name": "attack", "base": {"name": "digits"}, "n_s": 512, "size": 835, "seed": 1}
    assert c.attack_weight == 1.0 and c.data == {"name": "first", "base": {"name": "digits"}, "n": 512}
    assert runs["full-batch GD, seed 0"][0].batch_size is None
    assert runs["N(0, 0.01²), seed 2"][0].model["init_std"] == 0.01
    with pytest.raises(ValueError, match="init"):
        basins.two_layer_config(init="orthogonal")
