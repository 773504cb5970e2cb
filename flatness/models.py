"""Small rectified networks for the book's experiments.

Every model ends in a linear layer and uses only positively homogeneous activations
(ReLU by default), so that the α-scale symmetry of :mod:`flatness.symmetries` applies.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from flatness.paper_models import MAKERS as _PAPER_MAKERS  # the papers' own networks, by spec name

__all__ = ["ACTIVATIONS", "mlp", "cnn1d", "from_spec", "num_parameters"]

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh,
               "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def mlp(input_dim: int = 40, widths: Sequence[int] = (100, 100), num_classes: int = 10,
        bias: bool = True, activation: str = "relu") -> nn.Sequential:
    """A fully connected network ``Linear → act → … → Linear``.

    Args:
        input_dim: number of input features (40 for MNIST-1D, 64 for digits).
        widths: hidden widths; ``()`` gives a linear model.
        num_classes: outputs of the last (linear) layer.
        bias: give every linear layer a bias.
        activation: ``"relu"`` (default), ``"leaky_relu"``, or a non-homogeneous one
            (``"tanh"``, ``"sigmoid"``, ``"gelu"``) for counterexamples.

    >>> net = mlp(40, (100, 100), 10)
    >>> num_parameters(net)
    15210
    """
    for name, v in (("input_dim", input_dim), ("num_classes", num_classes)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if any((not isinstance(w, int)) or w <= 0 for w in widths):
        raise ValueError(f"widths: expected positive integers, got {list(widths)}")
    layers, d = [], input_dim
    for w in widths:
        layers += [nn.Linear(d, w, bias=bias), _activation(activation)]
        d = w
    layers.append(nn.Linear(d, num_classes, bias=bias))
    return nn.Sequential(*layers)


def cnn1d(channels: Sequence[int] = (16, 16), kernel_size: int = 5, length: int = 40,
          num_classes: int = 10, bias: bool = True, activation: str = "relu") -> nn.Sequential:
    """A small 1-D CNN for MNIST-1D (inputs of shape ``(N, 1, length)``).

    Two strided convolutions (stride 2) with ReLU, then a linear classifier; about
    four thousand parameters with the defaults.

    >>> num_parameters(cnn1d())
    3002
    """
    if not channels:
        raise ValueError("channels: expected at least one convolution")
    layers, c_in, L = [], 1, length
    for c in channels:
        layers += [nn.Conv1d(c_in, c, kernel_size, stride=2, padding=kernel_size // 2, bias=bias),
                   _activation(activation)]
        c_in, L = c, (L + 2 * (kernel_size // 2) - kernel_size) // 2 + 1
    layers += [nn.Flatten(), nn.Linear(c_in * L, num_classes, bias=bias)]
    return nn.Sequential(*layers)


def from_spec(spec: dict) -> nn.Module:
    """Build a model from a JSON-able description such as ``{"name": "mlp", "widths": [100]}``."""
    spec = dict(spec)
    name = spec.pop("name", None)
    makers = {"mlp": mlp, "cnn1d": cnn1d, **_PAPER_MAKERS}
    if name not in makers:
        raise ValueError(f"spec: 'name' must be one of {sorted(makers)}, got {name!r}")
    return makers[name](**spec)


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
