import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracles import assert_unperturbed, snapshot
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flatness import landscape
from flatness.models import cnn1d, mlp
from flatness.training import evaluate


def _linear(weight, bias):
    net = nn.Linear(len(weight[0]), len(weight)).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor(weight, dtype=torch.float64))
        net.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return net


def test_interpolation_endpoints_and_model_untouched():
    torch.manual_seed(0)
    a, b = mlp(5, (4,), 3), mlp(5, (4,), 3)
    a[0].weight.grad = torch.ones_like(a[0].weight)
    a.train()
    X, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    snaps = snapshot(a), snapshot(b)
    res = landscape.interpolate(a, b, [0.0, 0.5, 1.0], (X, y))
    assert res["loss"][0] == pytest.approx(evaluate(a, (X, y))[0], rel=1e-6)
    assert res["loss"][2] == pytest.approx(evaluate(b, (X, y))[0], rel=1e-6)
    assert_unperturbed(a, snaps[0])
    assert_unperturbed(b, snaps[1])


def test_interpolation_interior_point_is_the_interpolated_model():
    # θ(α) = (1−α)θ_a + αθ_b for linear models: logits X Wᵀ + c, cross-entropy by hand
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=g)
    Wa, ca = torch.tensor([[1., 0.], [0., 1.], [-1., -1.]]), torch.tensor([0.1, 0., -0.2])
    Wb, cb = torch.tensor([[-2., 1.], [0.5, 0.], [1., 3.]]), torch.tensor([0., 1., 0.])
    a, b = _linear(Wa.tolist(), ca.tolist()), _linear(Wb.tolist(), cb.tolist())
    alpha = 0.3
    W, c = (1 - alpha) * Wa.double() + alpha * Wb.double(), (1 - alpha) * ca.double() + alpha * cb.double()
    logits = X @ W.T + c
    loss = float((torch.logsumexp(logits, 1) - logits[torch.arange(30), y]).mean())
    acc = float((logits.argmax(1) == y).double().mean())
    res = landscape.interpolate(a, b, [alpha], DataLoader(TensorDataset(X, y), batch_size=7))
    assert res["loss"][0] == pytest.approx(loss, rel=1e-12)
    assert res["accuracy"][0] == acc


def test_interpolation_one_logit_accuracy():
    # w(α) = (1−α)·1 + α·(−1): the logit w·x separates perfectly for α < ½ and is wrong
    # everywhere for α > ½. The old code broadcast (N,) against (N, 1) into an "accuracy" of 34.
    X = torch.linspace(-1, 1, 34, dtype=torch.float64).reshape(-1, 1)
    X = X[X[:, 0] != 0]
    y = (X > 0).double()
    a, b = _linear([[1.0]], [0.0]), _linear([[-1.0]], [0.0])
    res = landscape.interpolate(a, b, [0.0, 0.25, 0.75, 1.0], (X, y), loss_fn=nn.BCEWithLogitsLoss())
    np.testing.assert_array_equal(res["accuracy"], [1.0, 1.0, 0.0, 0.0])
    w = 1 - 2 * 0.25
    expected = float(F.binary_cross_entropy_with_logits(w * X, y))
    assert res["loss"][1] == pytest.approx(expected, rel=1e-12)


def test_interpolation_needs_same_architecture():
    with pytest.raises(ValueError, match="same architecture"):
        landscape.interpolate(mlp(5, (4,), 3), mlp(5, (6,), 3), [0.0],
                              (torch.randn(2, 5), torch.zeros(2, dtype=torch.long)))


def test_evaluate_exact_accuracies():
    # logits = x itself (identity weights): the prediction is the argmax of x
    X = torch.tensor([[3., 0., 0.], [0., 3., 0.], [0., 0., 3.], [3., 0., 0.], [0., 3., 0.]])
    y = torch.tensor([0, 1, 1, 2, 1])  # right, right, wrong, wrong, right
    net = _linear(np.eye(3).tolist(), [0., 0., 0.]).float()
    loss, acc = evaluate(net, (X, y), batch_size=2)
    assert acc == 3 / 5
    assert loss == pytest.approx(float(F.cross_entropy(X, y)), rel=1e-6)


@pytest.mark.parametrize("shape", ["(N,)", "(N, 1)"])
def test_evaluate_one_logit_head(shape):
    X = torch.tensor([[-2.], [-1.], [1.], [2.], [3.]])
    y = torch.tensor([0., 0., 1., 1., 1.])
    head = nn.Linear(1, 1)
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.fill_(0.0)
    net = nn.Sequential(head, nn.Flatten(0)) if shape == "(N,)" else head
    target = y if shape == "(N,)" else y[:, None]
    bce = nn.BCEWithLogitsLoss()
    assert evaluate(net, (X, target), bce)[1] == 1.0  # perfectly separating (old code: 0.0)
    flipped = target.clone()
    flipped[0] = 1.0
    assert evaluate(net, (X, flipped), bce)[1] == 4 / 5
    params = {k: v.detach() for k, v in net.named_parameters()}
    assert landscape.evaluate_at(net, params, (X, target), bce)[1] == 1.0
    key = next(k for k in params if k.endswith("weight"))
    params[key] = -params[key]  # the logit −x: every prediction is wrong
    assert landscape.evaluate_at(net, params, (X, target), bce)[1] == 0.0


def test_evaluate_refuses_heads_it_cannot_score():
    net = nn.Linear(2, 3)
    X, t = torch.randn(6, 2), torch.randn(6, 3)
    with pytest.raises(ValueError, match="accuracy"):
        evaluate(net, (X, t), nn.MSELoss())


def test_evaluate_at_leaves_model_unperturbed():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.3), nn.ReLU(), nn.Linear(4, 3))
    net.train()
    net[0].bias.requires_grad_(False)
    net[3].weight.grad = torch.ones_like(net[3].weight)
    X, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    snap = snapshot(net)
    point = {k: 2 * v.detach() for k, v in net.named_parameters()}
    landscape.evaluate_at(net, point, (X, y), eval_mode=True)
    landscape.loss_surface(net, (X, y), steps=2, eval_mode=True)
    assert_unperturbed(net, snap)


def test_filter_normalization():
    torch.manual_seed(0)
    net = cnn1d(channels=(3,), kernel_size=3, length=8, num_classes=2)
    d = landscape.filter_normalized_direction(net, seed=0)
    for name, p in net.named_parameters():
        if p.ndim > 1:
            np.testing.assert_allclose(d[name].reshape(p.shape[0], -1).norm(dim=1),
                                       p.detach().reshape(p.shape[0], -1).norm(dim=1), rtol=1e-5)
        else:
            assert torch.count_nonzero(d[name]) == 0
    with pytest.raises(ValueError, match="bias"):
        landscape.filter_normalized_direction(net, bias="nope")


def test_surface_centre_is_the_loss():
    torch.manual_seed(0)
    net = mlp(5, (4,), 3)
    X, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    s = landscape.loss_surface(net, (X, y), steps=3, span=0.5)
    assert s["loss"].shape == (3, 3)
    assert s["loss"][1, 1] == pytest.approx(evaluate(net, (X, y))[0], rel=1e-6)


def test_surface_grid_point_by_hand():
    # θ + a d1 + b d2 for a linear model at the corner (a, b) = (−s, s), cross-entropy by hand
    g = torch.Generator().manual_seed(2)
    X = torch.randn(16, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=g)
    net = _linear([[1., -1.], [0.5, 2.]], [0.0, 0.3])
    d1 = {"weight": torch.tensor([[1., 0.], [0., 0.]], dtype=torch.float64),
          "bias": torch.zeros(2, dtype=torch.float64)}
    d2 = {"weight": torch.zeros(2, 2, dtype=torch.float64),
          "bias": torch.tensor([0., 1.], dtype=torch.float64)}
    s = landscape.loss_surface(net, (X, y), directions=(d1, d2), span=0.5, steps=3)
    W = net.weight.detach() - 0.5 * d1["weight"]
    c = net.bias.detach() + 0.5 * d2["bias"]
    assert s["loss"][0, 2] == pytest.approx(float(F.cross_entropy(X @ W.T + c, y)), rel=1e-12)


@pytest.mark.parametrize("directions,match", [
    (({"weight": torch.zeros(2, 2)}, {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}),
     "missing"),
    (({"weight": torch.zeros(2, 3), "bias": torch.zeros(2)},) * 2, "shape"),
    ((torch.zeros(5), torch.zeros(6)), "entries"),
    (({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)},), "pair"),
])
def test_surface_refuses_misshaped_directions(directions, match):
    net = nn.Linear(2, 2)
    X, y = torch.randn(4, 2), torch.randint(0, 2, (4,))
    with pytest.raises(ValueError, match=match) as err:
        landscape.loss_surface(net, (X, y), directions=directions, steps=2)
    assert "directions" in str(err.value)


def test_landscape_inside_no_grad():
    torch.manual_seed(0)
    a, b = mlp(5, (4,), 3), mlp(5, (4,), 3)
    X, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    expected = landscape.loss_surface(a, (X, y), steps=2)["loss"]
    with torch.no_grad():
        np.testing.assert_array_equal(landscape.loss_surface(a, (X, y), steps=2)["loss"], expected)
        assert landscape.interpolate(a, b, [0.5], (X, y))["loss"].shape == (1,)


# --- filter_normalized_sharpness (helper MEASURES-A) ---------------------------------------

def _fn_oracle(model, loss_fn, data, radius, num_points, seed=0):
    """The same maximum with the direction and the losses computed independently."""
    from torch.func import functional_call

    X, y = data
    d = landscape.filter_normalized_direction(model, seed)
    params = {k: p.detach() for k, p in model.named_parameters()}
    with torch.no_grad():
        base = float(loss_fn(model(X), y))
    best = base
    for t in np.linspace(-radius, radius, num_points):
        point = {k: params[k] + float(t) * d[k] for k in params}
        best = max(best, float(loss_fn(functional_call(model, point, (X,)), y)))
    return best - base


def test_filter_normalized_sharpness_matches_the_direct_computation():
    from invariance_helpers import class_data, relu_net

    net, data = relu_net(bias=True), class_data()
    CE = nn.CrossEntropyLoss()
    s = landscape.filter_normalized_sharpness(net, CE, data, radius=0.5, num_points=11, seed=3)
    assert s == pytest.approx(_fn_oracle(net, CE, data, 0.5, 11, 3), rel=1e-12)
    assert s >= 0


def test_filter_normalized_sharpness_of_a_quadratic_is_half_the_curvature_along_d():
    """L(w) = mean (Xw - y)^2 at an exact minimum: L(w + t d) = t^2 d' H d / 2 exactly."""
    from oracles import oracle_hessian

    torch.manual_seed(0)
    net = nn.Linear(4, 1, bias=False).double()
    X = torch.randn(10, 4, dtype=torch.float64)
    y = net(X).detach()
    H = oracle_hessian(net, nn.MSELoss(), (X, y))
    d = landscape.filter_normalized_direction(net, 1)["weight"].reshape(-1)
    s = landscape.filter_normalized_sharpness(net, nn.MSELoss(), (X, y), radius=0.3,
                                              num_points=5, seed=1)
    assert s == pytest.approx(0.5 * 0.3 ** 2 * float(d @ H @ d), rel=1e-10)


def test_filter_normalized_sharpness_invariances():
    from invariance_helpers import (alpha_scaled, class_data, neuron_scaled, radially_scaled,
                                    relative_change, relu_net, same_function, weight_normed)

    net, data = relu_net(bias=True), class_data()
    CE = nn.CrossEntropyLoss()
    kw = dict(radius=0.5, num_points=9, seed=2)
    base = landscape.filter_normalized_sharpness(net, CE, data, **kw)
    a = alpha_scaled(net, 5)
    assert same_function(net, a, data[0])
    assert relative_change(base, landscape.filter_normalized_sharpness(a, CE, data, **kw)) < 1e-9
    wn = weight_normed(net)
    r = radially_scaled(wn, 5)
    assert relative_change(landscape.filter_normalized_sharpness(wn, CE, data, **kw),
                           landscape.filter_normalized_sharpness(r, CE, data, **kw)) < 1e-9
    n = neuron_scaled(net, 5)
    assert same_function(net, n, data[0])
    assert relative_change(base, landscape.filter_normalized_sharpness(n, CE, data, **kw)) > 1e-2
    # biases moved by their own magnitude ("scaled") scale with them too: still invariant
    scaled = dict(kw, bias="scaled")
    assert relative_change(landscape.filter_normalized_sharpness(net, CE, data, **scaled),
                           landscape.filter_normalized_sharpness(a, CE, data, **scaled)) < 1e-9


def test_filter_normalized_sharpness_unperturbed_and_bad_arguments():
    from invariance_helpers import class_data, relu_net

    net, data = relu_net(bias=True), class_data()
    net.train()
    net[0].weight.grad = torch.ones_like(net[0].weight)
    snap = snapshot(net)
    with torch.no_grad():
        landscape.filter_normalized_sharpness(net, nn.CrossEntropyLoss(), data, radius=0.1,
                                              num_points=3)
    assert_unperturbed(net, snap)
    for kw, name in [(dict(radius=0.0, num_points=3), "radius"),
                     (dict(radius=0.1, num_points=1), "num_points"),
                     (dict(radius=0.1, num_points=3, bias="bn"), "bias")]:
        with pytest.raises(ValueError, match=name):
            landscape.filter_normalized_sharpness(net, nn.CrossEntropyLoss(), data, **kw)
