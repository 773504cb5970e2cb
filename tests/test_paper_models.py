"""The papers' networks (flatness.paper_models): their sizes by formula, their specs, and the
library's curvature on them (batch normalization, a residual network) against dense oracles."""

import pytest
import torch
from torch import nn

from flatness import models, paper_models
from flatness.curvature import top_eigenvalues
from flatness.operators import dense_hessian
from tests.oracles import assert_unperturbed, snapshot


def test_f1_layers_follow_the_paper():
    net = paper_models.keskar_f1()
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == \
        [(784, 512)] + [(512, 512)] * 4 + [(512, 10)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net) == 5
    assert isinstance(net[-1], nn.Linear)
    assert net(torch.randn(3, 784)).shape == (3, 10)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in paper_models.keskar_f1(batch_norm=False))


@pytest.mark.parametrize("size,channels", [(32, 3), (28, 1)])
def test_c1_shapes(size, channels):
    net = paper_models.keskar_c1(in_channels=channels, image_size=size)
    assert net(torch.randn(2, channels, size, size)).shape == (2, 10)


@pytest.mark.parametrize("depth", [8, 14, 20])
def test_resnet_depth_counts_weighted_layers(depth):
    net = paper_models.resnet_cifar(depth, width=4)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    # depth = 3×3 convolutions (stem + 2 per block) + the linear output
    assert len(convs) + 1 == depth
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_specs_build_the_papers_networks():
    for name in ("keskar_f1", "keskar_c1", "resnet_cifar"):
        built = models.from_spec({"name": name})
        direct = paper_models.MAKERS[name]()
        assert models.num_parameters(built) == models.num_parameters(direct)
    assert models.num_parameters(models.from_spec({"name": "resnet_cifar", "depth": 8, "width": 2})) == \
        models.num_parameters(paper_models.resnet_cifar(8, width=2))


@pytest.mark.parametrize("call,arg", [
    (lambda: paper_models.keskar_f1(width=0), "width"),
    (lambda: paper_models.keskar_f1(depth=2.0), "depth"),
    (lambda: paper_models.keskar_c1(hidden=(384, -1)), "hidden"),
    (lambda: paper_models.resnet_cifar(21), "depth"),
    (lambda: paper_models.resnet_cifar(20, width=True), "width"),
])
def test_bad_sizes_name_the_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def test_lambda_max_of_a_tiny_resnet_matches_the_dense_hessian():
    torch.manual_seed(0)
    net = paper_models.resnet_cifar(8, width=2, in_channels=1, num_classes=3)
    X, y = torch.randn(12, 1, 6, 6), torch.randint(0, 3, (12,))
    net.train()
    net(X)  # running statistics away from their initial values
    with pytest.raises(ValueError, match="train mode"):
        top_eigenvalues(net, nn.CrossEntropyLoss(), (X, y))
    net.eval()
    before = snapshot(net)
    H = dense_hessian(net, nn.CrossEntropyLoss(), (X, y))
    exact = torch.linalg.eigvalsh(H)[-1].item()
    got = top_eigenvalues(net, nn.CrossEntropyLoss(), (X, y), k=1, tol=1e-8).eigenvalues[0]
    assert got == pytest.approx(exact, rel=1e-5)
    assert_unperturbed(net, before)
