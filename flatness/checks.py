"""Input checks and the model-mode context shared by every measurement.

Every public function of flatness turns bad input into a ``ValueError`` (or
``TypeError``) that names the argument and says what was expected, rather than
returning a silently wrong number.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import warnings
from typing import Iterable, Iterator, List, Sequence, Tuple

import numpy as np
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
    if isinstance(data, (str, bytes, dict)):
        raise TypeError(f"{name}: expected an (X, y) pair of tensors or a DataLoader, "
                        f"got {type(data).__name__}")
    if isinstance(data, Tensor):
        raise TypeError(f"{name}: expected an (X, y) pair of tensors or a DataLoader, got a single "
                        f"tensor of shape {tuple(data.shape)}; pass (X, y)")
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        check_tensor_pair(data, name)  # neither a pair of tensors nor a list of batches: explain
    if isinstance(data, (tuple, list)) and len(data) == 1 and isinstance(data[0], Tensor):
        raise TypeError(f"{name}: expected an (X, y) pair of tensors, got a sequence holding one "
                        "tensor; pass (X, y)")
    if not isinstance(data, Iterable):
        raise TypeError(f"{name}: expected an (X, y) pair of tensors or a DataLoader, "
                        f"got {type(data).__name__}")
    seen = False
    for batch in data:
        if isinstance(batch, Tensor) or not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"{name}: each batch must be an (X, y) pair of tensors, got "
                            f"{type(batch).__name__}")
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


#: Losses whose targets are class indices (or class probabilities of the output's shape).
CLASS_INDEX_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
#: Losses whose targets are probabilities of the positive class, elementwise with the output.
BINARY_LOSSES = (nn.BCEWithLogitsLoss, nn.BCELoss)
#: Losses whose targets are real numbers of the output's shape.
REGRESSION_LOSSES = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss)


def check_labels(output: Tensor, y: Tensor, loss_fn, name: str = "data",
                 likelihood: bool = False) -> None:
    r"""Check that the targets ``y`` suit ``loss_fn`` and the model's ``output``, and that
    ``loss_fn`` is mean-reduced.

    * every floating-point target is finite;
    * ``nn.CrossEntropyLoss`` / ``nn.NLLLoss`` with integer targets: every label lies in
      ``[0, C)`` for ``C = output.shape[1]`` (``output.shape[0]`` for an unbatched output),
      except labels equal to the loss's exact ``ignore_index``; the targets have the output's
      shape without its class axis. With floating targets (class probabilities) they have the
      output's shape;
    * ``nn.BCEWithLogitsLoss`` / ``nn.BCELoss``: targets in :math:`[0, 1]` of the output's shape;
    * squared / absolute errors: targets of the output's shape (torch would broadcast
      ``(N, 1)`` against ``(N,)`` into an ``(N, N)`` matrix of differences);
    * when ``output`` and ``y`` hold the same number of samples, :func:`check_reduction` probes
      that the loss is a mean over samples.

    Args:
        output: the model's output on (some of) the inputs whose targets are ``y``; only its
            trailing shape matters, unless it has one row per target.
        y: the targets.
        loss_fn: the loss.
        name: the argument named in errors.
        likelihood: ``loss_fn`` is used as the negative log-likelihood of discrete labels (the
            Laplace evidence): class-index losses must have integer labels, none of them
            ignored, and no class weights or label smoothing; binary losses must have labels
            in :math:`\{0, 1\}`.

    Raises:
        ValueError: targets that do not fit the loss, or a loss that is not mean-reduced.
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"{name}: expected the targets y to be a torch tensor, "
                        f"got {type(y).__name__}")
    _check_reduction_attribute(loss_fn)
    if y.is_floating_point() and y.numel() and not bool(torch.isfinite(y).all()):
        bad = int((~torch.isfinite(y)).sum())
        raise ValueError(f"{name}: {bad} of the {y.numel()} targets y are NaN or infinite; "
                         "expected finite values")
    samples_match = output.ndim >= 1 and y.ndim >= 1 and output.shape[0] == y.shape[0]
    if isinstance(loss_fn, CLASS_INDEX_LOSSES):
        _check_class_labels(output, y, loss_fn, name, likelihood, samples_match)
    elif isinstance(loss_fn, BINARY_LOSSES):
        if samples_match and output.shape != y.shape:
            raise ValueError(f"{name}: {type(loss_fn).__name__} needs targets of the output's "
                             f"shape {tuple(output.shape)}, got {tuple(y.shape)}")
        if not y.is_floating_point():
            raise ValueError(f"{name}: {type(loss_fn).__name__} needs floating-point targets "
                             f"(0.0 or 1.0), got dtype {y.dtype}")
        if likelihood and (getattr(loss_fn, "weight", None) is not None
                           or getattr(loss_fn, "pos_weight", None) is not None):
            raise ValueError(f"loss_fn: a {type(loss_fn).__name__} with weight or pos_weight is "
                             "not the negative log-likelihood of the labels; use a plain one")
        if y.numel():
            if likelihood and not bool(((y == 0) | (y == 1)).all()):
                odd = y[(y != 0) & (y != 1)]
                raise ValueError(
                    f"{name}: the labels of a Bernoulli likelihood must be 0 or 1; found "
                    f"{odd.numel()} other value(s), e.g. {float(odd[0]):g} (the log evidence of "
                    "such labels is not a log-probability)")
            low, high = float(y.min()), float(y.max())
            if low < 0 or high > 1:
                raise ValueError(f"{name}: {type(loss_fn).__name__} needs targets in [0, 1]; "
                                 f"found targets from {low:g} to {high:g}")
    elif isinstance(loss_fn, REGRESSION_LOSSES) or getattr(loss_fn, "elementwise_targets", False):
        if samples_match and output.shape != y.shape:
            raise ValueError(f"{name}: {type(loss_fn).__name__} needs targets of the output's "
                             f"shape {tuple(output.shape)}, got {tuple(y.shape)}")
        if not y.is_floating_point():
            raise ValueError(f"{name}: {type(loss_fn).__name__} needs floating-point targets, "
                             f"got dtype {y.dtype}")
    if samples_match:
        check_reduction(loss_fn, (output, y))


def _check_class_labels(output, y, loss_fn, name, likelihood, samples_match) -> None:
    kind = type(loss_fn).__name__
    if likelihood:
        extras = [what for what, on in (
            ("class weights", getattr(loss_fn, "weight", None) is not None),
            ("label smoothing", float(getattr(loss_fn, "label_smoothing", 0.0)) != 0.0)) if on]
        if extras:
            raise ValueError(f"loss_fn: a {kind} with {' and '.join(extras)} is not the "
                             "negative log-likelihood of the labels; use a plain one")
    if y.is_floating_point():
        if likelihood:
            raise ValueError(f"{name}: the likelihood needs integer class labels, got "
                             f"floating-point targets (dtype {y.dtype})")
        if samples_match and output.shape != y.shape:
            raise ValueError(f"{name}: {kind} with floating-point targets (class probabilities) "
                             f"needs targets of the output's shape {tuple(output.shape)}, got "
                             f"{tuple(y.shape)}; class indices must be integers")
        return
    if y.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer class labels, got dtype torch.bool")
    if output.ndim >= 2:
        classes, spatial = output.shape[1], tuple(output.shape[2:])
        if tuple(y.shape[1:]) != spatial:
            raise ValueError(f"{name}: {kind} needs one integer label per sample"
                             f"{' and position' if spatial else ''}, i.e. targets of shape "
                             f"({', '.join(['N', *map(str, spatial)]) if spatial else 'N,'}) for outputs of shape "
                             f"{tuple(output.shape)}; got {tuple(y.shape)}")
    else:
        classes = output.shape[0] if output.ndim == 1 else 1
    if y.numel() == 0:
        return
    ignore = getattr(loss_fn, "ignore_index", -100)
    ignored = y == ignore
    if likelihood and bool(ignored.any()):
        raise ValueError(f"{name}: {int(ignored.sum())} label(s) equal ignore_index={ignore}; "
                         "the likelihood needs every label (an ignored sample has no "
                         "probability), so remove them")
    kept = y[~ignored]
    if kept.numel() == 0:
        return
    low, high = int(kept.min()), int(kept.max())
    if low < 0 or high >= classes:
        raise ValueError(f"{name}: labels must lie in [0, {classes}) for a model with {classes} "
                         f"outputs (or equal ignore_index={ignore}); found labels from {low} to "
                         f"{high}")


def _check_reduction_attribute(loss_fn) -> None:
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction != "mean":
        raise ValueError(f"loss_fn: expected a mean-reduced loss, got reduction={reduction!r}")


def sample_weights(loss_fn, y: Tensor) -> Tensor:
    r"""The weight of each sample in a loss's mean over a batch (float64, on ``y``'s device).

    With integer (class-index) targets, torch's mean divides the batch's sum by
    :math:`\sum_i w_{y_i}` over the targets that are not the ignore index (the loss's
    ``ignore_index``, else torch's default −100, which ``F.cross_entropy`` also skips): ``w``
    are the class weights ``weight`` of an ``nn.CrossEntropyLoss`` / ``nn.NLLLoss``, 1 without
    them, 0 for an ignored target, summed over the positions of a sample with several.
    Floating-point targets weigh each sample by 1.

    >>> sample_weights(nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0])), torch.tensor([0, 1, -100])).tolist()
    [1.0, 3.0, 0.0]
    """
    if y.is_floating_point() or y.dtype == torch.bool:
        return torch.ones(len(y), dtype=torch.float64, device=y.device)
    keep = y != getattr(loss_fn, "ignore_index", -100)
    weight = getattr(loss_fn, "weight", None) if isinstance(loss_fn, CLASS_INDEX_LOSSES) else None
    if weight is None:
        w = keep.to(torch.float64)
    else:
        weight = weight.detach().to(dtype=torch.float64, device=y.device)
        w = torch.where(keep, weight[y.clamp(0, weight.numel() - 1) * keep], 0.0)
    return w.reshape(len(y), -1).sum(1)


def _callable_name(fn) -> str:
    if isinstance(fn, functools.partial):
        text = repr(fn)
        return text if len(text) <= 120 else text[:117] + "..."
    return getattr(fn, "__name__", None) or type(fn).__name__


def check_reduction(loss_fn, batch=None) -> None:
    r"""Refuse a loss that is not a mean over samples.

    Every measurement weights a batch's loss by its share of the samples,
    :math:`L = \sum_b (n_b/N) L_b`, which is the full-data loss only for a mean. A module's
    ``reduction`` attribute must be ``"mean"``; and with a ``batch = (output, target)`` of
    :math:`n \ge 2` samples, any callable is probed: split into halves of sizes
    :math:`n_1, n_2`,

    .. math:: L(\text{batch}) = \frac{n_1 L(\text{half}_1) + n_2 L(\text{half}_2)}{n}

    holds to rounding for a mean of per-sample losses, and fails for a sum, which is
    :math:`L_1 + L_2`. With integer targets (class labels) the weights are, as in torch's mean,
    the numbers of labels not equal to the ignore index (the loss's ``ignore_index``, else
    torch's default −100), or the sums of their class weights for a weighted
    ``nn.CrossEntropyLoss`` / ``nn.NLLLoss``.

    Args:
        loss_fn: the loss, a module or any callable ``loss_fn(output, target)``.
        batch: optional ``(output, target)`` of the model on some samples, for the probe.

    Raises:
        ValueError: ``reduction`` is not ``"mean"``, or the probe shows that the loss is not
            a mean over samples.
    """
    _check_reduction_attribute(loss_fn)
    if batch is None:
        return
    output, target = batch
    if not (isinstance(output, Tensor) and isinstance(target, Tensor)) or output.ndim == 0 \
            or target.ndim == 0 or output.shape[0] != target.shape[0] or output.shape[0] < 2:
        return
    output = output.detach()
    n = output.shape[0]
    h = n // 2
    w = sample_weights(loss_fn, target)  # class labels: torch's mean skips ignored ones
    w1, w2 = float(w[:h].sum()), float(w[h:].sum())
    if w1 <= 0 or w2 <= 0:
        return
    try:
        with torch.no_grad():
            whole = float(loss_fn(output, target))
            first = float(loss_fn(output[:h], target[:h]))
            second = float(loss_fn(output[h:], target[h:]))
    except Exception:  # a loss that cannot take part of a batch: nothing to probe
        return
    if not all(math.isfinite(v) for v in (whole, first, second)):
        return
    mean = (w1 * first + w2 * second) / (w1 + w2)
    eps = torch.finfo(output.dtype).eps if output.is_floating_point() else 2.0 ** -52
    rtol = min(0.05, 32 * math.sqrt(eps))
    if abs(whole - mean) > rtol * max(abs(whole), abs(first), abs(second), 1e-30):
        name = _callable_name(loss_fn)
        raise ValueError(
            f"loss_fn: {name} is not a mean over samples: on a batch of {n} it gives {whole:.6g}, "
            f"but its two halves give {first:.6g} and {second:.6g}, whose size-weighted mean is "
            f"{mean:.6g} (a sum would give {first + second:.6g}); pass a mean-reduced loss "
            "(reduction='mean'), or every curvature would scale with the batch size")


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
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: BatchNorm or Dropout in train mode and ``eval_mode`` not ``True``; a model
            on the meta device (see :func:`check_model`).
    """
    check_model(model)
    offending = mode_dependent_modules(model)
    if offending and eval_mode is not True:
        raise ValueError(
            f"model: {'module' if len(offending) == 1 else 'modules'} {', '.join(offending)} "
            f"{'is' if len(offending) == 1 else 'are'} in train mode, which makes the loss depend on the batch or "
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


def is_integer(value) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """Whether ``value`` is a real number (Python or NumPy, integral or not), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_positive(value, name: str, integer: bool = False):
    """Check that ``value`` is a positive finite number (an integer with ``integer``).

    Python and NumPy scalars are accepted (``numbers.Real`` / ``numbers.Integral``, not
    ``bool``); the value is returned as given.

    Raises:
        ValueError: not a number, not positive or not finite.
    """
    if integer:
        if not is_integer(value) or value <= 0:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    elif not (is_real(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return value


def check_model(model) -> nn.Module:
    """Check that ``model`` is an ``nn.Module`` whose parameters and buffers hold data.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` (``None``, a function, …).
        ValueError: parameters or buffers on the ``meta`` device (shapes without values), or
            spread over several devices.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    tensors = list(model.parameters()) + list(model.buffers())
    if any(t.is_meta for t in tensors):
        raise ValueError("model: its parameters are on the meta device (shapes without values); "
                         "materialize it first, e.g. model.to_empty(device='cpu') and an "
                         "initialization, or load a state dict with assign=True")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"model: its parameters and buffers are spread over several devices "
                         f"({', '.join(sorted(str(d) for d in devices))}); expected one")
    return model


def check_data_matches_model(model: nn.Module, X: Tensor, name: str = "data") -> None:
    """Check that inputs ``X`` can be fed to ``model``: same device, and floating-point inputs
    of the dtype of its floating-point parameters (integer inputs only for a model that
    embeds them).

    Raises:
        TypeError: ``X`` is not a tensor, or has a dtype the model cannot take.
        ValueError: ``X`` and the model on different devices.
    """
    if not isinstance(X, Tensor):
        raise TypeError(f"{name}: expected X to be a torch tensor, got {type(X).__name__}")
    params = [p for p in model.parameters()]
    if not params:
        return
    device = params[0].device
    if X.device != device:
        raise ValueError(f"{name}: X is on {X.device} but the model is on {device}; move one "
                         "of them")
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    embeds = any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules())
    if X.is_floating_point():
        if len(dtypes) == 1 and X.dtype not in dtypes:
            (dtype,) = dtypes
            raise TypeError(f"{name}: X has dtype {X.dtype} but the model's parameters are "
                            f"{dtype}; convert one of them (X.to({dtype}) or model.to({X.dtype}))")
    elif not embeds:
        want = ", ".join(str(d) for d in sorted(dtypes, key=str)) or "floating point"
        raise TypeError(f"{name}: X has dtype {X.dtype}, but the model takes floating-point "
                        f"inputs ({want}); convert X, e.g. X.float()")


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
