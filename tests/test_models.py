"""Tests of the 2-D CNNs of flatness.models (cnn2d, mlenet)."""

import math

import pytest
import torch

from flatness import models


def test_cnn2d_sizes_by_formula():
    # conv(1→8, 3×3) + conv(8→16, 3×3) + 1×1 head to 10 maps
    assert models.num_parameters(models.cnn2d()) == (9 * 8 + 8) + (8 * 9 * 16 + 16) + (16 * 10 + 10)
    net = models.cnn2d(channels=(4, 6), gap_head=False, image_size=8)
    # 8×8 → 8×8 (stride 1) → 4×4 (stride 2): linear head 6·16 → 10
    assert models.num_parameters(net) == (9 * 4 + 4) + (4 * 9 * 6 + 6) + (6 * 16 * 10 + 10)
    assert net(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert models.cnn2d()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_mlenet_on_mnist_sized_images():
    net = models.mlenet()
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert models.num_parameters(net) == (25 * 6 + 6) + (6 * 25 * 16 + 16) + (16 * 10 + 10)


def test_from_spec_builds_the_2d_cnns():
    torch.manual_seed(0)
    a = models.from_spec({"name": "cnn2d", "channels": [8, 16], "init": "he"})
    torch.manual_seed(0)
    b = models.cnn2d(channels=(8, 16), init="he")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert isinstance(models.from_spec({"name": "mlenet"}), torch.nn.Sequential)


@pytest.mark.parametrize("init, std", [("he", lambda fi, fo: math.sqrt(2 / fi)),
                                       ("xavier", lambda fi, fo: math.sqrt(2 / (fi + fo))),
                                       ("normal", lambda fi, fo: 0.05)])
def test_initializations_have_their_variance(init, std):
    torch.manual_seed(1)
    net = models.cnn2d(channels=(32, 64), init=init, init_std=0.05 if init == "normal" else None)
    w = net[2].weight.detach().double()  # 64 × 32 × 3 × 3
    fan_in, fan_out = 32 * 9, 64 * 9
    s2, n = std(fan_in, fan_out) ** 2, w.numel()
    # sample variance of n Gaussians: sd of the estimate s²·sqrt(2/n)
    assert abs(float((w ** 2).mean()) - s2) < 5 * s2 * math.sqrt(2 / n)
    assert float(net[2].bias.abs().max()) == 0.0


def test_uniform_initialization_bounds():
    torch.manual_seed(2)
    net = models.cnn2d(init="uniform", init_std=0.1)
    assert all(float(m.weight.abs().max()) <= 0.1 for m in net if hasattr(m, "weight"))


@pytest.mark.parametrize("kwargs, match", [({"channels": ()}, "channels"),
                                           ({"kernel_size": 4}, "kernel_size"),
                                           ({"init": "orthogonal"}, "init"),
                                           ({"init": "normal"}, "init_std"),
                                           ({"init": "he", "init_std": 0.1}, "init_std")])
def test_cnn2d_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.cnn2d(**kwargs)


def test_mlenet_too_small_an_image():
    with pytest.raises(ValueError, match="image_size"):
        models.mlenet(image_size=8)


def test_two_layer_is_the_one_hidden_layer_mlp():
    torch.manual_seed(3)
    a = models.two_layer(5, 7, 3)
    torch.manual_seed(3)
    b = models.mlp(5, (7,), 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    he = models.from_spec({"name": "two_layer", "input_dim": 5, "width": 7, "init": "he"})
    assert float(he[0].bias.abs().max()) == 0.0
    with pytest.raises(ValueError, match="width"):
        models.two_layer(5, 0, 3)
