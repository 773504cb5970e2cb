r"""The flat parameter vector of a network: one layout, and the loss at a point of it.

Every estimator in this library works with the trainable parameters of a model as one vector
:math:`\theta \in \mathbb{R}^n`: the Hessian is an :math:`n \times n` operator on it, Keskar's
sharpness box lives in it, reparametrizations map it. :class:`ParameterLayout` fixes how the
named parameter tensors are laid out in that vector — in ``model.named_parameters()`` order,
trainable parameters only (``requires_grad``), each one flattened in row-major order — and
converts in both directions:

* :meth:`ParameterLayout.to_vector` concatenates a model's (or a dict's) tensors into
  :math:`\theta`;
* :meth:`ParameterLayout.to_dict` splits a vector back into named tensors (views, so gradients
  flow back to the vector) for ``torch.func.functional_call``;
* :attr:`ParameterLayout.slices` says where each tensor lies.

:func:`loss_at` evaluates the full-data mean loss at a vector,

.. math:: L(\theta) = \sum_b \frac{n_b}{N}\,\bar\ell_b(\theta), \qquad N = \sum_b n_b,

with :math:`\bar\ell_b` the mean loss of batch :math:`b` (of :math:`n_b` samples), and
optionally its gradient :math:`\nabla L(\theta)`, functionally: the model's own parameters,
gradients, ``requires_grad`` flags and modes are never touched. :func:`mean_loss` is the same
sum as a differentiable tensor, for higher derivatives.

:func:`flat_parameters`, :func:`unflatten_parameters` and :func:`parameter_slices` are the same
operations as plain functions of a model; :func:`with_flat_parameters` is a copy of a model with
its parameters set to a vector.
"""

from __future__ import annotations

import copy
from typing import Dict, Iterator, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .checks import check_labels, evaluation, materialize, num_samples, quiet_torch_func

__all__ = ["ParameterLayout", "loss_at", "mean_loss", "parameter_slices", "flat_parameters",
           "unflatten_parameters", "with_flat_parameters"]


class ParameterLayout:
    """Where each trainable parameter of a model lies in the flat parameter vector.

    Built from ``model.named_parameters()`` (in that order, trainable parameters only); it
    holds no reference to the model, only names, shapes, dtype and device.

    Args:
        model: the network.

    Attributes:
        names: the parameter names, in order.
        shapes: their shapes.
        slices: ``{name: slice}`` into the flat vector.
        numel: the length ``n`` of the flat vector.
        dtype, device: those of the model's first trainable parameter.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: the model has no trainable parameters.

    >>> layout = ParameterLayout(torch.nn.Linear(2, 3))
    >>> layout.names, layout.numel, layout.slices["bias"]
    (('weight', 'bias'), 9, slice(6, 9, None))
    >>> {k: tuple(v.shape) for k, v in layout.to_dict(torch.arange(9.)).items()}
    {'weight': (3, 2), 'bias': (3,)}
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model: it has no parameters that require gradients")
        self.names: Tuple[str, ...] = tuple(k for k, _ in named)
        self.shapes: Tuple[torch.Size, ...] = tuple(p.shape for _, p in named)
        self.slices: Dict[str, slice] = {}
        offset = 0
        for k, p in named:
            self.slices[k] = slice(offset, offset + p.numel())
            offset += p.numel()
        self.numel: int = offset
        self.dtype: torch.dtype = named[0][1].dtype
        self.device: torch.device = named[0][1].device

    def __repr__(self) -> str:
        return f"ParameterLayout({len(self.names)} tensors, numel={self.numel})"

    def to_vector(self, source: Union[nn.Module, Mapping[str, Tensor]],
                  name: str = "source") -> Tensor:
        """The flat vector of ``source``: a model of this layout, or a dict of tensors keyed
        and shaped like its trainable parameters (extra keys are ignored).

        The result is detached and newly allocated (never a view of the parameters); its
        dtype and device are those of the tensors.

        Args:
            source: a model or a ``{name: tensor}`` mapping.
            name: the argument name used in error messages.

        Raises:
            ValueError: a parameter is missing or has another shape.
        """
        if isinstance(source, nn.Module):
            tensors = dict(source.named_parameters())
        elif isinstance(source, Mapping):
            tensors = source
        else:
            raise TypeError(f"{name}: expected a torch.nn.Module or a dict of tensors keyed like "
                            f"the model's parameters, got {type(source).__name__}")
        missing = [k for k in self.names if k not in tensors]
        if missing:
            raise ValueError(f"{name}: missing parameters {missing}; expected the trainable "
                             f"parameters {list(self.names)}")
        for k, shape in zip(self.names, self.shapes):
            t = tensors[k]
            if not isinstance(t, Tensor) or t.shape != shape:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name}: {k!r} has shape {got}; expected {tuple(shape)}")
        return torch.cat([tensors[k].detach().reshape(-1) for k in self.names])

    def to_dict(self, vector: Tensor, name: str = "vector") -> Dict[str, Tensor]:
        """Split a flat vector into tensors shaped like the parameters, keyed by name.

        The pieces are views of ``vector``, so gradients flow back to it.

        Raises:
            ValueError: ``vector`` is not a flat tensor of :attr:`numel` entries.
        """
        self.check_vector(vector, name)
        return {k: vector[s].reshape(shape)
                for (k, s), shape in zip(self.slices.items(), self.shapes)}

    def check_vector(self, vector, name: str = "vector") -> None:
        """Raise a ``ValueError`` unless ``vector`` is a flat tensor of :attr:`numel` entries."""
        if not isinstance(vector, Tensor) or vector.ndim != 1 or vector.numel() != self.numel:
            got = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
            raise ValueError(f"{name}: expected a flat tensor of {self.numel} entries (the "
                             f"model's trainable parameters), got {got}")


def _fixed_tensors(model: nn.Module, layout: ParameterLayout, like: Tensor) -> Dict[str, Tensor]:
    """The frozen parameters and the buffers, detached, floating ones cast to ``like``'s dtype."""
    trainable = set(layout.names)
    fixed = {k: p for k, p in model.named_parameters() if k not in trainable}
    fixed.update(dict(model.named_buffers()))
    return {k: (v.detach().to(device=like.device, dtype=like.dtype) if v.is_floating_point()
                else v.detach().to(like.device)) for k, v in fixed.items()}


def _weighted_batch_losses(model: nn.Module, loss_fn, batches, vector: Tensor,
                           layout: ParameterLayout, check: bool = True) -> Iterator[Tensor]:
    """Yield :math:`(n_b/N)\\,\\bar\\ell_b(\\theta)` for every batch (graph kept as grad mode says)."""
    N = num_samples(batches)
    fixed = _fixed_tensors(model, layout, vector)
    for X, y in batches:
        point = {**fixed, **layout.to_dict(vector)}  # fresh views: each batch its own graph
        X = X.to(device=vector.device, dtype=vector.dtype) if X.is_floating_point() \
            else X.to(vector.device)
        y = y.to(device=vector.device, dtype=vector.dtype) if y.is_floating_point() \
            else y.to(vector.device)
        with quiet_torch_func():
            out = functional_call(model, point, (X,))
        if check:
            check_labels(out, y, loss_fn)
        yield loss_fn(out, y) * (X.shape[0] / N)


def _prepare(model, data, vector, layout):
    layout = ParameterLayout(model) if layout is None else layout
    layout.check_vector(vector)
    return layout, materialize(data), vector.to(layout.device)


def mean_loss(model: nn.Module, loss_fn, data, vector: Tensor, *,
              layout: Optional[ParameterLayout] = None, eval_mode: Optional[bool] = None,
              check: bool = True) -> Tensor:
    r"""The full-data mean loss :math:`L(\theta)` at ``vector`` as a differentiable tensor.

    Like :func:`loss_at`, but the result keeps its autograd graph back to ``vector`` (when
    ``vector`` requires gradients and grad mode is on), over all batches at once, so that it
    can be differentiated twice (``create_graph=True``).

    Args:
        model, loss_fn, data, vector, layout, eval_mode, check: as for :func:`loss_at`.

    Returns:
        A 0-d tensor of ``vector``'s dtype.
    """
    layout, batches, vector = _prepare(model, data, vector, layout)
    with evaluation(model, eval_mode):
        total = None
        for term in _weighted_batch_losses(model, loss_fn, batches, vector, layout, check):
            total = term if total is None else total + term
    return total


def loss_at(model: nn.Module, loss_fn, data, vector: Tensor, grad: bool = False, *,
            layout: Optional[ParameterLayout] = None, eval_mode: Optional[bool] = None,
            check: bool = True):
    r"""The full-data mean loss of ``model`` with its trainable parameters set to ``vector``.

    .. math:: L(\theta) = \sum_b \frac{n_b}{N}\,\bar\ell_b(\theta)

    computed with ``torch.func.functional_call`` in ``vector``'s dtype on the model's device
    (floating inputs, float targets, frozen parameters and buffers are cast to that dtype), in
    eval mode; the model is not changed. The gradient, if asked for, is accumulated batch by
    batch, so memory does not grow with the number of batches. Gradients are enabled
    internally, so this works inside ``torch.no_grad()``.

    Args:
        model: the network; its layout and buffers are used, its parameter values are not.
        loss_fn: a mean-reduced loss ``loss_fn(output, target)``.
        data: an ``(X, y)`` pair, a DataLoader, or a list of ``(X, y)`` tuples.
        vector: the flat parameter vector :math:`\theta` (:class:`ParameterLayout` order).
        grad: also return :math:`\nabla L(\theta)`.
        layout: the model's :class:`ParameterLayout` (built if not given).
        eval_mode: see :func:`flatness.checks.evaluation`.
        check: check every batch's targets against the outputs
            (:func:`flatness.checks.check_labels`); repeated calls on the same data may skip it.

    Returns:
        The loss as a float or, with ``grad=True``, ``(loss, gradient)`` with the gradient a
        detached vector like ``vector`` (on the model's device).

    Raises:
        ValueError: a wrongly shaped ``vector``, empty data, labels out of range, BatchNorm or
            Dropout in train mode.

    >>> net = torch.nn.Linear(2, 1, bias=False)
    >>> X, y = torch.tensor([[1., 0.], [0., 1.]]), torch.zeros(2, 1)
    >>> loss_at(net, torch.nn.MSELoss(), (X, y), torch.tensor([1., 3.]), grad=True)
    (5.0, tensor([1., 3.]))
    """
    layout, batches, vector = _prepare(model, data, vector, layout)
    total = 0.0
    with evaluation(model, eval_mode):
        if not grad:
            with torch.no_grad():
                for term in _weighted_batch_losses(model, loss_fn, batches, vector, layout, check):
                    total += float(term)
            return total
        with torch.enable_grad():
            point = vector.detach().requires_grad_(True)
            gradient = None
            for term in _weighted_batch_losses(model, loss_fn, batches, point, layout, check):
                (g,) = torch.autograd.grad(term, point, allow_unused=True)
                g = torch.zeros_like(point) if g is None else g
                gradient = g if gradient is None else gradient + g
                total += float(term.detach())
    return total, gradient


def parameter_slices(model: nn.Module) -> Dict[str, slice]:
    """Where each trainable parameter lies in the flat vector (:attr:`ParameterLayout.slices`).

    The order is that of :func:`flat_parameters` and of the rows of
    :func:`flatness.operators.dense_hessian`.

    >>> from flatness.models import mlp
    >>> for name, where in parameter_slices(mlp(2, (3,), 2)).items():
    ...     print(name, where.start, where.stop)
    0.weight 0 6
    0.bias 6 9
    2.weight 9 15
    2.bias 15 17
    """
    return dict(ParameterLayout(model).slices)


def flat_parameters(model: nn.Module) -> Tensor:
    """All trainable parameters of ``model`` as one detached vector
    (:meth:`ParameterLayout.to_vector`)."""
    return ParameterLayout(model).to_vector(model, "model")


def unflatten_parameters(model: nn.Module, vector: Tensor) -> Dict[str, Tensor]:
    """Split a flat vector (ordered as :func:`flat_parameters`) into tensors shaped like the
    model's trainable parameters, keyed by name, for ``torch.func.functional_call``
    (:meth:`ParameterLayout.to_dict`).

    The pieces are views of ``vector``, so gradients flow back to it.

    >>> net = torch.nn.Linear(2, 3)
    >>> {k: tuple(v.shape) for k, v in unflatten_parameters(net, torch.arange(9.)).items()}
    {'weight': (3, 2), 'bias': (3,)}
    """
    return ParameterLayout(model).to_dict(vector)


def with_flat_parameters(model: nn.Module, vector: Tensor) -> nn.Module:
    """A copy of ``model`` whose trainable parameters are the flat ``vector``
    (:meth:`ParameterLayout.to_dict`), cast to each parameter's dtype; buffers and frozen
    parameters are copied as they are.

    Args:
        model: the network (not changed).
        vector: the trainable parameters in :class:`ParameterLayout` order.

    Returns:
        The new network.

    Raises:
        ValueError: ``vector`` is not a flat tensor of the model's length.

    >>> net = torch.nn.Linear(2, 1)
    >>> with_flat_parameters(net, torch.tensor([1., 2., 3.])).bias
    Parameter containing:
    tensor([3.], requires_grad=True)
    """
    pieces = ParameterLayout(model).to_dict(vector.detach() if isinstance(vector, Tensor) else vector)
    net = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in pieces:
                p.copy_(pieces[name])
    return net
