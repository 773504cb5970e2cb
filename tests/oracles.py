"""Dense float64 oracles: the Hessian by ``torch.func.hessian``, independent of flatness's operator."""

import copy

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
