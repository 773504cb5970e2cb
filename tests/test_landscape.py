import numpy as np
import pytest
import torch

from flatness import landscape
from flatness.models import cnn1d, mlp
from flatness.training import evaluate


def test_interpolation_endpoints_and_model_untouched():
    torch.manual_seed(0)
    a, b = mlp(5, (4,), 3), mlp(5, (4,), 3)
    X, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    before = [p.detach().clone() for p in a.parameters()]
    res = landscape.interpolate(a, b, [0.0, 0.5, 1.0], (X, y))
    assert res["loss"][0] == pytest.approx(evaluate(a, (X, y))[0], rel=1e-6)
    assert res["loss"][2] == pytest.approx(evaluate(b, (X, y))[0], rel=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(before, a.parameters()))


def test_interpolation_needs_same_architecture():
    with pytest.raises(ValueError, match="same architecture"):
        landscape.interpolate(mlp(5, (4,), 3), mlp(5, (6,), 3), [0.0],
                              (torch.randn(2, 5), torch.zeros(2, dtype=torch.long)))


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
