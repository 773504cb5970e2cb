"""Eigenvalues of (G + λ diag G)^{-1} H against an independent dense oracle, and invariances."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from flatness.metric_hessian import dense_ggn, fisher_hessian_eigenvalues
from flatness.operators import dense_hessian
from flatness.params import ParameterLayout
from invariance_helpers import (alpha_scaled, class_data, neuron_scaled, radially_scaled,
                                relative_change, relu_net, same_function, weight_normed)
from oracles import assert_unperturbed, oracle_hessian, snapshot

CE = nn.CrossEntropyLoss()


def oracle_ggn(model, loss_fn, data):
    """G = J^T (d^2 L / d f^2) J with the full output Hessian from torch.func.hessian."""
    X, y = data
    layout = ParameterLayout(model)
    theta = layout.to_vector(model)
    out = model(X).detach()
    J = jacrev(lambda v: functional_call(model, layout.to_dict(v), (X,)))(theta).reshape(-1, theta.numel())
    Hf = hessian(lambda o: loss_fn(o.reshape(out.shape), y))(out.reshape(-1))
    return J.T @ Hf @ J


def test_ggn_matches_the_oracle():
    net, data = relu_net(bias=True), class_data()
    assert torch.allclose(dense_ggn(net, CE, data), oracle_ggn(net, CE, data), atol=1e-12)


def test_eigenvalues_match_the_generalized_problem():
    net, data = relu_net(bias=True), class_data()
    H = oracle_hessian(net, CE, data).numpy()
    G = oracle_ggn(net, CE, data).numpy()
    keep = np.diag(G) > np.diag(G).max() * 1e-14
    Hk, Gk = H[np.ix_(keep, keep)], G[np.ix_(keep, keep)]
    lam = 0.01
    expected = np.sort(scipy.linalg.eigvals(Hk, Gk + lam * np.diag(np.diag(Gk))).real)[::-1][:3]
    got = fisher_hessian_eigenvalues(net, CE, data, k=3, damping=lam)
    np.testing.assert_allclose(got, expected, rtol=1e-7)


SYMMETRIES = {"alpha_scale": lambda net: (net, alpha_scaled(net, 6)),
              "neuron_scale": lambda net: (net, neuron_scaled(net, 6)),
              "weight_norm": lambda net: (weight_normed(net), radially_scaled(weight_normed(net), 6))}


@pytest.mark.parametrize("symmetry", sorted(SYMMETRIES))
def test_invariant_to_diagonal_symmetries_while_the_hessian_moves(symmetry):
    net, data = relu_net(bias=True), class_data()
    base, moved = SYMMETRIES[symmetry](net)
    assert same_function(base, moved, data[0])
    a = fisher_hessian_eigenvalues(base, CE, data, k=2, damping=0.01)
    b = fisher_hessian_eigenvalues(moved, CE, data, k=2, damping=0.01)
    assert relative_change(a[0], b[0]) < 1e-6 and relative_change(a[1], b[1]) < 1e-6
    h0 = np.linalg.eigvalsh(dense_hessian(base, CE, data).numpy())[-1]
    h1 = np.linalg.eigvalsh(dense_hessian(moved, CE, data).numpy())[-1]
    assert relative_change(h0, h1) > 1e-2


def test_identity_damping_would_not_be_invariant():
    """The reason for diag(G) damping: with lambda*I the spectrum moves under alpha-scale."""
    net, data = relu_net(bias=True), class_data()
    moved = alpha_scaled(net, 6)

    def top(model):
        H = oracle_hessian(model, CE, data).numpy()
        G = oracle_ggn(model, CE, data).numpy()
        return np.sort(scipy.linalg.eigvals(H, G + 0.01 * np.eye(len(G))).real)[-1]

    assert relative_change(top(net), top(moved)) > 1e-2


def test_unperturbed_and_bad_arguments():
    net, data = relu_net(bias=True), class_data()
    net.train()
    net[0].weight.grad = torch.ones_like(net[0].weight)
    snap = snapshot(net)
    fisher_hessian_eigenvalues(net, CE, data)
    assert_unperturbed(net, snap)
    for kw, name in [(dict(k=0), "k"), (dict(k=10 ** 6), "k"), (dict(damping=0.0), "damping"),
                     (dict(max_params=5), "max_params")]:
        with pytest.raises(ValueError, match=name):
            fisher_hessian_eigenvalues(net, CE, data, **kw)
