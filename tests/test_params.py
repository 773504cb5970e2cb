import numpy as np
import pytest
import torch
from oracles import assert_unperturbed, snapshot
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flatness.params import (
    ParameterLayout,
    flat_parameters,
    loss_at,
    mean_loss,
    parameter_slices,
    unflatten_parameters,
)


def _frozen_mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    net[0].bias.requires_grad_(False)
    return net


def test_layout_follows_named_parameters_and_skips_frozen():
    net = _frozen_mlp()
    layout = ParameterLayout(net)
    assert layout.names == ("0.weight", "2.weight", "2.bias")
    assert layout.shapes == ((4, 3), (2, 4), (2,))
    assert layout.slices == {"0.weight": slice(0, 12), "2.weight": slice(12, 20),
                             "2.bias": slice(20, 22)}
    assert layout.numel == 22 and layout.dtype == torch.float32
    v = layout.to_vector(net)
    expected = torch.cat([net[0].weight.reshape(-1), net[2].weight.reshape(-1), net[2].bias])
    assert torch.equal(v, expected) and not v.requires_grad
    v[0] = 100.0  # a copy, never a view of the parameters
    assert net[0].weight[0, 0] != 100.0
    # the thin public functions are the layout
    assert torch.equal(flat_parameters(net), layout.to_vector(net))
    assert parameter_slices(net) == layout.slices
    u = torch.arange(22.0)
    assert all(torch.equal(a, b) for a, b in zip(unflatten_parameters(net, u).values(),
                                                 layout.to_dict(u).values()))


def test_to_dict_is_views_and_round_trips():
    net = _frozen_mlp()
    layout = ParameterLayout(net)
    v = torch.randn(22, requires_grad=True)
    d = layout.to_dict(v)
    assert {k: tuple(t.shape) for k, t in d.items()} == dict(zip(layout.names, layout.shapes))
    assert torch.equal(layout.to_vector(d), v.detach())
    weights = torch.arange(22.0)
    sum((t * layout.to_dict(weights)[k]).sum() for k, t in d.items()).backward()
    assert torch.equal(v.grad, weights)  # gradients flow back to the vector
    assert d["2.bias"].data_ptr() == v[20:].data_ptr()


@pytest.mark.parametrize("source,match", [
    ({"0.weight": torch.zeros(4, 3), "2.weight": torch.zeros(2, 4)}, "missing"),
    ({"0.weight": torch.zeros(4, 3), "2.weight": torch.zeros(4, 2), "2.bias": torch.zeros(2)},
     "shape"),
])
def test_to_vector_refuses_other_layouts(source, match):
    with pytest.raises(ValueError, match=f"directions: .*{match}"):
        ParameterLayout(_frozen_mlp()).to_vector(source, "directions")


@pytest.mark.parametrize("vector", [torch.zeros(21), torch.zeros(2, 11), np.zeros(22)])
def test_to_dict_refuses_wrong_vectors(vector):
    with pytest.raises(ValueError, match="vector: expected a flat tensor of 22"):
        ParameterLayout(_frozen_mlp()).to_dict(vector)


def test_layout_needs_a_module_with_trainable_parameters():
    with pytest.raises(TypeError, match="model"):
        ParameterLayout(lambda x: x)
    with pytest.raises(ValueError, match="model"):
        ParameterLayout(nn.ReLU())


def test_loss_at_least_squares_closed_form():
    # L(w) = |Xw − t|²/N, ∇L = 2Xᵀ(Xw − t)/N, over uneven batches; the model (float32) is
    # evaluated at a float64 vector, so the inputs are cast and the result is float64-exact.
    g = torch.Generator().manual_seed(0)
    X, t = torch.randn(23, 3, generator=g), torch.randn(23, 1, generator=g)
    net = nn.Linear(3, 1, bias=False)
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    Xd, td = X.double().numpy(), t.double().numpy()[:, 0]
    r = Xd @ w.numpy() - td
    loader = DataLoader(TensorDataset(X, t), batch_size=5)
    value, grad = loss_at(net, nn.MSELoss(), loader, w, grad=True)
    assert value == pytest.approx(float(np.mean(r ** 2)), rel=1e-13)
    np.testing.assert_allclose(grad.numpy(), 2 * Xd.T @ r / 23, rtol=1e-12)
    assert grad.dtype == torch.float64 and not grad.requires_grad
    assert loss_at(net, nn.MSELoss(), (X, t), w) == pytest.approx(value, rel=1e-13)
    # second derivatives through mean_loss: the Hessian 2XᵀX/N
    v = w.clone().requires_grad_(True)
    (gv,) = torch.autograd.grad(mean_loss(net, nn.MSELoss(), loader, v), v, create_graph=True)
    H = torch.stack([torch.autograd.grad(gv[i], v, retain_graph=True)[0] for i in range(3)])
    np.testing.assert_allclose(H.numpy(), 2 * Xd.T @ Xd / 23, rtol=1e-12)


def test_loss_at_uses_buffers_and_frozen_parameters_in_the_vector_dtype():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2.0)
    net[0].bias.requires_grad_(False)
    net.eval()
    X, y = torch.randn(9, 3), torch.randint(0, 2, (9,))
    vector = ParameterLayout(net).to_vector(net).double() * 1.1
    net64 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    net64.load_state_dict(net.state_dict())
    net64.eval()
    with torch.no_grad():
        for k, piece in ParameterLayout(net).to_dict(vector).items():
            net64.get_parameter(k).copy_(piece)
        expected = float(nn.CrossEntropyLoss()(net64(X.double()), y))
    assert loss_at(net, nn.CrossEntropyLoss(), (X, y), vector) == pytest.approx(expected, rel=1e-14)


def test_loss_at_leaves_the_model_unperturbed_and_works_under_no_grad():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    net[3].bias.requires_grad_(False)
    net[0].weight.grad = torch.full_like(net[0].weight, 3.0)
    net.train()
    X, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    snap = snapshot(net)
    vector = ParameterLayout(net).to_vector(net) + 0.1
    with pytest.raises(ValueError, match="train mode"):
        loss_at(net, nn.CrossEntropyLoss(), (X, y), vector)
    free = loss_at(net, nn.CrossEntropyLoss(), (X, y), vector, grad=True, eval_mode=True)
    with torch.no_grad():
        inside = loss_at(net, nn.CrossEntropyLoss(), (X, y), vector, grad=True, eval_mode=True)
    assert free[0] == inside[0] and torch.equal(free[1], inside[1])
    assert_unperturbed(net, snap)


def test_loss_at_checks_every_batch():
    net = nn.Linear(3, 2)
    X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    y[9] = 5
    vector = ParameterLayout(net).to_vector(net)
    with pytest.raises(ValueError, match="labels"):
        loss_at(net, nn.CrossEntropyLoss(), DataLoader(TensorDataset(X, y), batch_size=4), vector)
    with pytest.raises(ValueError, match="vector"):
        loss_at(net, nn.CrossEntropyLoss(), (X, y), vector[:-1])


def test_layout_consumers_work_under_no_grad():
    # the exact reparametrized Hessian builds a double-backward graph: it must enable grad itself
    from flatness.params import flat_parameters as flat
    from flatness.reparametrize import WeightNorm, reparametrized_operator

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2))
    X, y = torch.randn(12, 3), torch.randint(0, 2, (12,))
    wn = WeightNorm(net)
    eta = wn.from_weights(flat(net).double(), radius=2.0)
    ones = np.ones(wn.dim)
    A, _ = reparametrized_operator(net, nn.CrossEntropyLoss(), (X, y), wn, eta, exact=True)
    expected = A @ ones
    with torch.no_grad():
        A, _ = reparametrized_operator(net, nn.CrossEntropyLoss(), (X, y), wn, eta, exact=True)
        np.testing.assert_array_equal(A @ ones, expected)
