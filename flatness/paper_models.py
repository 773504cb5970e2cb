"""The papers' own networks, for runs at paper scale on real data (MNIST, CIFAR-10).

The book's chapters run on small networks (:mod:`flatness.models`); a reader who has the real
files and a GPU can point a chapter at the papers' architectures instead, through the same model
specs (``{"name": "keskar_f1"}``) and so through the same training cache.

What each is, and how sure we are of it:

* :func:`keskar_f1` — Keskar et al. (2017), network F1 (their Table 1): a fully connected MNIST
  network, 784 inputs, 5 hidden layers of 512 units, each followed by batch normalization and
  ReLU, and a 10-way linear output. The layer count and width are the paper's; the order
  ``Linear → BatchNorm → ReLU`` follows the usual practice and is reconstructed.
* :func:`keskar_c1` — a network *like* Keskar et al.'s C1 (their "shallow convolutional network"
  for CIFAR-10, AlexNet-like): two 5×5 convolutions with 64 channels, each followed by ReLU,
  3×3 max pooling with stride 2 and batch normalization, then fully connected layers of 384 and
  192 units and a 10-way output. The widths are those of the AlexNet-style CIFAR-10 network the
  paper builds on; details the paper's text does not fix (padding, the order of pooling and
  normalization, dropout) are our choices, so its numbers are comparable in kind, not digit for
  digit.
* :func:`resnet_cifar` — a CIFAR ResNet (He et al. 2016, §4.2: three stages of ``n`` basic blocks
  with 16, 32 and 64 channels, depth ``6n + 2``; depth 20 has 0.27 M parameters), the family of
  Yao et al.'s (2018) CIFAR-10 table. ``width`` scales the channels (``width=4`` trains on a CPU).

Every network ends in a linear layer. Batch normalization makes the loss of a batch depend on the
other samples in it, so the library's curvature functions refuse a model in train mode: call
``model.eval()`` (running statistics) first, as Yao et al. measure, or pass ``eval_mode=True``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["keskar_f1", "keskar_c1", "resnet_cifar", "MAKERS"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def keskar_f1(input_dim: int = 784, width: int = 512, depth: int = 5, num_classes: int = 10,
              batch_norm: bool = True) -> nn.Sequential:
    """Keskar et al.'s F1: ``depth`` hidden layers ``Linear → BatchNorm1d → ReLU`` and a linear output.

    Args:
        input_dim: flattened input size (784 for MNIST's 28×28 images).
        width: hidden width (512 in the paper).
        depth: number of hidden layers (5 in the paper).
        num_classes: outputs.
        batch_norm: batch normalization after each hidden linear layer (the paper's F1 has it).

    Returns:
        The network; inputs of shape ``(N, input_dim)``.

    Raises:
        ValueError: a size that is not a positive integer.

    >>> from flatness.models import num_parameters
    >>> num_parameters(keskar_f1())  # 784·512+512 + 4·(512·512+512) + 5·2·512 + 512·10+10
    1462794
    """
    for name, v in (("input_dim", input_dim), ("width", width), ("depth", depth),
                    ("num_classes", num_classes)):
        _positive_int(name, v)
    layers, d = [], input_dim
    for _ in range(depth):
        layers.append(nn.Linear(d, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        d = width
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def keskar_c1(in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
              channels: int = 64, hidden=(384, 192)) -> nn.Sequential:
    """A C1-like shallow convolutional network for CIFAR-10 (see the module's note on what is
    reconstructed).

    Two blocks ``Conv2d(5×5, padding 2) → ReLU → MaxPool2d(3, stride 2, padding 1) →
    BatchNorm2d``, then ``Linear → ReLU`` layers of widths ``hidden`` and a linear output.

    Args:
        in_channels: 3 for CIFAR-10, 1 for MNIST.
        image_size: side of the square input images (32 for CIFAR-10).
        num_classes: outputs.
        channels: channels of both convolutions (64).
        hidden: widths of the fully connected layers ((384, 192)).

    Returns:
        The network; inputs of shape ``(N, in_channels, image_size, image_size)``.

    Raises:
        ValueError: a size that is not a positive integer.

    >>> from flatness.models import num_parameters
    >>> num_parameters(keskar_c1())  # (3·25+1)·64 + (64·25+1)·64 + 2·128 + (4096+1)·384 + 385·192 + 193·10
    1756682
    """
    for name, v in (("in_channels", in_channels), ("image_size", image_size),
                    ("num_classes", num_classes), ("channels", channels)):
        _positive_int(name, v)
    for w in hidden:
        _positive_int("hidden", w)
    layers, c, s = [], in_channels, image_size
    for _ in range(2):
        layers += [nn.Conv2d(c, channels, 5, padding=2), nn.ReLU(),
                   nn.MaxPool2d(3, stride=2, padding=1), nn.BatchNorm2d(channels)]
        c, s = channels, (s - 1) // 2 + 1
    layers.append(nn.Flatten())
    d = c * s * s
    for w in hidden:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch normalization and an identity (or 1×1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def resnet_cifar(depth: int = 20, width: int = 16, in_channels: int = 3,
                 num_classes: int = 10) -> nn.Sequential:
    """A CIFAR ResNet of depth ``6n + 2`` (He et al. 2016): a 3×3 stem, three stages of ``n``
    basic blocks with ``width``, ``2·width``, ``4·width`` channels (the last two start with
    stride 2), global average pooling and a linear output.

    Args:
        depth: 20, 32, 44, 56, … (``(depth − 2)`` divisible by 6).
        width: channels of the first stage (16 in the paper).
        in_channels: 3 for CIFAR-10.
        num_classes: outputs.

    Returns:
        The network; inputs of shape ``(N, in_channels, H, W)``.

    Raises:
        ValueError: a depth not of the form ``6n + 2`` or a size that is not a positive integer.

    >>> from flatness.models import num_parameters
    >>> num_parameters(resnet_cifar(20))
    272474
    """
    for name, v in (("depth", depth), ("width", width), ("in_channels", in_channels),
                    ("num_classes", num_classes)):
        _positive_int(name, v)
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth: expected 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    n = (depth - 2) // 6
    layers = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
              nn.ReLU()]
    c = width
    for stage in range(3):
        c_out = width * 2 ** stage
        for block in range(n):
            layers.append(_BasicBlock(c, c_out, 2 if stage and not block else 1))
            c = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


#: Model-spec names of the papers' networks (merged into :func:`flatness.models.from_spec`).
MAKERS = {"keskar_f1": keskar_f1, "keskar_c1": keskar_c1, "resnet_cifar": resnet_cifar}
