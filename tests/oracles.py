"""Dense float64 oracles computed independently of flatlib (torch.func.hessian)."""

import torch
from torch.func import functional_call, hessian


def oracle_hessian(model, loss_fn, data):
    """The full-data Hessian of the mean loss in float64 by ``torch.func.hessian``."""
    X, y = data
    net = {k: v.detach().double() for k, v in model.named_parameters()}
    names = list(net)
    shapes = [net[k].shape for k in names]
    flat = torch.cat([net[k].reshape(-1) for k in names])
    model64 = __import__("copy").deepcopy(model).double()

    def f(v):
        params, offset = {}, 0
        for k, s in zip(names, shapes):
            params[k] = v[offset:offset + s.numel()].view(s)
            offset += s.numel()
        return loss_fn(functional_call(model64, params, (X.double(),)), y)

    return hessian(f)(flat)
