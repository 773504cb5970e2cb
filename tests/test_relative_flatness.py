"""Relative flatness against the dense Hessian of the last layer's weight, and its invariances."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from flatness.relative_flatness import relative_flatness
from invariance_helpers import (alpha_scaled, class_data, neuron_scaled, radially_scaled,
                                relative_change, relu_net, same_function, weight_normed)
from oracles import assert_unperturbed, snapshot

CE = nn.CrossEntropyLoss()


def oracle(model, loss_fn, data, name):
    """sum_{s,s'} <w_s, w_s'> Tr H_{s,s'} from the dense float64 Hessian in W = model.<name>."""
    X, y = data
    params = {k: p.detach() for k, p in model.named_parameters()}
    W = params[name]
    d, m = W.shape

    def f(w):
        return loss_fn(functional_call(model, {**params, name: w.reshape(d, m)}, (X,)), y)

    H = hessian(f)(W.reshape(-1)).reshape(d, m, d, m)
    traces = torch.stack([torch.stack([torch.trace(H[s, :, t, :]) for t in range(d)])
                          for s in range(d)])
    return float(((W @ W.T) * traces).sum())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("loss", ["ce", "mse", "weighted"])
def test_matches_the_dense_block_hessian(bias, loss):
    net, (X, y) = relu_net(bias=bias), class_data()
    loss_fn = {"ce": CE, "mse": nn.MSELoss(),
               "weighted": nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]).double())}[loss]
    if loss == "mse":
        y = torch.randn(X.shape[0], 3, dtype=torch.float64)
    value = relative_flatness(net, loss_fn, (X, y))
    assert value == pytest.approx(oracle(net, loss_fn, (X, y), "4.weight"), rel=1e-10)
    batched = relative_flatness(net, loss_fn, [(X[:7], y[:7]), (X[7:], y[7:])])
    assert batched == pytest.approx(value, rel=1e-12)


def test_invariant_to_alpha_scale_and_weight_norm_not_to_neuron_scale():
    net, data = relu_net(bias=True), class_data()
    base = relative_flatness(net, CE, data)
    a = alpha_scaled(net, 4)
    assert same_function(net, a, data[0])
    assert relative_change(base, relative_flatness(a, CE, data)) < 1e-9
    wn = weight_normed(net)
    r = radially_scaled(wn, 4)
    assert same_function(wn, r, data[0])
    assert relative_change(relative_flatness(wn, CE, data), relative_flatness(r, CE, data)) < 1e-9
    n = neuron_scaled(net, 4)
    assert same_function(net, n, data[0])
    assert relative_change(base, relative_flatness(n, CE, data)) > 1e-2


def test_unperturbed_and_bad_layers():
    net, data = relu_net(bias=True).float(), class_data()
    data = (data[0].float(), data[1])
    net.train()
    net[4].weight.grad = torch.ones_like(net[4].weight)
    snap = snapshot(net)
    relative_flatness(net, CE, data)
    assert_unperturbed(net, snap)
    with pytest.raises(ValueError, match="layer"):
        relative_flatness(net, CE, data, layer="1")      # a ReLU
    with pytest.raises(ValueError, match="layer"):
        relative_flatness(net, CE, data, layer="0")      # not the output layer
    with pytest.raises(ValueError, match="loss_fn"):
        relative_flatness(net, nn.CrossEntropyLoss(reduction="sum"), data)
