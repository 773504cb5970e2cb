"""Training loops and the description of a training run.

:func:`train` trains a model in place with SGD (momentum optional) or Adam, for a fixed number
of epochs or until the training accuracy reaches a target, and returns its history.

:class:`TrainConfig` is a JSON-able description of the model, the data and every training
option; :func:`flatness.cache.load_or_train` trains it once and caches the result on disk under
a hash of that description (:meth:`TrainConfig.key`), so that re-running a chapter never
retrains a model it already trained. Sharpness is tracked during training through ``callbacks``
(:class:`flatness.curvature.SharpnessTracker`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import models as models_module
from .checks import (
    check_data_matches_model,
    check_labels,
    check_model,
    check_tensor_pair,
    evaluation,
    is_integer,
    is_real,
    iter_batches,
    materialize,
)

__all__ = ["evaluate", "augment_signals", "train", "TrainConfig", "build_model", "REFERENCE_MLP"]

#: Bump when the meaning of a cached file changes, so that old files are not reused.
CACHE_VERSION = 2


def _progress_enabled(progress: Optional[bool]) -> bool:
    if progress is not None:
        return bool(progress)
    return os.environ.get("FLATNESS_PROGRESS", "1") not in ("0", "false", "no", "")


def evaluate(model: nn.Module, data, loss_fn: Optional[nn.Module] = None,
             batch_size: int = 4096, eval_mode: Optional[bool] = None,
             params: Optional[Dict[str, Tensor]] = None) -> Tuple[float, float]:
    r"""Mean loss and accuracy of ``model`` on ``data``, in eval mode, without gradients.

    The loss is :math:`\sum_b \frac{n_b}{N}\bar\ell_b` over batches of :math:`n_b` samples.
    The accuracy is the fraction of samples whose predicted class is the label, where the
    prediction depends on the head:

    * ``C ≥ 2`` logits per sample (output ``(N, C)``), integer labels ``(N,)``: the argmax;
    * one logit per sample (output ``(N,)`` or ``(N, 1)``, as for ``BCEWithLogitsLoss``),
      labels 0/1 (integer or float, ``(N,)`` or ``(N, 1)``): class 1 where the logit is > 0.

    Args:
        model: a classifier returning logits.
        data: an ``(X, y)`` pair or an iterable of pairs.
        loss_fn: a mean-reduced loss (default cross-entropy).
        batch_size: evaluation batch size for a tensor pair.
        eval_mode: see :func:`flatness.checks.evaluation`.
        params: parameters (and buffers), keyed as in ``model.named_parameters()``, to use
            instead of the model's own, through ``torch.func.functional_call``; the model is
            not changed.

    Returns:
        ``(loss, accuracy)``, accuracy in [0, 1].

    Raises:
        ValueError: outputs and labels for which accuracy is not defined (regression targets,
            soft labels, a one-logit head with labels other than 0/1), labels out of range,
            BatchNorm/Dropout in train mode.
    """
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn

    def forward(X: Tensor) -> Tensor:
        return model(X) if params is None else torch.func.functional_call(model, params, (X,))

    def num_correct(out: Tensor, y: Tensor) -> int:
        n = out.shape[0] if out.ndim else 0
        if out.ndim == 2 and out.shape[1] >= 2 and y.ndim == 1 and not y.is_floating_point():
            return int((out.argmax(1) == y).sum())
        if (out.ndim == 1 or out.ndim == 2 and out.shape[1] == 1) and y.numel() == n \
                and (y.ndim == 1 or y.ndim == 2 and y.shape[1] == 1):
            labels = y.reshape(-1)
            if not bool(((labels == 0) | (labels == 1)).all()):
                raise ValueError("data: a model with one logit per sample is scored as a binary "
                                 "classifier (logit > 0 is class 1) and needs labels 0 or 1; "
                                 f"found labels from {float(labels.min()):g} to "
                                 f"{float(labels.max()):g}")
            return int(((out.reshape(-1) > 0) == (labels == 1)).sum())
        raise ValueError(f"model: cannot score the accuracy of outputs of shape {tuple(out.shape)} "
                         f"against labels of shape {tuple(y.shape)} ({y.dtype}); expected (N, C) "
                         "logits, C ≥ 2, with integer labels (N,), or one logit per sample "
                         "((N,) or (N, 1)) with labels 0/1")

    total, loss_sum, correct = 0, 0.0, 0
    with evaluation(model, eval_mode), torch.no_grad():
        for X, y in iter_batches(data, batch_size):
            out = forward(X)
            check_labels(out, y, loss_fn)
            n = X.shape[0]
            loss_sum += float(loss_fn(out, y)) * n
            correct += num_correct(out, y)
            total += n
    return loss_sum / total, correct / total


def augment_signals(X: Tensor, generator: torch.Generator, shift: int = 0, scale: float = 0.0,
                    noise: float = 0.0) -> Tensor:
    """Random augmentation for 1-D signals (last axis): circular shift, amplitude, noise.

    The random draws come from ``generator`` on the CPU whatever the device of ``X`` (a few
    numbers per signal), so a run draws the same augmentations on every device.

    Args:
        X: a batch of signals ``(N, L)`` or ``(N, C, L)``.
        generator: the random generator (explicit, for reproducibility), a CPU generator.
        shift: largest circular shift, in samples, in either direction.
        scale: amplitudes are multiplied by ``1 + U(-scale, scale)``.
        noise: standard deviation of added Gaussian noise.
    """
    n = X.shape[0]
    if shift:
        offsets = torch.randint(-shift, shift + 1, (n,), generator=generator).to(X.device)
        L = X.shape[-1]
        idx = (torch.arange(L, device=X.device).unsqueeze(0) - offsets.unsqueeze(1)) % L
        idx = idx.view(n, *([1] * (X.ndim - 2)), L).expand_as(X)
        X = torch.gather(X, -1, idx)
    if scale:
        factors = 1 + scale * (2 * torch.rand(n, generator=generator, dtype=X.dtype).to(X.device) - 1)
        X = X * factors.view(n, *([1] * (X.ndim - 1)))
    if noise:
        X = X + noise * torch.randn(X.shape, generator=generator, dtype=X.dtype).to(X.device)
    return X


def train(model: nn.Module, train_data: Tuple[Tensor, Tensor], *, test_data=None,
          optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.0,
          batch_size: Optional[int] = 64, epochs: Optional[int] = None,
          target_train_acc: Optional[float] = None, max_epochs: int = 1000,
          weight_decay: float = 0.0, seed: int = 0, augment: Optional[dict] = None,
          milestones: Sequence[int] = (), lr_factor: float = 1.0, batch_factor: int = 1,
          progress: Optional[bool] = None, callbacks: Sequence[Callable] = ()) -> dict:
    """Train ``model`` in place and return its history.

    Training stops after ``epochs`` epochs, or — when ``target_train_acc`` is given — at the end
    of the first epoch whose full training-set accuracy (eval mode) reaches the target, or at
    ``max_epochs``.

    Args:
        model: the network (trained in place).
        train_data: the ``(X, y)`` training pair.
        test_data: an optional ``(X, y)`` pair evaluated after every epoch.
        optimizer: ``"sgd"`` or ``"adam"``.
        lr: learning rate ε.
        momentum: SGD momentum (ignored by Adam).
        batch_size: mini-batch size B; ``None`` or ≥ N gives full-batch gradient descent.
        epochs: a fixed number of epochs (exclusive with ``target_train_acc``).
        target_train_acc: stop when the training accuracy reaches this value in [0, 1].
        max_epochs: the cap when training to a target.
        weight_decay: L2 penalty coefficient passed to the optimizer.
        seed: seeds the data order and augmentation.
        augment: keyword arguments of :func:`augment_signals` (``shift``, ``scale``, ``noise``).
        milestones: epochs after which the learning rate is multiplied by ``lr_factor`` and the
            batch size by ``batch_factor`` (Smith et al. 2018's schedules).
        progress: show a tqdm bar (default: on, unless ``FLATNESS_PROGRESS=0``).
        callbacks: callables ``callback(epoch, model, history)`` run after every epoch; a
            callback's optional ``start(model, history)`` runs before the first step and its
            optional ``end(epoch, model, history)`` after the last (for example
            :class:`flatness.curvature.SharpnessTracker`).

    Returns:
        A dict of per-epoch lists (``epoch``, ``steps``, ``lr``, ``batch_size``, ``train_loss``,
        ``train_acc`` and, with test data, ``test_loss``, ``test_acc``) and totals
        (``epochs``, ``total_steps``, ``reached_target``, ``seconds``) and the ``device`` it
        ran on. Training runs where the model's parameters are; the data must be there too.

    Raises:
        TypeError: ``model`` not a module, ``train_data`` not a pair of tensors (a DataLoader
            included: train shuffles and batches the tensors itself), inputs of a dtype the
            model cannot take, labels that are not integers.
        ValueError: bad options, bad ``test_data``, labels out of range, inputs that are not
            finite, or a loss that became NaN or infinite (divergence).
    """
    check_model(model)
    if not (isinstance(train_data, (tuple, list)) and len(train_data) == 2):
        raise TypeError(f"train_data: train needs an (X, y) pair of tensors (it shuffles and "
                        f"batches them itself), got {type(train_data).__name__}")
    X, y = check_tensor_pair(train_data, "train_data")
    N = X.shape[0]
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer: expected 'sgd' or 'adam', got {optimizer!r}")
    if (epochs is None) == (target_train_acc is None):
        raise ValueError("epochs, target_train_acc: give exactly one of them")
    if epochs is not None and (not is_integer(epochs) or epochs < 0):
        raise ValueError(f"epochs: expected a non-negative integer, got {epochs!r}")
    if target_train_acc is not None and not (is_real(target_train_acc)
                                             and 0 < target_train_acc <= 1):
        raise ValueError(f"target_train_acc: expected a value in (0, 1], got {target_train_acc!r}")
    if not is_integer(max_epochs) or max_epochs <= 0:
        raise ValueError(f"max_epochs: expected a positive integer, got {max_epochs!r}")
    for value, name in ((lr, "lr"), (lr_factor, "lr_factor")):
        if not (is_real(value) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if not (is_real(momentum) and 0 <= momentum < 1):
        raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
    if not (is_real(weight_decay) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay: expected a non-negative number, got {weight_decay!r}")
    if batch_size is not None and (not is_integer(batch_size) or batch_size <= 0):
        raise ValueError(f"batch_size: expected a positive integer or None, got {batch_size!r}")
    if not is_integer(batch_factor) or batch_factor <= 0:
        raise ValueError(f"batch_factor: expected a positive integer, got {batch_factor!r}")
    if not is_integer(seed):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence) \
            or not all(is_integer(m) for m in milestones):
        raise ValueError(f"milestones: expected a sequence of epoch numbers, got {milestones!r}")
    milestones = {int(m) for m in milestones}
    if augment is not None and not isinstance(augment, dict):
        raise ValueError(f"augment: expected None or a dict of augment_signals options, "
                         f"got {type(augment).__name__}")
    loss_fn = nn.CrossEntropyLoss()
    _check_classification_data(model, X, y, loss_fn, "train_data")
    if test_data is not None:
        for Xt, yt in materialize(test_data, "test_data"):
            _check_classification_data(model, Xt, yt, loss_fn, "test_data")
    N, B = int(N), N if batch_size is None else min(int(batch_size), int(N))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: it has no parameters that require gradients")
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=float(lr), momentum=float(momentum),
                              weight_decay=float(weight_decay))
    else:
        opt = torch.optim.Adam(params, lr=float(lr), weight_decay=float(weight_decay))
    gen = torch.Generator().manual_seed(int(seed))
    limit = int(epochs) if epochs is not None else int(max_epochs)
    hist: Dict[str, list] = {k: [] for k in ("epoch", "steps", "lr", "batch_size", "train_loss",
                                             "train_acc", "test_loss", "test_acc")}
    start, steps, reached = time.perf_counter(), 0, False
    modes = {m: m.training for m in model.modules()}
    bar = _tqdm(total=limit, desc="train", disable=not _progress_enabled(progress))
    epoch = 0
    with torch.enable_grad():  # train works inside a caller's torch.no_grad() block
        for cb in callbacks:
            if hasattr(cb, "start"):
                cb.start(model, hist)
        try:
            while epoch < limit:
                epoch += 1
                model.train()
                perm = torch.randperm(N, generator=gen).to(X.device)
                for s in range(0, N, B):
                    idx = perm[s:s + B]
                    xb, yb = X[idx], y[idx]
                    if augment:
                        xb = augment_signals(xb, gen, **augment)
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model(xb), yb)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise ValueError(f"training diverged: the loss is {value} at epoch "
                                         f"{epoch}, step {steps + 1} (lr="
                                         f"{opt.param_groups[0]['lr']:g}, batch_size={B}); "
                                         "lower lr")
                    loss.backward()
                    opt.step()
                    steps += 1
                train_loss, train_acc = evaluate(model, (X, y), loss_fn, eval_mode=True)
                if not math.isfinite(train_loss):
                    raise ValueError(f"training diverged: the training loss is {train_loss} "
                                     f"after epoch {epoch}; lower lr")
                hist["epoch"].append(epoch)
                hist["steps"].append(steps)
                hist["lr"].append(opt.param_groups[0]["lr"])
                hist["batch_size"].append(B)
                hist["train_loss"].append(train_loss)
                hist["train_acc"].append(train_acc)
                if test_data is not None:
                    test_loss, test_acc = evaluate(model, test_data, loss_fn, eval_mode=True)
                    hist["test_loss"].append(test_loss)
                    hist["test_acc"].append(test_acc)
                for cb in callbacks:
                    cb(epoch, model, hist)
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.3g}", acc=f"{train_acc:.3f}")
                if target_train_acc is not None and train_acc >= target_train_acc:
                    reached = True
                    break
                if epoch in milestones:
                    for g in opt.param_groups:
                        g["lr"] *= float(lr_factor)
                    B = min(N, B * int(batch_factor))
        finally:
            bar.close()
            for m, mode in modes.items():  # every submodule's own mode, as the caller left it
                m.training = mode
        for cb in callbacks:
            if hasattr(cb, "end"):
                cb.end(epoch, model, hist)
    if test_data is None:
        del hist["test_loss"], hist["test_acc"]
    hist.update(epochs=epoch, total_steps=steps, reached_target=reached,
                seconds=time.perf_counter() - start, device=str(params[0].device))
    return hist


def _check_classification_data(model: nn.Module, X: Tensor, y: Tensor, loss_fn,
                               name: str) -> None:
    """Up-front checks of one (X, y) pair for training a classifier with cross-entropy."""
    X, y = check_tensor_pair((X, y), name)
    check_data_matches_model(model, X, name)
    if X.is_floating_point() and not bool(torch.isfinite(X).all()):
        bad = int((~torch.isfinite(X)).sum())
        raise ValueError(f"{name}: {bad} of the {X.numel()} inputs X are NaN or infinite; "
                         "expected finite inputs")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{name}: y must hold integer class labels (dtype torch.int64) for "
                        f"cross-entropy, got dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"{name}: y must be a vector of N class labels, shape ({X.shape[0]},), "
                         f"got shape {tuple(y.shape)}")
    if y.device != X.device:
        raise ValueError(f"{name}: X is on {X.device} but y is on {y.device}")
    with torch.no_grad(), evaluation(model, eval_mode=True):
        check_labels(model(X[:2]), y, loss_fn, name)


def _tqdm(**kwargs):
    # plain tqdm on stderr: the book removes stderr, Jupyter shows it
    return tqdm(file=sys.stderr, leave=False, dynamic_ncols=True, **kwargs)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model; its hash keys the cache.

    Attributes:
        model: a model description for :func:`flatness.models.from_spec`.
        data: a dataset description for :func:`flatness.data.from_spec`.
        init_seed: seed of the weight initialization.
        init: warm start from the final weights of another configuration.
        device: where the model trains (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``). The
            device *type* enters the cache key, because the same run gives bitwise different
            weights on different kinds of device; the index does not (``"cuda:0"`` and
            ``"cuda:1"`` share a cache file). Cached weights are stored on the CPU and loaded
            onto the configured device.
        The remaining fields are the keyword arguments of :func:`train`.
    """

    model: dict
    data: dict
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    batch_size: Optional[int] = 64
    epochs: Optional[int] = None
    target_train_acc: Optional[float] = None
    max_epochs: int = 1000
    weight_decay: float = 0.0
    seed: int = 0
    init_seed: Optional[int] = None
    augment: Optional[dict] = None
    milestones: Tuple[int, ...] = ()
    lr_factor: float = 1.0
    batch_factor: int = 1
    track_sharpness_every: Optional[int] = None
    init: Optional["TrainConfig"] = None
    device: str = "cpu"

    def __post_init__(self):
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device: expected a torch device string such as 'cpu' or 'cuda', "
                             f"got {self.device!r}") from None

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(_jsonable(dataclasses.asdict(self)), sort_keys=True)

    def to_dict(self) -> dict:
        """The configuration as plain JSON data, as it enters the cache key (the device reduced
        to its type, recursively for ``init``)."""
        return json.loads(self.to_json())

    def key(self) -> str:
        """The cache key: a hash of the full configuration."""
        blob = json.dumps({"flatness_cache": CACHE_VERSION, "config": json.loads(self.to_json())},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _jsonable(obj):
    if isinstance(obj, dict):
        if "device" in obj and isinstance(obj["device"], str) and "model" in obj:
            obj = {**obj, "device": torch.device(obj["device"]).type}
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def build_model(config: TrainConfig) -> nn.Module:
    """The initialized (untrained) model of ``config``, seeded by ``init_seed`` (else ``seed``)."""
    seed = config.seed if config.init_seed is None else config.init_seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return models_module.from_spec(config.model)


#: The book's reference network: a 40-100-100-10 ReLU MLP trained on MNIST-1D with SGD and
#: momentum until 99 % training accuracy. Chapters that need "a trained MNIST-1D ReLU network"
#: load this configuration, so it is trained once and shared through the cache.
REFERENCE_MLP = TrainConfig(
    model={"name": "mlp", "input_dim": 40, "widths": [100, 100], "num_classes": 10},
    data={"name": "mnist1d"}, optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64,
    target_train_acc=0.99, max_epochs=300, seed=0)
