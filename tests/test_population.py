"""Population training and batched curvature against the single-model library and dense oracles.

Tolerances: every member runs the same float32 operations as ``train`` in a different order
(batched products, a sum of per-member means), so each step differs by a few units of float32
rounding (ε = 6e-8) relative to the weights; over the ≲ 100 steps of these runs on weights of
order 1 that accumulates to ~1e-6 even with some amplification, so max |Δθ| ≤ 1e-4 is a
generous bound that a real difference of trajectory (another batch, another update) exceeds by
orders of magnitude.
"""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from flatness import cache as cache_module
from flatness.curvature import top_eigenvalues
from flatness.models import cnn1d, mlp
from flatness.cache import load_or_train_many
from flatness.population import (
    population_groups,
    population_plan,
    train_population,
)
from flatness.population_curvature import PopulationHessian, population_top_eigenvalues
from flatness.training import TrainConfig, build_model, train

from oracles import oracle_hessian

THETA_TOL = 1e-4


def teacher_data(n=240, d=40, classes=10, seed=0, channels=False):
    """Inputs with labels from a random linear teacher, so training makes progress."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = (X @ torch.randn(d, classes, generator=g)).argmax(1)
    return (X.unsqueeze(1) if channels else X), y


def max_deviation(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def assert_same_history(h, ref, n):
    assert h.keys() == ref.keys()
    for key in ("epoch", "steps", "lr", "batch_size", "epochs", "total_steps", "reached_target"):
        assert h[key] == ref[key], key
    for key in ("train_loss", "test_loss"):
        if key in ref:
            np.testing.assert_allclose(h[key], ref[key], rtol=1e-5, atol=1e-6)
    for key in ("train_acc", "test_acc"):  # a rounding flip moves one sample at most
        if key in ref:
            assert np.max(np.abs(np.subtract(h[key], ref[key])), initial=0) <= 1 / n + 1e-12


MLP_OPTIONS = [
    dict(lr=0.05, momentum=0.9, epochs=3, seed=1, weight_decay=1e-3),
    dict(lr=0.1, epochs=3, seed=2),
    dict(lr=0.05, momentum=0.9, target_train_acc=0.25, max_epochs=6, seed=3,
         augment=dict(shift=1, scale=0.1, noise=0.02)),
    dict(lr=0.05, momentum=0.9, epochs=4, seed=4, milestones=[1, 2], lr_factor=0.5),
    dict(lr=0.05, epochs=0, seed=5),
    dict(lr=0.2, target_train_acc=0.9, max_epochs=2, seed=6),
]
MLP_OPTIONS = [dict(o, batch_size=16) for o in MLP_OPTIONS]


def test_mlp_members_follow_train():
    data, test = teacher_data(), teacher_data(80, seed=1)
    torch.manual_seed(0)
    models = [mlp(40, (16, 16), 10) for _ in MLP_OPTIONS]
    refs = [copy.deepcopy(m) for m in models]
    hists = train_population(models, data, test_data=test, options=MLP_OPTIONS)
    deviations = []
    for m, r, o, h in zip(models, refs, MLP_OPTIONS, hists):
        ref = train(r, data, test_data=test, **o)
        assert_same_history(h, ref, len(data[1]))
        deviations.append(max_deviation(m, r))
    # measured: max |Δθ| = 0 (bitwise equal) after 0-6 epochs; Adam ≈ 1.5e-8, CNN ≈ 6e-8
    assert max(deviations) <= THETA_TOL, deviations
    assert hists[2]["reached_target"] and 1 <= hists[2]["epochs"] < 6  # stopped early, masked
    assert not hists[5]["reached_target"] and hists[5]["epochs"] == 2  # the cap
    assert hists[4]["epochs"] == 0 and hists[4]["total_steps"] == 0


def test_adam_members_follow_train():
    data = teacher_data()
    options = [dict(optimizer="adam", lr=1e-3, epochs=3, seed=0),
               dict(optimizer="adam", lr=3e-3, epochs=2, seed=1, weight_decay=1e-2,
                    batch_size=50)]
    options[0]["batch_size"] = 50
    models = [mlp(40, (16,), 10) for _ in options]
    refs = [copy.deepcopy(m) for m in models]
    hists = train_population(models, data, options=options)
    for m, r, o, h in zip(models, refs, options, hists):
        ref = train(r, data, **o)
        assert_same_history(h, ref, len(data[1]))
        assert max_deviation(m, r) <= THETA_TOL


def test_cnn_members_follow_train_with_batch_schedule():
    data = teacher_data(channels=True)
    options = [dict(lr=0.05, momentum=0.9, epochs=3, seed=s, batch_size=32, milestones=[1],
                    batch_factor=2, lr_factor=0.5 + 0.1 * s) for s in range(3)]
    models = [cnn1d((4, 4)) for _ in options]
    refs = [copy.deepcopy(m) for m in models]
    hists = train_population(models, data, options=options)
    for m, r, o, h in zip(models, refs, options, hists):
        ref = train(r, data, **o)
        assert h["batch_size"] == ref["batch_size"] == [32, 64, 64]
        assert_same_history(h, ref, len(data[1]))
        assert max_deviation(m, r) <= THETA_TOL


def test_population_leaves_modes_and_works_inside_no_grad():
    data = teacher_data(60)
    models = [mlp(40, (8,), 10) for _ in range(2)]
    models[0].eval()
    before = [copy.deepcopy(m) for m in models]
    with torch.no_grad():
        train_population(models, data, options=dict(epochs=1, batch_size=20))
    assert not models[0].training and models[1].training
    assert all(max_deviation(m, b) > 0 for m, b in zip(models, before))


def test_zero_epochs_leave_the_models_as_they_are():
    model = mlp(40, (8,), 10)
    before = copy.deepcopy(model)
    (h,) = train_population([model], teacher_data(40), options=dict(epochs=0))
    ref = train(copy.deepcopy(before), teacher_data(40), epochs=0)
    assert h.keys() == ref.keys() and h["epochs"] == 0 and max_deviation(model, before) == 0


def test_divergence_names_the_member():
    X, y = teacher_data(60)
    models = [mlp(40, (8,), 10) for _ in range(2)]
    with pytest.raises(ValueError, match="member 1"):
        train_population(models, (X * 1e3, y), options=[dict(lr=0.01, epochs=3),
                                                         dict(lr=1e12, epochs=3)])


@pytest.mark.parametrize("make, options, error, match", [
    (lambda: [], None, ValueError, "models: the population is empty"),
    (lambda: mlp(40, (8,), 10), None, TypeError, "models: expected a sequence"),
    (lambda: [mlp(40, (8,), 10), mlp(40, (9,), 10)], None, ValueError,
     "models: member 1 has a different architecture"),
    (lambda: [mlp(40, (8,), 10), mlp(40, (8,), 10).double()], None, ValueError,
     "models: member 1 has parameters of dtype torch.float64"),
    (lambda: [nn.Sequential(nn.Linear(40, 10), nn.BatchNorm1d(10))], None, ValueError,
     r"models\[0\]: layer 1 \(BatchNorm1d\) cannot be batched"),
    (lambda: [mlp(40, (8,), 10)] * 2, None, ValueError, "the same model object"),
    (lambda: [mlp(40, (8,), 10) for _ in range(2)],
     [dict(epochs=1, batch_size=16), dict(epochs=1, batch_size=32)], ValueError,
     "different batch sizes go in different populations"),
    (lambda: [mlp(40, (8,), 10) for _ in range(2)],
     [dict(epochs=1), dict(epochs=1, optimizer="adam")], ValueError, "different optimizers"),
    (lambda: [mlp(40, (8,), 10)], [dict(epochs=1, callbacks=[print])], ValueError,
     r"options\[0\]: unknown options \['callbacks'\]"),
    (lambda: [mlp(40, (8,), 10)], [dict(epochs=1, lr=-1)], ValueError,
     r"options\[0\].lr: expected a positive number"),
    (lambda: [mlp(40, (8,), 10)], [dict()], ValueError,
     r"options\[0\].epochs, options\[0\].target_train_acc: give exactly one"),
    (lambda: [mlp(40, (8,), 10)], [dict(epochs=1)] * 2, ValueError, "2 option dicts for 1"),
])
def test_bad_population_is_named(make, options, error, match):
    with pytest.raises(error, match=match):
        train_population(make(), teacher_data(40), options=options or dict(epochs=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_members_on_different_devices_are_named():
    models = [mlp(40, (8,), 10), mlp(40, (8,), 10).cuda()]
    with pytest.raises(ValueError, match="models: member 1 is on cuda"):
        train_population(models, teacher_data(40), options=dict(epochs=1))


def test_plan_refuses_frozen_parameters_and_other_containers():
    model = mlp(40, (8,), 10)
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        population_plan(model)
    with pytest.raises(TypeError, match="models: a population needs nn.Sequential"):
        population_plan(nn.Linear(3, 2))


# --------------------------------------------------------------------------------------------
# configurations and the cache
# --------------------------------------------------------------------------------------------

def digits_config(**changes):
    base = TrainConfig(model={"name": "mlp", "input_dim": 64, "widths": [12], "num_classes": 10},
                       data={"name": "digits", "n_train": 300, "n_test": 100},
                       lr=0.05, momentum=0.9, batch_size=50, epochs=2, seed=0)
    return base.replace(**changes)


def test_population_groups():
    configs = [digits_config(seed=0), digits_config(seed=1, lr=0.1),
               digits_config(batch_size=25), digits_config(optimizer="adam", lr=1e-3),
               digits_config(track_sharpness_every=1), digits_config(seed=2, target_train_acc=0.5,
                                                                      epochs=None)]
    assert population_groups(configs) == [[0, 1, 5], [2], [3], [4]]
    with pytest.raises(TypeError, match=r"configs\[0\]"):
        population_groups([{"model": {}}])


def test_load_or_train_many_caches_members_for_load_or_train(cache, monkeypatch, tmp_path):
    configs = [digits_config(seed=0), digits_config(seed=1, lr=0.1),
               digits_config(seed=2, target_train_acc=0.5, epochs=None, max_epochs=3),
               digits_config(seed=0), digits_config(batch_size=30, weight_decay=1e-3)]
    models, hists = load_or_train_many(configs)
    assert len(models) == len(hists) == 5
    for c, m, h in zip(configs, models, hists):
        assert cache_module.cache_path(c).exists()
        assert not m.training
        ref_model, ref_hist = cache_module.load_or_train(c, directory=tmp_path / "single")
        assert_same_history(h, ref_hist, 300)
        assert max_deviation(m, ref_model) <= THETA_TOL
    assert models[0] is not models[3] and max_deviation(models[0], models[3]) == 0

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(cache_module, "train", no_training)
    for c, m in zip(configs, models):  # load_or_train finds every member in the cache
        again, _ = cache_module.load_or_train(c)
        assert max_deviation(again, m) == 0
    again, _ = load_or_train_many(configs[:2])  # and so does load_or_train_many
    assert max_deviation(again[1], models[1]) == 0


def test_load_or_train_many_falls_back_for_warm_starts(cache):
    first = digits_config(epochs=1)
    warm = digits_config(epochs=1, init=first, seed=3)
    models, _ = load_or_train_many([warm, digits_config(seed=4)])
    ref, _ = cache_module.load_or_train(warm)
    assert max_deviation(models[0], ref) == 0
    assert cache_module.cache_path(first).exists()


def test_load_or_train_many_bad_input(cache):
    with pytest.raises(ValueError, match="configs: the population is empty"):
        load_or_train_many([])
    with pytest.raises(TypeError, match="configs: expected a sequence"):
        load_or_train_many(digits_config())


def test_build_model_is_the_population_initialization():
    c = digits_config(init_seed=7)
    a, b = build_model(c), build_model(dataclasses.replace(c, seed=99))
    assert max_deviation(a, b) == 0  # init_seed, not seed, fixes the weights


# --------------------------------------------------------------------------------------------
# curvature
# --------------------------------------------------------------------------------------------

def tiny_population(n=3):
    torch.manual_seed(0)
    X, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    return [mlp(5, (6,), 3) for _ in range(n)], nn.CrossEntropyLoss(), (X, y)


def test_batched_products_are_each_members_hessian():
    models, loss, data = tiny_population()
    H = PopulationHessian(models, loss, data, dtype=torch.float64)
    V = torch.randn(len(models), H.dim, dtype=torch.float64)
    HV = H.matvec(V)
    for p, m in enumerate(models):
        dense = oracle_hessian(m, loss, data)
        torch.testing.assert_close(HV[p], dense @ V[p], rtol=1e-10, atol=1e-12)


def test_population_eigenvalues_match_dense_hessians():
    models, loss, data = tiny_population()
    before = [copy.deepcopy(m) for m in models]
    results = population_top_eigenvalues(models, loss, data, k=3, tol=1e-8,
                                         dtype=torch.float64, return_eigenvectors=True)
    for m, b, res in zip(models, before, results):
        dense = oracle_hessian(m, loss, data)
        exact = torch.linalg.eigvalsh(dense).flip(0)[:3].numpy()
        assert res.converged
        # Ritz values lie inside the spectrum; accurate to the requested tol (plus rounding)
        np.testing.assert_allclose(res.eigenvalues, exact, rtol=1e-8 + 1e-12, atol=1e-12)
        vec = torch.from_numpy(res.eigenvectors[:, 0])
        torch.testing.assert_close(dense @ vec, exact[0] * vec, rtol=0, atol=1e-6)
        assert max_deviation(m, b) == 0


def test_population_lambda_max_matches_top_eigenvalues():
    torch.manual_seed(1)
    X, y = teacher_data(200)
    models = [mlp(40, (16, 16), 10) for _ in range(4)]
    loss = nn.CrossEntropyLoss()
    results = population_top_eigenvalues(models, loss, (X, y), k=1, tol=1e-3)
    for m, res in zip(models, results):
        ref = top_eigenvalues(m, loss, (X, y), k=1, tol=1e-3)
        # the same Krylov sequence from the same start vector, to float32 rounding
        assert res.products == ref.products and res.converged == ref.converged
        np.testing.assert_allclose(res.eigenvalues, ref.eigenvalues, rtol=1e-5)


def test_population_top_k_within_tolerance_of_top_eigenvalues():
    X, y = teacher_data(200, channels=True)
    torch.manual_seed(2)
    models = [cnn1d((4, 4)) for _ in range(3)]
    loss = nn.CrossEntropyLoss()
    tol = 1e-3
    results = population_top_eigenvalues(models, loss, (X, y), k=2, tol=tol)
    for m, res in zip(models, results):
        ref = top_eigenvalues(m, loss, (X, y), k=2, tol=1e-8, dtype=torch.float64)
        assert res.converged
        np.testing.assert_allclose(res.eigenvalues, ref.eigenvalues, rtol=3 * tol)


def test_population_curvature_bad_input():
    models, loss, data = tiny_population(2)
    with pytest.raises(ValueError, match="models: the population is empty"):
        population_top_eigenvalues([], loss, data)
    with pytest.raises(ValueError, match="models: member 1 has a different architecture"):
        population_top_eigenvalues([models[0], mlp(5, (7,), 3)], loss, data)
    with pytest.raises(ValueError, match="k: expected"):
        population_top_eigenvalues(models, loss, data, k=0)
    with pytest.raises(ValueError, match="which"):
        population_top_eigenvalues(models, loss, data, which="XX")
    with pytest.raises(ValueError, match="reduction"):
        population_top_eigenvalues(models, nn.CrossEntropyLoss(reduction="sum"), data)


# --------------------------------------------------------------------------------------------
# 2-D CNNs
# --------------------------------------------------------------------------------------------

def image_data(n=96, side=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, side, side, generator=g)
    y = (X.reshape(n, -1) @ torch.randn(side * side, classes, generator=g)).argmax(1)
    return X, y


def small_cnn2d():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), nn.Tanh(),
                         nn.AvgPool2d(2, ceil_mode=True), nn.Conv2d(4, 3, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def cnn2d_models():
    from flatness import models

    makers = [("sequential", small_cnn2d)]
    if hasattr(models, "cnn2d"):
        makers += [("cnn2d", lambda: models.cnn2d((3, 4), image_size=8, num_classes=3)),
                   ("cnn2d-linear", lambda: models.cnn2d((3,), image_size=8, num_classes=3,
                                                         gap_head=False))]
    if hasattr(models, "mlenet"):
        makers.append(("mlenet", lambda: models.mlenet(image_size=8, channels=(3,),
                                                       kernel_size=3, num_classes=3)))
    return makers


@pytest.mark.parametrize("name,make", cnn2d_models())
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cnn2d_members_follow_train(name, make, optimizer):
    """Conv2d (grouped over members), pooling and global average pooling: every member
    follows train; measured max |Δθ| after 3 epochs ≲ 1e-7 (the grouped convolution sums in
    another order)."""
    data, test = image_data(), image_data(40, seed=1)
    lr = 0.05 if optimizer == "sgd" else 3e-3
    options = [dict(optimizer=optimizer, lr=lr, momentum=0.9, epochs=3, seed=0, batch_size=24),
               dict(optimizer=optimizer, lr=2 * lr, epochs=2, seed=1, batch_size=24,
                    weight_decay=1e-3),
               dict(optimizer=optimizer, lr=lr, target_train_acc=0.4, max_epochs=3, seed=2,
                    batch_size=24)]
    torch.manual_seed(0)
    models = [make() for _ in options]
    refs = [copy.deepcopy(m) for m in models]
    hists = train_population(models, data, test_data=test, options=options)
    for m, r, o, h in zip(models, refs, options, hists):
        ref = train(r, data, test_data=test, **o)
        assert_same_history(h, ref, len(data[1]))
        assert max_deviation(m, r) <= THETA_TOL


def test_cnn2d_plan_and_refusals():
    plan = population_plan(small_cnn2d())
    assert [e[0] for e in plan] == ["conv2d", "elementwise", "per_sample", "conv2d",
                                    "elementwise", "per_sample", "conv2d", "per_sample",
                                    "flatten"]
    assert population_plan(small_cnn2d()) == plan  # plans compare by value
    with pytest.raises(ValueError, match=r"layer 0 .* grouped"):
        population_plan(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)))
    with pytest.raises(ValueError, match="'same'-padded"):
        population_plan(nn.Sequential(nn.Conv2d(1, 2, 3, padding="same")))
    with pytest.raises(ValueError, match="returns indices"):
        population_plan(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, return_indices=True)))
    with pytest.raises(ValueError, match="BatchNorm2d"):
        population_plan(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))


def test_population_hessian_of_cnn2d_members_matches_dense_oracle():
    torch.manual_seed(3)
    models = [nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
                            nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
              for _ in range(2)]
    X, y = image_data(20, side=4)
    loss = nn.CrossEntropyLoss()
    H = PopulationHessian(models, loss, (X, y), dtype=torch.float64)
    V = torch.randn(len(models), H.dim, dtype=torch.float64)
    HV = H.matvec(V)
    for p, m in enumerate(models):
        dense = oracle_hessian(m, loss, (X, y))
        torch.testing.assert_close(HV[p], dense @ V[p], rtol=1e-10, atol=1e-12)


def test_load_or_train_many_batches_cnn2d_configs(cache, tmp_path):
    base = TrainConfig(model={"name": "cnn2d", "channels": [3, 4], "image_size": 8},
                       data={"name": "digits", "n_train": 120, "n_test": 40, "images": True},
                       lr=0.05, momentum=0.9, batch_size=40, epochs=2, seed=0)
    configs = [base, base.replace(seed=1, lr=0.1), base.replace(seed=2, target_train_loss=2.0,
                                                                epochs=None, max_epochs=3)]
    assert population_groups(configs) == [[0, 1, 2]]
    models, hists = load_or_train_many(configs)
    for c, m, h in zip(configs, models, hists):
        ref_model, ref_hist = cache_module.load_or_train(c, directory=tmp_path / "single")
        assert_same_history(h, ref_hist, 120)
        assert max_deviation(m, ref_model) <= THETA_TOL
