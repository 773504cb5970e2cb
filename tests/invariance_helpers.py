"""Tiny float64 networks and the three function-preserving symmetries, for the measure tests.

* :func:`alpha_scaled` — Dinh et al.'s α-scale with random factors log-uniform in [1/25, 25]
  (the last layer's factor completes the product to one);
* :func:`neuron_scaled` — per-neuron rescaling of ReLU units (incoming row × c_j, outgoing
  column ÷ c_j), factors log-uniform in [1/25, 25];
* :func:`weight_normed` / :func:`radially_scaled` — weight normalization w = g v/‖v‖ and the
  radial rescaling v_j → c_j v_j of its rows.
"""

import copy
import math

import numpy as np
import torch
from torch import nn

from flatness.symmetries import alpha_scale, weight_layers

LOW, HIGH = 1 / 25, 25.0


def relu_net(seed=0, d=3, widths=(5, 4), C=3, bias=False):
    torch.manual_seed(seed)
    layers, prev = [], d
    for w in widths:
        layers += [nn.Linear(prev, w, bias=bias), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, C, bias=bias))
    return nn.Sequential(*layers).double()


def class_data(seed=0, N=24, d=3, C=3):
    g = torch.Generator().manual_seed(seed + 100)
    X = torch.randn(N, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    return X, y


def _log_uniform(rng, n):
    return np.exp(rng.uniform(math.log(LOW), math.log(HIGH), n))


def alpha_scaled(net, seed=0):
    rng = np.random.default_rng(seed)
    K = len(weight_layers(net))
    a = list(_log_uniform(rng, K - 1))
    return alpha_scale(net, a + [float(1.0 / np.prod(a))], rtol=1e-9)


def neuron_scaled(net, seed=0):
    rng = np.random.default_rng(seed + 7)
    new = copy.deepcopy(net)
    layers = [m for _, m in weight_layers(new)]
    with torch.no_grad():
        for a, b in zip(layers[:-1], layers[1:]):
            c = torch.as_tensor(_log_uniform(rng, a.weight.shape[0]), dtype=a.weight.dtype)
            a.weight.mul_(c[:, None])
            if a.bias is not None:
                a.bias.mul_(c)
            b.weight.div_(c[None, :])
    return new


def weight_normed(net):
    from torch.nn.utils.parametrizations import weight_norm

    new = copy.deepcopy(net)
    for m in new.modules():
        if isinstance(m, nn.Linear):
            weight_norm(m, dim=0)
    return new


def radially_scaled(wn_net, seed=0):
    rng = np.random.default_rng(seed + 13)
    new = copy.deepcopy(wn_net)
    with torch.no_grad():
        for name, p in new.named_parameters():
            if name.endswith("parametrizations.weight.original1"):
                p.mul_(torch.as_tensor(_log_uniform(rng, p.shape[0]), dtype=p.dtype)[:, None])
    return new


def same_function(a, b, X):
    with torch.no_grad():
        return torch.allclose(a(X), b(X), rtol=1e-10, atol=1e-10)


def relative_change(before, after):
    return abs(after - before) / max(abs(before), 1e-300)
