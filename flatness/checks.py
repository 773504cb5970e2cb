"""Input checks and the model-mode context shared by every measurement.

Every public function of flatness turns bad input into a ``ValueError`` (or
``TypeError``) that names the argument and says what was expected, rather than
returning a silently wrong number.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Iterable, Iterator, List, Sequence, Tuple

import torch
from torch import Tensor, nn

Batch = Tuple[Tensor, Tensor]

#: Modules whose output depends on train/eval mode.
MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                  nn.AlphaDropout, nn.FeatureAlphaDropout)
NORMALIZATION = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                 nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def check_tensor_pair(data, name: str = "data") -> Batch:
    """Check that ``data`` is an ``(X, y)`` pair of tensors of equal, non-zero length."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"{name}: expected an (X, y) pair of tensors or a DataLoader, "
                        f"got {type(data).__name__}")
    X, y = data
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{name}: expected X and y to be torch tensors, got "
                        f"{type(X).__name__} and {type(y).__name__}")
    if X.ndim == 0 or X.shape[0] == 0:
        raise ValueError(f"{name}: X is empty (shape {tuple(X.shape)}); expected at least one sample")
    if y.ndim == 0 or y.shape[0] != X.shape[0]:
        raise ValueError(f"{name}: X and y have different lengths "
                         f"({X.shape[0]} samples vs {y.shape[0] if y.ndim else 'a scalar'} labels)")
    return X, y


def iter_batches(data, batch_size: int | None = None, name: str = "data") -> Iterator[Batch]:
    """Yield ``(X, y)`` batches from a tensor pair or from an iterable of pairs (a DataLoader)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        X, y = check_tensor_pair(data, name)
        size = X.shape[0] if batch_size is None else int(batch_size)
        if size <= 0:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        for start in range(0, X.shape[0], size):
            yield X[start:start + size], y[start:start + size]
        return
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        check_tensor_pair(data, name)  # neither a pair of tensors nor a list of batches: explain
    if not isinstance(data, Iterable):
        raise TypeError(f"{name}: expected an (X, y) pair of tensors or a DataLoader, "
                        f"got {type(data).__name__}")
    seen = False
    for batch in data:
        X, y = check_tensor_pair(tuple(batch)[:2], f"{name} (a batch)")
        seen = True
        yield X, y
    if not seen:
        raise ValueError(f"{name}: the DataLoader yielded no batches; expected at least one sample")


def materialize(data, name: str = "data") -> List[Batch]:
    """Return the batches of ``data`` as a list (checked, non-empty)."""
    return list(iter_batches(data, name=name))


def num_samples(batches: Sequence[Batch]) -> int:
    return int(sum(b[0].shape[0] for b in batches))


def check_labels(output: Tensor, y: Tensor, loss_fn, name: str = "data") -> None:
    """For classification losses, check that integer labels index the model's outputs."""
    if not isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return
    if y.is_floating_point() or y.ndim != 1:
        return
    classes = output.shape[-1] if output.ndim > 1 else 1
    low, high = int(y.min()), int(y.max())
    ignore = getattr(loss_fn, "ignore_index", -100)
    if low < 0 and low != ignore or high >= classes:
        raise ValueError(f"{name}: labels must lie in [0, {classes}) for a model with {classes} "
                         f"outputs; found labels from {low} to {high}")


def check_reduction(loss_fn) -> None:
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction != "mean":
        raise ValueError(f"loss_fn: expected a mean-reduced loss, got reduction={reduction!r}")


def check_finite(value: float, what: str = "loss") -> float:
    if not math.isfinite(value):
        raise ValueError(f"the {what} at the point measured is {value}; curvature and sharpness "
                         "are only defined where the loss is finite (check the model and data)")
    return value


def mode_dependent_modules(model: nn.Module) -> List[str]:
    """Names of BatchNorm/Dropout modules that are in train mode."""
    return [f"{name} ({type(m).__name__})" if name else type(m).__name__
            for name, m in model.named_modules() if isinstance(m, MODE_DEPENDENT) and m.training]


@contextlib.contextmanager
def evaluation(model: nn.Module, eval_mode: bool | None = None):
    """Run a block with ``model`` in eval mode and restore every module's mode afterwards.

    Args:
        model: the network.
        eval_mode: ``None`` (default) refuses a model whose BatchNorm or Dropout modules are
            in train mode, because its loss would then depend on the batch or on chance;
            ``True`` evaluates such a model in eval mode on purpose.

    Raises:
        ValueError: BatchNorm or Dropout in train mode and ``eval_mode`` not ``True``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    offending = mode_dependent_modules(model)
    if offending and eval_mode is not True:
        raise ValueError(
            f"model: {', '.join(offending)} in train mode make the loss depend on the batch or "
            "on random masks, so its curvature is not defined; call model.eval() or pass "
            "eval_mode=True to measure the model in eval mode")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def quiet_torch_func():
    """Silence the FutureWarning that the first ``torch.func`` call prints about ``torch.jit``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
        yield


def trainable_parameters(model: nn.Module) -> List[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: it has no parameters that require gradients")
    return params


def check_positive(value, name: str, integer: bool = False):
    if integer:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    elif not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return value


@contextlib.contextmanager
def preserved_parameters(model: nn.Module):
    """Restore every parameter and buffer of ``model`` when the block ends, even on error."""
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()}
    try:
        yield model
    finally:
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                v.copy_(saved[k])
