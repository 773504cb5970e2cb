"""Dense float64 oracles: the Hessian by ``torch.func.hessian``, independent of flatness's operator."""

import copy

import torch
from torch.func import functional_call, hessian

from flatness.params import ParameterLayout


def oracle_hessian(model, loss_fn, data):
    """The full-data Hessian of the mean loss in float64 by ``torch.func.hessian``."""
    X, y = data
    model64 = copy.deepcopy(model).double()
    layout = ParameterLayout(model64)
    flat = layout.to_vector(model64)

    def f(v):
        return loss_fn(functional_call(model64, layout.to_dict(v), (X.double(),)), y)

    return hessian(f)(flat)


def snapshot(model):
    """Everything a function must leave as it found it: parameter values and dtypes,
    requires_grad flags, gradients, every submodule's mode and the buffers."""
    return ({k: p.detach().clone() for k, p in model.named_parameters()},
            {k: p.requires_grad for k, p in model.named_parameters()},
            {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
            {k: m.training for k, m in model.named_modules()},
            {k: b.clone() for k, b in model.named_buffers()})


def assert_unperturbed(model, snap):
    """Assert that ``model`` is as :func:`snapshot` recorded it."""
    values, flags, grads, modes, buffers = snap
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), values[k]) and p.dtype == values[k].dtype
        assert p.requires_grad == flags[k]
        assert (p.grad is None) == (grads[k] is None)
        if p.grad is not None:
            assert torch.equal(p.grad, grads[k])
    assert {k: m.training for k, m in model.named_modules()} == modes
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())
