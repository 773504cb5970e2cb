"""The measure registry: every declared invariance holds, every declared non-invariance moves."""

import math

import numpy as np
import pytest
import torch

from flatness import measures as M
from flatness.models import mlp
from oracles import assert_unperturbed, oracle_hessian, snapshot

LOSS = torch.nn.CrossEntropyLoss()
SEEDS = (0, 1, 2)  # Monte-Carlo seeds of the measures (the noise of each value)


@pytest.fixture(scope="module")
def trained():
    """A 5-6-6-3 ReLU network (float64) trained by full-batch Adam close to a minimum."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 5, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = mlp(5, (6, 6), 3).double()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(600):
        opt.zero_grad()
        LOSS(net(X), y).backward()
        opt.step()
    net.zero_grad(set_to_none=True)
    return net.eval(), (X, y)


@pytest.mark.parametrize("symmetry", M.INVARIANCES)
def test_transforms_keep_the_function(trained, symmetry):
    net, (X, y) = trained
    base, moved = M.random_transform(net, symmetry, seed=3)
    ref = net(X)
    assert torch.allclose(base(X), ref, atol=1e-10, rtol=0)
    assert torch.allclose(moved(X), ref, atol=1e-9, rtol=0)
    diff = sum(float((p - q).abs().sum()) for p, q in zip(base.state_dict().values(), moved.state_dict().values()))
    assert diff > 1.0  # the parameters did move


def test_random_transform_factors_in_range(trained):
    net, _ = trained
    base, moved = M.random_transform(net, "neuron_scale", seed=0)
    ratio = moved[0].weight / base[0].weight
    row = ratio[:, 0]
    assert torch.allclose(ratio, row[:, None].expand_as(ratio))
    assert bool(((row >= 1 / 25 - 1e-12) & (row <= 25 + 1e-12)).all())


@pytest.mark.parametrize("name", list(M.MEASURES))
@pytest.mark.parametrize("symmetry", M.INVARIANCES)
def test_declared_invariances(trained, name, symmetry):
    """Invariant: the change under a random element of the symmetry (factors in [1/25, 25]) is
    within three times the Monte-Carlo spread of the measure over seeds (plus 1e-6 relative and 1e-12
    absolute for rounding and iteration tolerances). Not invariant: the change exceeds that bound."""
    net, data = trained
    measure = M.MEASURES[name]
    base, moved = M.random_transform(net, symmetry, seed=7)
    values = [measure(base, LOSS, data, seed=s) for s in SEEDS]
    after = measure(moved, LOSS, data, seed=SEEDS[0])
    assert all(math.isfinite(v) for v in values + [after])
    noise = 3 * (max(values) - min(values)) + 1e-6 * abs(values[0]) + 1e-12
    change = abs(after - values[0])
    if symmetry in measure.invariant_to:
        assert change <= noise, f"{name} declared invariant to {symmetry} moved by {change:.3g}"
    else:
        assert change > noise, f"{name} declared not invariant to {symmetry}: {change:.3g}"


@pytest.mark.parametrize("name", list(M.MEASURES))
def test_measure_leaves_model_unchanged(trained, name):
    net, data = trained
    snap = snapshot(net)
    M.MEASURES[name](net, LOSS, data, seed=0)
    assert_unperturbed(net, snap)


def test_registry_entries_are_documented():
    for name, m in M.MEASURES.items():
        assert m.name == name
        assert m.invariant_to <= set(M.INVARIANCES)
        assert m.label and m.description and m.reference
        assert set(m.invariance_flags()) == set(M.INVARIANCES)


def test_hessian_measures_count_products(trained):
    net, data = trained
    r = M.MEASURES["trace"].evaluate(net, LOSS, data, max_hvps=10)
    assert r.hvps == 10 and "10 of 30" in r.truncated
    r = M.MEASURES["lambda_max"].evaluate(net, LOSS, data)
    assert r.hvps > 0 and r.truncated == "" and r.seconds > 0
    assert M.MEASURES["keskar"].evaluate(net, LOSS, data).hvps == 0


def test_lambda_max_matches_dense_hessian(trained):
    net, data = trained
    H = oracle_hessian(net, LOSS, data)
    exact = float(torch.linalg.eigvalsh(H)[-1])
    assert M.MEASURES["lambda_max"](net, LOSS, data) == pytest.approx(exact, rel=1e-4)
    top = torch.linalg.eigvalsh(H).flip(0)[:10].numpy()
    assert M.MEASURES["log_volume"](net, LOSS, data) == pytest.approx(
        float(np.log(np.clip(top, 1e-12, None)).sum()), abs=1e-2)


def test_register_and_bad_input(trained):
    with pytest.raises(ValueError, match="invariant_to"):
        M.Measure("x", lambda *a, **k: 0.0, frozenset({"rotation"}), "x", "x", "x")
    with pytest.raises(ValueError, match="already registered"):
        M.register(M.MEASURES["trace"])
    with pytest.raises(TypeError, match="measure"):
        M.register("trace")
    net, data = trained
    with pytest.raises(ValueError, match="max_hvps"):
        M.MEASURES["trace"].evaluate(net, LOSS, data, max_hvps=0)
    with pytest.raises(ValueError, match="symmetry"):
        M.random_transform(net, "rotation")
    with pytest.raises(ValueError, match="factors"):
        M.neuron_scale(net, [[1.0] * 6])
    with pytest.raises(ValueError, match="factors"):
        M.neuron_scale(net, [[1.0] * 6, [-1.0] * 6])
    with pytest.raises(ValueError, match="weight-normalized"):
        M.radial_scale(net, [[1.0]])
    with pytest.raises(TypeError, match="model"):
        M.weight_normalize("net")


def test_with_options_changes_only_options():
    m = M.MEASURES["keskar"].with_options(eps=5e-4)
    assert m.options["eps"] == 5e-4 and m.invariant_to == M.MEASURES["keskar"].invariant_to
    assert "eps" not in M.MEASURES["keskar"].options


def test_invariance_check_reports_the_test_rule(trained):
    net, data = trained
    c = M.invariance_check(M.MEASURES["lambda_max"], net, LOSS, data, "neuron_scale",
                           transform_seed=7)
    assert not c.declared and c.moved and c.agrees and c.change > c.noise
    again = M.invariance_check(M.MEASURES["lambda_max"], net, LOSS, data, "neuron_scale",
                               transform_seed=7, base_values=c.before)
    assert again == c
    with pytest.raises(ValueError, match="seeds"):
        M.invariance_check(M.MEASURES["trace"], net, LOSS, data, "alpha_scale", seeds=())
