"""The Fisher–Rao norm against per-sample autograd gradients, Liang et al.'s identity, invariances."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from flatness.fisher_rao import fisher_rao_norm
from flatness.params import ParameterLayout
from invariance_helpers import (alpha_scaled, class_data, neuron_scaled, radially_scaled,
                                relative_change, relu_net, same_function, weight_normed)
from oracles import assert_unperturbed, snapshot

CE = nn.CrossEntropyLoss()


def oracle(model, loss_fn, data):
    """(1/N) sum_i <theta, grad_theta l_i>^2 with one reverse-mode gradient per sample."""
    X, y = data
    layout = ParameterLayout(model)
    theta = layout.to_vector(model)
    total = 0.0
    for i in range(X.shape[0]):
        v = theta.clone().requires_grad_(True)
        loss = loss_fn(functional_call(model, layout.to_dict(v), (X[i:i + 1],)), y[i:i + 1])
        (g,) = torch.autograd.grad(loss, v)
        total += float(theta @ g) ** 2
    return total / X.shape[0]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("loss_fn", [CE, nn.MSELoss()], ids=["ce", "mse"])
def test_matches_per_sample_gradients(bias, loss_fn):
    net, (X, y) = relu_net(bias=bias), class_data()
    if isinstance(loss_fn, nn.MSELoss):
        y = torch.randn(X.shape[0], 3, dtype=torch.float64)
    value = fisher_rao_norm(net, (X, y), loss_fn)
    assert value == pytest.approx(oracle(net, loss_fn, (X, y)), rel=1e-10)
    batched = fisher_rao_norm(net, [(X[:10], y[:10]), (X[10:], y[10:])], loss_fn)
    assert batched == pytest.approx(value, rel=1e-12)


def test_liang_identity_for_bias_free_relu_nets_and_not_with_biases():
    net, data = relu_net(widths=(5, 4, 4)), class_data()
    g = fisher_rao_norm(net, data, CE)
    o = fisher_rao_norm(net, data, CE, method="output")
    assert o == pytest.approx(g, rel=1e-10)
    with pytest.raises(ValueError, match="method"):
        fisher_rao_norm(relu_net(bias=True), data, CE, method="output")
    # with biases the network is not homogeneous and the two forms differ
    biased = relu_net(bias=True)
    with torch.no_grad():
        for m in biased.modules():
            if isinstance(m, nn.Linear):
                m.bias.normal_()
    layers = sum(isinstance(m, nn.Linear) for m in biased.modules())
    X, y = data
    with torch.no_grad():
        out = biased(X).requires_grad_(True)
    with torch.enable_grad():
        (gf,) = torch.autograd.grad(CE(out, y), out)
    identity = float(((X.shape[0] * gf * out.detach()).sum(1) ** 2).mean() * layers ** 2)
    assert relative_change(identity, fisher_rao_norm(biased, data, CE)) > 1e-3


SYMMETRIES = {"alpha_scale": lambda net: (net, alpha_scaled(net, 3)),
              "neuron_scale": lambda net: (net, neuron_scaled(net, 3)),
              "weight_norm": lambda net: (weight_normed(net), radially_scaled(weight_normed(net), 3))}


@pytest.mark.parametrize("symmetry", sorted(SYMMETRIES))
def test_invariant_to_the_three_symmetries(symmetry):
    net, data = relu_net(bias=True), class_data()
    base, moved = SYMMETRIES[symmetry](net)
    assert same_function(base, moved, data[0])
    assert relative_change(fisher_rao_norm(base, data, CE), fisher_rao_norm(moved, data, CE)) < 1e-9


def test_not_invariant_to_a_non_symmetry():
    """Scaling one layer without compensating changes the function and the norm."""
    net, data = relu_net(), class_data()
    other = relu_net()
    with torch.no_grad():
        other[0].weight.mul_(3.0)
    assert relative_change(fisher_rao_norm(net, data, CE), fisher_rao_norm(other, data, CE)) > 1e-2


def test_leaves_the_model_unperturbed_and_checks_arguments():
    net, data = relu_net(bias=True), class_data()
    net.train()
    net[0].weight.grad = torch.ones_like(net[0].weight)
    snap = snapshot(net)
    with torch.no_grad():
        fisher_rao_norm(net, data)
    assert_unperturbed(net, snap)
    with pytest.raises(ValueError, match="method"):
        fisher_rao_norm(net, data, method="hessian")
    with pytest.raises(ValueError, match="loss_fn"):
        fisher_rao_norm(net, data, nn.CrossEntropyLoss(reduction="sum"))
