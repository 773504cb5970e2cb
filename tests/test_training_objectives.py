"""Stopping rules, the attack objective and SAM of flatness.training.train, against exact
identities, hand-computed updates and the population trainer."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from flatness import training
from flatness.models import mlp
from flatness.population import train_population
from flatness.training import STOP_REASONS, train


def teacher_data(n=120, d=10, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = (X @ torch.randn(d, classes, generator=g)).argmax(1)
    return X, y


def fresh(seed=0, d=10, width=8, classes=3):
    torch.manual_seed(seed)
    return mlp(d, (width,), classes)


def params_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def plateau_epoch(losses, patience, rtol):
    """The epoch (1-based) at which the plateau rule fires on a loss sequence, else None."""
    best, since = math.inf, 0
    for e, loss in enumerate(losses, 1):
        if loss < (1 - rtol) * best:
            best, since = loss, 0
        else:
            since += 1
        if since >= patience:
            return e
    return None


# --------------------------------------------------------------------------------------------
# stopping rules
# --------------------------------------------------------------------------------------------

def test_target_train_loss_stops_at_the_first_epoch_below_it():
    data = teacher_data()
    full = train(fresh(), data, epochs=12, lr=0.2, batch_size=16)
    target = full["train_loss"][5] * (1 + 1e-6)  # reached at epoch 6 at the latest
    first = next(e for e, L in zip(full["epoch"], full["train_loss"]) if L <= target)
    model = fresh()
    h = train(model, data, target_train_loss=target, max_epochs=12, lr=0.2, batch_size=16)
    assert h["epochs"] == first and h["stop_reason"] == "target_loss" and h["reached_target"]
    assert h["train_loss"] == full["train_loss"][:first]  # the same run, cut short
    assert all(L > target for L in h["train_loss"][:-1]) and h["train_loss"][-1] <= target


def test_plateau_rule_matches_its_definition():
    data = teacher_data()
    patience, rtol = 2, 0.05
    full = train(fresh(), data, epochs=40, lr=0.05, batch_size=40)
    expected = plateau_epoch(full["train_loss"], patience, rtol)
    assert expected is not None and expected < 40  # the run does plateau at this rtol
    h = train(fresh(), data, plateau_patience=patience, plateau_rtol=rtol, max_epochs=40,
              lr=0.05, batch_size=40)
    assert h["epochs"] == expected and h["stop_reason"] == "plateau"
    assert not h["reached_target"]


def test_stop_reasons_max_epochs_and_epochs_and_precedence():
    data = teacher_data()
    h = train(fresh(), data, target_train_acc=1.0, max_epochs=2, lr=1e-4)
    assert h["stop_reason"] == "max_epochs" and h["epochs"] == 2 and not h["reached_target"]
    h = train(fresh(), data, epochs=2)
    assert h["stop_reason"] == "epochs"
    h = train(fresh(), data, epochs=0)
    assert h["stop_reason"] == "epochs" and h["epochs"] == 0
    # several rules true at once: the accuracy target has precedence, then the loss target
    h = train(fresh(), data, target_train_acc=1e-9, target_train_loss=1e9, plateau_patience=1,
              max_epochs=1)
    assert h["stop_reason"] == "target_acc" and h["epochs"] == 1
    h = train(fresh(), data, target_train_loss=1e9, plateau_patience=1, max_epochs=1)
    assert h["stop_reason"] == "target_loss"
    assert set(STOP_REASONS) == {"target_acc", "target_loss", "plateau", "max_epochs", "epochs"}


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=2, target_train_loss=0.5), "exactly one"),
    (dict(epochs=2, plateau_patience=3), "exactly one"),
    (dict(target_train_loss=0.0), "target_train_loss"),
    (dict(target_train_loss=float("inf")), "target_train_loss"),
    (dict(target_train_loss="0.1"), "target_train_loss"),
    (dict(plateau_patience=0), "plateau_patience"),
    (dict(plateau_patience=1.5), "plateau_patience"),
    (dict(plateau_patience=2, plateau_rtol=1.0), "plateau_rtol"),
    (dict(plateau_patience=2, plateau_rtol=-0.1), "plateau_rtol"),
    (dict(plateau_patience=2, max_epochs=0), "max_epochs"),
])
def test_bad_stopping_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(fresh(), teacher_data(20), **kwargs)


def test_population_members_stop_like_train():
    data = teacher_data()
    full = train(fresh(), data, epochs=12, lr=0.2, batch_size=16)
    options = [dict(lr=0.2, target_train_loss=full["train_loss"][3] * 1.001, max_epochs=12),
               dict(lr=0.05, plateau_patience=2, plateau_rtol=0.05, max_epochs=30),
               dict(lr=0.2, target_train_loss=1e-6, max_epochs=3),
               dict(lr=0.1, target_train_acc=0.5, target_train_loss=0.9, plateau_patience=3,
                    max_epochs=20, momentum=0.9),
               dict(lr=0.1, epochs=2)]
    options = [dict(o, batch_size=16, seed=i) for i, o in enumerate(options)]
    models = [fresh(i) for i in range(len(options))]
    refs = [copy.deepcopy(m) for m in models]
    hists = train_population(models, data, options=options)
    reasons = []
    for m, r, o, h in zip(models, refs, options, hists):
        ref = train(r, data, **o)
        assert h.keys() == ref.keys()
        for key in ("epochs", "stop_reason", "reached_target", "total_steps"):
            assert h[key] == ref[key], key
        np.testing.assert_allclose(h["train_loss"], ref["train_loss"], rtol=1e-5)
        assert max(float((p - q).detach().abs().max()) for p, q in zip(m.parameters(),
                                                              r.parameters())) <= 1e-4
        reasons.append(h["stop_reason"])
    assert reasons[0] == "target_loss" and reasons[1] == "plateau"
    assert reasons[2] == "max_epochs" and reasons[4] == "epochs"


def test_population_refuses_bad_stopping_options():
    with pytest.raises(ValueError, match=r"options\[0\].plateau_patience"):
        train_population([fresh()], teacher_data(20), options=dict(plateau_patience=0))
    with pytest.raises(ValueError, match=r"options\[0\].epochs, options\[0\].target_train_acc"):
        train_population([fresh()], teacher_data(20), options=dict(epochs=1,
                                                                   target_train_loss=0.1))


# --------------------------------------------------------------------------------------------
# the attack objective (Wu, Zhu & E 2017)
# --------------------------------------------------------------------------------------------

def attack_set(n=50, seed=5):
    X, y = teacher_data(n, seed=seed)
    return X, (y + 1) % 3  # wrong labels


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_zero_attack_weight_is_plain_training_bitwise(optimizer):
    """T has its own permutation stream: with γ = 0 S's order and augmentation are untouched."""
    data = teacher_data()
    opts = dict(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-2, momentum=0.9,
                batch_size=16, epochs=3, seed=3, augment=dict(scale=0.1, noise=0.05),
                milestones=(1,), batch_factor=2)
    a, b = fresh(), fresh()
    ha = train(a, data, **opts)
    hb = train(b, data, attack_data=attack_set(), attack_weight=0.0, **opts)
    assert params_equal(a, b) and ha["train_loss"] == hb["train_loss"]


def test_attack_with_t_equal_s_full_batch_doubles_the_gradient():
    """T = S, γ = 1, full batch: ∇(L_S + L_T) = 2∇L_S, so the run is SGD (with momentum) at
    2ε; float64, equal up to the summation order (S is permuted every epoch, T is not)."""
    X, y = teacher_data()
    data = (X.double(), y)
    a, b = fresh().double(), fresh().double()
    train(a, data, batch_size=None, epochs=4, lr=0.05, momentum=0.9)
    train(b, data, batch_size=None, epochs=4, lr=0.025, momentum=0.9, attack_data=data,
          attack_weight=1.0)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-13)


def test_attack_step_against_hand_computed_update():
    """One step, float64: θ₁ = θ₀ − ε(∇L_S(θ₀) + γ∇L_{b_T}(θ₀)), b_T the first B indices
    of T's permutation from its own generator (S is one full batch, so one step per epoch)."""
    X, y = teacher_data(16)
    X = X.double()
    XT, yT = attack_set(40)
    XT = XT.double()
    model = fresh().double()
    ref = copy.deepcopy(model)
    gamma, lr, seed = 0.7, 0.1, 11
    train(model, (X, y), batch_size=16, epochs=1, lr=lr, seed=seed, attack_data=(XT, yT),
          attack_weight=gamma)
    gen = torch.Generator().manual_seed(training._attack_seed(seed))
    idx = torch.randperm(40, generator=gen)[:16]
    ce = nn.CrossEntropyLoss()
    loss = ce(ref(X), y) + gamma * ce(ref(XT[idx]), yT[idx])
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for p, q, g in zip(model.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p, q - lr * g, rtol=0, atol=1e-14)


def test_attack_stream_walks_permutations_of_t():
    XT, yT = attack_set(10)
    stream = training._AttackStream(XT, yT, seed=4)
    gen = torch.Generator().manual_seed(training._attack_seed(4))
    p1, p2 = torch.randperm(10, generator=gen), torch.randperm(10, generator=gen)
    got = [stream.indices(4) for _ in range(4)]
    # 4 + 4 from the first permutation; 2 left < 4: a fresh permutation
    assert torch.equal(got[0], p1[:4]) and torch.equal(got[1], p1[4:8])
    assert torch.equal(got[2], p2[:4]) and torch.equal(got[3], p2[4:8])
    assert stream.indices(10) is None and stream.indices(64) is None  # all of T, in order
    xb, yb = stream.next(64)
    assert xb is XT and yb is yT


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(attack_weight=-1.0), ValueError, "attack_weight"),
    (dict(attack_weight=float("nan")), ValueError, "attack_weight"),
    (dict(attack_weight=1.0), ValueError, "attack_weight: a positive attack weight .* needs"),
    (dict(attack_data=torch.randn(5, 10), attack_weight=1.0), TypeError, "attack_data"),
    (dict(attack_data=(torch.randn(5, 10), torch.full((5,), 7)), attack_weight=1.0),
     ValueError, "attack_data: labels"),
    (dict(attack_data=(torch.randn(5, 9), torch.zeros(5, dtype=torch.long)),
          attack_weight=1.0), ValueError, "attack_data"),
])
def test_bad_attack_options_are_named(kwargs, error, match):
    model = fresh()
    before = copy.deepcopy(model)
    with pytest.raises(error, match=match):
        train(model, teacher_data(20), epochs=1, **kwargs)
    assert params_equal(model, before)


def max_deviation(a, b):
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(),
                                                                    b.parameters()))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "sam", "asam"])
@pytest.mark.parametrize("t_size", [50, 10])  # T batches of min(B, |T|) = 16, or all of T
def test_population_attack_and_sam_members_follow_train(optimizer, t_size):
    """Members with and without an attack set, γ = 0 included, SAM radii per member: each
    follows train (max |Δθ| ≤ 1e-4, see tests/test_population.py)."""
    data, T = teacher_data(), attack_set(t_size)
    lr = 1e-2 if optimizer == "adam" else 0.05
    base = dict(optimizer=optimizer, lr=lr, batch_size=16, momentum=0.9)
    options = [dict(base, epochs=3, seed=0, attack_data=T, attack_weight=0.5, sam_rho=0.05),
               dict(base, epochs=2, seed=1, attack_data=T, attack_weight=0.0, sam_rho=0.1),
               dict(base, epochs=2, seed=2, weight_decay=1e-3),
               dict(base, target_train_loss=0.9, max_epochs=4, seed=3, attack_data=T,
                    attack_weight=2.0, augment=dict(noise=0.05))]
    models = [fresh(i) for i in range(len(options))]
    refs = [copy.deepcopy(m) for m in models]
    hists = train_population(models, data, options=options)
    for m, r, o, h in zip(models, refs, options, hists):
        ref = train(r, data, **o)
        for key in ("epochs", "stop_reason", "total_steps"):
            assert h[key] == ref[key], key
        np.testing.assert_allclose(h["train_loss"], ref["train_loss"], rtol=1e-5)
        assert max_deviation(m, r) <= 1e-4


def test_population_refuses_mixed_attack_sets_and_bad_options():
    opts = [dict(epochs=1, attack_data=attack_set(), attack_weight=1.0),
            dict(epochs=1, attack_data=attack_set(seed=6), attack_weight=1.0)]
    with pytest.raises(ValueError, match=r"options\[1\].attack_data: members use different"):
        train_population([fresh(), fresh(1)], teacher_data(20), options=opts)
    with pytest.raises(ValueError, match=r"options\[0\].attack_weight: a positive"):
        train_population([fresh()], teacher_data(20), options=dict(epochs=1, attack_weight=1.0))
    with pytest.raises(ValueError, match=r"options\[0\].sam_rho"):
        train_population([fresh()], teacher_data(20), options=dict(epochs=1, optimizer="sam",
                                                                   sam_rho=-1.0))
    with pytest.raises(ValueError, match=r"options\[0\].attack_data: labels"):
        train_population([fresh()], teacher_data(20), options=dict(
            epochs=1, attack_data=(torch.randn(5, 10), torch.full((5,), 7)), attack_weight=1.0))


ATTACK_CONFIG = training.TrainConfig(
    model={"name": "mlp", "input_dim": 64, "widths": [8], "num_classes": 10},
    data={"name": "digits", "n_train": 120, "n_test": 50},
    attack={"name": "digits", "n_train": 60, "n_test": 10, "seed": 3}, attack_weight=0.5,
    lr=0.05, batch_size=40, epochs=2, seed=1)


def test_attack_config_trains_through_the_cache(cache):
    from flatness import data as data_module
    from flatness.cache import load_or_train, load_or_train_many
    from flatness.population import _batchable, population_groups

    assert _batchable(ATTACK_CONFIG)
    plain = ATTACK_CONFIG.replace(attack=None, attack_weight=0.0)
    assert population_groups([plain, ATTACK_CONFIG, plain.replace(seed=2)]) == [[0, 2], [1]]
    model, hist = load_or_train(ATTACK_CONFIG)
    ref = training.build_model(ATTACK_CONFIG)
    split = data_module.from_spec(ATTACK_CONFIG.data)
    T = data_module.from_spec(ATTACK_CONFIG.attack).train
    ref_hist = train(ref, split.train, test_data=split.test, lr=0.05, batch_size=40, epochs=2,
                     seed=1, attack_data=T, attack_weight=0.5)
    assert params_equal(model, ref) and hist["train_loss"] == ref_hist["train_loss"]
    assert params_equal(load_or_train_many([ATTACK_CONFIG])[0][0], model)  # from the cache
    batched = ATTACK_CONFIG.replace(seed=5)  # trained as a population of two with another seed
    models, hists = load_or_train_many([batched, batched.replace(seed=6)])
    single, single_hist = load_or_train(batched, directory=cache / "single")
    assert max_deviation(models[0], single) <= 1e-4
    np.testing.assert_allclose(hists[0]["train_loss"], single_hist["train_loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="attack"):
        training.TrainConfig(model={}, data={}, attack="digits")


# --------------------------------------------------------------------------------------------
# SAM (Foret et al. 2021) and adaptive SAM (Kwon et al. 2021)
# --------------------------------------------------------------------------------------------

def softmax_regression_grad(W, b, X, y):
    """∇ of the mean cross-entropy of logits XWᵀ + b, by hand: G = (softmax − onehot)/n."""
    P = torch.softmax(X @ W.T + b, dim=1)
    G = (P - torch.nn.functional.one_hot(y, W.shape[0]).double()) / X.shape[0]
    return G.T @ X, G.sum(0)


@pytest.mark.parametrize("optimizer", ["sam", "asam"])
def test_sam_steps_against_hand_computed_updates(optimizer):
    """Two full-batch steps, float64, momentum and weight decay:
    ε̂ = ρ g/‖g‖ (SAM) or ρ T²g/‖Tg‖ with T = |W| + η on W, 1 on b (ASAM);
    m ← μm + ∇L(θ + ε̂) + λθ; θ ← θ − εm."""
    X, y = teacher_data(30, d=4)
    X = X.double()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    W, b = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    lr, mu, wd, rho = 0.3, 0.9, 1e-2, 0.2
    train(model, (X, y), optimizer=optimizer, sam_rho=rho, lr=lr, momentum=mu, weight_decay=wd,
          batch_size=None, epochs=2)
    mW, mb = None, None
    for _ in range(2):
        gW, gb = softmax_regression_grad(W, b, X, y)
        if optimizer == "sam":
            norm = torch.sqrt((gW ** 2).sum() + (gb ** 2).sum())
            eW, eb = rho * gW / norm, rho * gb / norm
        else:
            T = W.abs() + training.ASAM_ETA
            norm = torch.sqrt(((T * gW) ** 2).sum() + (gb ** 2).sum())
            eW, eb = rho * T ** 2 * gW / norm, rho * gb / norm
        sW, sb = softmax_regression_grad(W + eW, b + eb, X, y)
        dW, db = sW + wd * W, sb + wd * b
        mW, mb = (dW, db) if mW is None else (mu * mW + dW, mu * mb + db)
        W, b = W - lr * mW, b - lr * mb
    torch.testing.assert_close(model[0].weight.detach(), W, rtol=0, atol=1e-13)
    torch.testing.assert_close(model[0].bias.detach(), b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("optimizer", ["sam", "asam"])
def test_sam_with_zero_radius_is_sgd_bitwise(optimizer):
    data = teacher_data()
    a, b = fresh(), fresh()
    opts = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=16, epochs=2, seed=2)
    train(a, data, **opts)
    train(b, data, optimizer=optimizer, sam_rho=0.0, **opts)
    assert params_equal(a, b)


def test_sam_differs_from_sgd_and_is_reproducible():
    data = teacher_data()
    a, b, c = fresh(), fresh(), fresh()
    opts = dict(lr=0.05, batch_size=16, epochs=2, seed=2)
    train(a, data, **opts)
    train(b, data, optimizer="sam", sam_rho=0.05, attack_data=attack_set(), attack_weight=0.5,
          **opts)
    train(c, data, optimizer="sam", sam_rho=0.05, attack_data=attack_set(), attack_weight=0.5,
          **opts)
    assert not params_equal(a, b) and params_equal(b, c)


def test_sam_gradient_restores_the_parameters_on_error():
    model = fresh()
    X, y = teacher_data(20)
    loss = nn.CrossEntropyLoss()(model(X), y)
    loss.backward()
    before = copy.deepcopy(model)

    def failing():
        assert not params_equal(model, before)  # evaluated at the perturbed point
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        training._sam_gradient(list(model.parameters()), failing, 0.5, adaptive=False)
    assert params_equal(model, before)


def test_zero_gradient_gives_no_perturbation():
    params = [torch.ones(2, 2), torch.ones(2)]
    eps = training._sam_perturbation(params, [torch.zeros(2, 2), torch.zeros(2)], 0.1, True)
    assert all(float(e.abs().max()) == 0 for e in eps)


@pytest.mark.parametrize("rho", [-0.1, float("nan"), float("inf"), "0.1"])
def test_bad_sam_rho_is_named(rho):
    with pytest.raises(ValueError, match="sam_rho"):
        train(fresh(), teacher_data(20), optimizer="sam", sam_rho=rho, epochs=1)


def test_sam_configs_train_as_populations_through_the_cache(cache):
    from flatness.cache import load_or_train, load_or_train_many
    from flatness.population import population_groups

    config = ATTACK_CONFIG.replace(attack=None, attack_weight=0.0, optimizer="asam",
                                   sam_rho=0.1, momentum=0.9)
    configs = [config, config.replace(seed=2, sam_rho=0.3), config.replace(optimizer="sam")]
    assert population_groups(configs) == [[0, 1], [2]]
    models, hists = load_or_train_many(configs)
    for c, m, h in zip(configs, models, hists):
        again, _ = load_or_train(c)  # found in the cache
        assert params_equal(m, again) and h["stop_reason"] == "epochs"
        single, _ = load_or_train(c, directory=cache / "single")
        assert max_deviation(m, single) <= 1e-4
