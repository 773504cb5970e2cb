"""Small rectified networks for the book's experiments.

Every model ends in a linear layer and uses only positively homogeneous activations
(ReLU by default), so that the α-scale symmetry of :mod:`flatness.symmetries` applies.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from flatness.paper_models import MAKERS as _PAPER_MAKERS  # the papers' own networks, by spec name

__all__ = ["ACTIVATIONS", "mlp", "cnn1d", "cnn2d", "mlenet", "two_layer", "INITIALIZATIONS",
           "from_spec", "num_parameters"]

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


#: Weight initializations of :func:`cnn2d` and :func:`mlenet` (``None`` keeps PyTorch's default,
#: ``U(±1/√fan_in)`` for weights and biases).
INITIALIZATIONS = ("he", "xavier", "normal", "uniform")


def _initialize(model: nn.Module, init, init_std) -> nn.Module:
    r"""Re-draw the weights of every convolution and linear layer of ``model`` in place.

    ``"he"``: :math:`\mathcal N(0, 2/\text{fan}_\text{in})` (He et al. 2015, the seed's choice);
    ``"xavier"``: :math:`\mathcal N(0, 2/(\text{fan}_\text{in}+\text{fan}_\text{out}))`;
    ``"normal"``: :math:`\mathcal N(0, \sigma^2)` with ``σ = init_std``; ``"uniform"``:
    :math:`U(-\sigma, \sigma)`. Biases start at zero for every scheme but ``None``.
    """
    if init is None:
        if init_std is not None:
            raise ValueError("init_std: only used with init='normal' or 'uniform'")
        return model
    if init not in INITIALIZATIONS:
        raise ValueError(f"init: expected None or one of {INITIALIZATIONS}, got {init!r}")
    if (init in ("normal", "uniform")) != (init_std is not None):
        raise ValueError(f"init_std: give a positive σ exactly with init='normal' or 'uniform' "
                         f"(init={init!r}, init_std={init_std!r})")
    if init_std is not None and not (isinstance(init_std, (int, float)) and init_std > 0):
        raise ValueError(f"init_std: expected a positive number, got {init_std!r}")
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
            if init == "he":
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_in) ** 0.5)
            elif init == "xavier":
                nn.init.normal_(m.weight, 0.0, (2.0 / (fan_in + fan_out)) ** 0.5)
            elif init == "normal":
                nn.init.normal_(m.weight, 0.0, float(init_std))
            else:
                nn.init.uniform_(m.weight, -float(init_std), float(init_std))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def cnn2d(channels: Sequence[int] = (8, 16), kernel_size: int = 3, image_size: int = 8,
          in_channels: int = 1, num_classes: int = 10, gap_head: bool = True, bias: bool = True,
          activation: str = "relu", init=None, init_std=None) -> nn.Sequential:
    """A small 2-D CNN in the style of Wu, Zhu & E's mLeNet (inputs ``(N, C, H, W)``).

    Convolutions with ``padding = kernel_size // 2`` — the first of stride 1, the others of
    stride 2 — each followed by the activation; then, with ``gap_head`` (the seed's mLeNet
    head), a 1×1 convolution to ``num_classes`` maps and global average pooling
    (``AdaptiveAvgPool2d(1)``, ``Flatten``), else ``Flatten`` and a linear layer.

    Args:
        channels: output channels of the convolutions.
        kernel_size: odd kernel size.
        image_size: side of the square input (needed for the linear head only).
        in_channels, num_classes: input channels and classes.
        gap_head: the 1×1-convolution + global-average-pooling head.
        bias, activation: as for :func:`mlp`.
        init, init_std: the weight initialization (:data:`INITIALIZATIONS`; ``None``: PyTorch's).

    Raises:
        ValueError: no channels, non-positive sizes, an even kernel, an unknown ``init``.

    >>> num_parameters(cnn2d())
    1418
    """
    if not channels or any((not isinstance(c, int)) or c <= 0 for c in channels):
        raise ValueError(f"channels: expected at least one positive integer, got {channels!r}")
    for name, v in (("kernel_size", kernel_size), ("image_size", image_size),
                    ("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd size, got {kernel_size}")
    layers, c_in, side, pad = [], in_channels, image_size, kernel_size // 2
    for i, c in enumerate(channels):
        stride = 1 if i == 0 else 2
        layers += [nn.Conv2d(c_in, c, kernel_size, stride=stride, padding=pad, bias=bias),
                   _activation(activation)]
        c_in, side = c, (side + 2 * pad - kernel_size) // stride + 1
    if gap_head:
        layers += [nn.Conv2d(c_in, num_classes, 1, bias=bias), nn.AdaptiveAvgPool2d(1),
                   nn.Flatten()]
    else:
        layers += [nn.Flatten(), nn.Linear(c_in * side * side, num_classes, bias=bias)]
    return _initialize(nn.Sequential(*layers), init, init_std)


def two_layer(input_dim: int = 64, width: int = 64, num_classes: int = 10, init=None,
              init_std=None) -> nn.Sequential:
    """The 2-layer ReLU network of Wu, Zhu & E's analysis, ``Linear → ReLU → Linear``
    (:func:`mlp` with one hidden layer), with a choice of initialization (see :func:`cnn2d`).

    >>> num_parameters(two_layer(64, 64, 10))
    4810
    """
    if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
        raise ValueError(f"width: expected a positive integer, got {width!r}")
    return _initialize(mlp(input_dim, (width,), num_classes), init, init_std)


def mlenet(image_size: int = 28, in_channels: int = 1, num_classes: int = 10,
           channels: Sequence[int] = (6, 16), kernel_size: int = 5, init=None,
           init_std=None) -> nn.Sequential:
    """A modified LeNet after Wu, Zhu & E (2017): LeNet's last fully connected layers replaced
    by a convolution and global average pooling.

    ``Conv(k×k) → ReLU → MaxPool(2)`` for each entry of ``channels`` (no padding, as LeNet),
    then a 1×1 convolution to ``num_classes`` maps and global average pooling. The seed gives
    3,781 parameters for its mLeNet on MNIST but not the layer sizes (lost in extraction); the
    defaults here (LeNet-5's 6 and 16 channels) give 2,742.

    Args:
        image_size: side of the square input (28 for MNIST); it must survive the convolutions.
        in_channels, num_classes, channels, kernel_size: the layer sizes.
        init, init_std: as for :func:`cnn2d`.

    >>> num_parameters(mlenet())
    2742
    """
    if not channels or any((not isinstance(c, int)) or c <= 0 for c in channels):
        raise ValueError(f"channels: expected at least one positive integer, got {channels!r}")
    layers, c_in, side = [], in_channels, image_size
    for c in channels:
        side = (side - kernel_size + 1) // 2
        if side < 1:
            raise ValueError(f"image_size: {image_size} is too small for {len(channels)} "
                             f"convolutions of size {kernel_size} with pooling")
        layers += [nn.Conv2d(c_in, c, kernel_size), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    layers += [nn.Conv2d(c_in, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return _initialize(nn.Sequential(*layers), init, init_std)


def from_spec(spec: dict) -> nn.Module:
    """Build a model from a JSON-able description such as ``{"name": "mlp", "widths": [100]}``."""
    spec = dict(spec)
    name = spec.pop("name", None)
    makers = {"mlp": mlp, "cnn1d": cnn1d, "cnn2d": cnn2d, "mlenet": mlenet, "two_layer": two_layer,
              **_PAPER_MAKERS}
    if name not in makers:
        raise ValueError(f"spec: 'name' must be one of {sorted(makers)}, got {name!r}")
    return makers[name](**spec)


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
