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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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


#: What ends a run, as ``history["stop_reason"]`` records it.
STOP_REASONS = ("target_acc", "target_loss", "plateau", "max_epochs", "epochs")

#: Optimizers of :func:`train`: ``"sam"`` and ``"asam"`` are SGD on the sharpness-aware gradient.
OPTIMIZERS = ("sgd", "adam", "sam", "asam")

#: ASAM's η: the normalization operator is :math:`T_\theta = |\theta| + \eta` on weight tensors.
ASAM_ETA = 0.01


def _check_stopping(epochs, target_train_acc, target_train_loss, plateau_patience,
                    plateau_rtol, max_epochs, where: str = "") -> None:
    """The checks of the stopping options of :func:`train` (``where`` prefixes the names)."""
    rules = (target_train_acc, target_train_loss, plateau_patience)
    if (epochs is None) == all(r is None for r in rules):
        raise ValueError(f"{where}epochs, {where}target_train_acc: give exactly one of them "
                         "(epochs, or stopping rules — target_train_acc, target_train_loss "
                         "and/or plateau_patience, capped by max_epochs)")
    if epochs is not None and (not is_integer(epochs) or epochs < 0):
        raise ValueError(f"{where}epochs: expected a non-negative integer, got {epochs!r}")
    if target_train_acc is not None and not (is_real(target_train_acc)
                                             and 0 < target_train_acc <= 1):
        raise ValueError(f"{where}target_train_acc: expected a value in (0, 1], "
                         f"got {target_train_acc!r}")
    if target_train_loss is not None and not (is_real(target_train_loss)
                                              and math.isfinite(target_train_loss)
                                              and target_train_loss > 0):
        raise ValueError(f"{where}target_train_loss: expected a positive finite number, "
                         f"got {target_train_loss!r}")
    if plateau_patience is not None and (not is_integer(plateau_patience)
                                         or plateau_patience <= 0):
        raise ValueError(f"{where}plateau_patience: expected a positive integer or None, "
                         f"got {plateau_patience!r}")
    if not (is_real(plateau_rtol) and 0 <= plateau_rtol < 1):
        raise ValueError(f"{where}plateau_rtol: expected a number in [0, 1), got {plateau_rtol!r}")
    if not is_integer(max_epochs) or max_epochs <= 0:
        raise ValueError(f"{where}max_epochs: expected a positive integer, got {max_epochs!r}")


class _Stopper:
    r"""The stopping rules of one run, applied at the end of every epoch.

    With ``epochs`` the run stops after that many epochs (reason ``"epochs"``). Otherwise it
    stops at the end of the first epoch :math:`e` where one of the rules given holds, in this
    order of precedence:

    * ``"target_acc"``: the training accuracy :math:`a_e \ge` ``target_train_acc``;
    * ``"target_loss"``: the training loss :math:`L_e \le` ``target_train_loss``;
    * ``"plateau"``: none of the last ``plateau_patience`` epochs improved, where epoch
      :math:`e` *improves* when :math:`L_e < (1 - r)\,L^*` with :math:`r` = ``plateau_rtol``
      and :math:`L^*` the loss of the last improving epoch (the first epoch always improves);

    or else at ``max_epochs`` (``"max_epochs"``).
    """

    def __init__(self, epochs, target_train_acc, target_train_loss, plateau_patience,
                 plateau_rtol, max_epochs):
        self.fixed = epochs is not None
        self.limit = int(epochs) if epochs is not None else int(max_epochs)
        self.acc = None if target_train_acc is None else float(target_train_acc)
        self.loss = None if target_train_loss is None else float(target_train_loss)
        self.patience = None if plateau_patience is None else int(plateau_patience)
        self.rtol = float(plateau_rtol)
        self.best, self.since = math.inf, 0

    def update(self, epoch: int, train_loss: float, train_acc: float) -> Optional[str]:
        """The reason to stop after ``epoch`` (1-based), or None to go on."""
        if self.patience is not None:
            if train_loss < (1 - self.rtol) * self.best:
                self.best, self.since = train_loss, 0
            else:
                self.since += 1
        if not self.fixed:
            if self.acc is not None and train_acc >= self.acc:
                return "target_acc"
            if self.loss is not None and train_loss <= self.loss:
                return "target_loss"
            if self.patience is not None and self.since >= self.patience:
                return "plateau"
        if epoch >= self.limit:
            return "epochs" if self.fixed else "max_epochs"
        return None


def _attack_seed(seed: int) -> int:
    """The seed of the attack set's own generator, a fixed function of the run's ``seed``."""
    return (int(seed) + 0x9E3779B97F4A7C15) % 2 ** 64


class _AttackStream:
    """Mini-batches of the attack set T from its own permutation stream.

    Each call takes the next ``b = min(B, |T|)`` indices of the current permutation of T, and
    draws a new permutation (from its own generator, seeded by :func:`_attack_seed`) when fewer
    than ``b`` remain; when ``b = |T|`` it returns all of T in its stored order without drawing.
    """

    def __init__(self, X: Tensor, y: Tensor, seed: int):
        self.X, self.y = X, y
        self.n = int(X.shape[0])
        self.gen = torch.Generator().manual_seed(_attack_seed(seed))
        self.perm, self.pos = None, 0

    def indices(self, batch_size: int) -> Optional[Tensor]:
        """The next ``min(batch_size, |T|)`` indices into T (None: all of T, in order)."""
        b = min(int(batch_size), self.n)
        if b >= self.n:
            return None
        if self.perm is None or self.pos + b > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos:self.pos + b]
        self.pos += b
        return idx

    def next(self, batch_size: int) -> Tuple[Tensor, Tensor]:
        idx = self.indices(batch_size)
        if idx is None:
            return self.X, self.y
        idx = idx.to(self.X.device)
        return self.X[idx], self.y[idx]


def _sam_perturbation(params: Sequence[Tensor], grads: Sequence[Tensor], rho: float,
                      adaptive: bool) -> List[Tensor]:
    r"""The ascent step :math:`\hat\epsilon` of SAM (or of adaptive SAM) from the gradient ``g``.

    SAM: :math:`\hat\epsilon = \rho\, g / \lVert g\rVert_2`. ASAM:
    :math:`\hat\epsilon = \rho\, T_\theta^2 g / \lVert T_\theta g\rVert_2` with
    :math:`T_\theta = |\theta| + \eta` elementwise on tensors of two or more dimensions (weights)
    and :math:`T_\theta = 1` on vectors (biases), :math:`\eta` = :data:`ASAM_ETA`. The norms run
    over all parameters together; a zero gradient gives :math:`\hat\epsilon = 0`.
    """
    if adaptive:
        scales = [p.detach().abs() + ASAM_ETA if p.ndim >= 2 else None for p in params]
        scaled = [g if t is None else g * t for g, t in zip(grads, scales)]
    else:
        scales, scaled = [None] * len(params), list(grads)
    norm = torch.sqrt(sum((s.double() ** 2).sum() for s in scaled))
    if float(norm) == 0:
        return [torch.zeros_like(g) for g in grads]
    factor = rho / norm.to(grads[0].dtype)
    return [factor * (s if t is None else s * t) for s, t in zip(scaled, scales)]


def train(model: nn.Module, train_data: Tuple[Tensor, Tensor], *, test_data=None,
          optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.0,
          batch_size: Optional[int] = 64, epochs: Optional[int] = None,
          target_train_acc: Optional[float] = None, max_epochs: int = 1000,
          weight_decay: float = 0.0, seed: int = 0, augment: Optional[dict] = None,
          milestones: Sequence[int] = (), lr_factor: float = 1.0, batch_factor: int = 1,
          progress: Optional[bool] = None, callbacks: Sequence[Callable] = (),
          target_train_loss: Optional[float] = None, plateau_patience: Optional[int] = None,
          plateau_rtol: float = 1e-3, attack_data: Optional[Tuple[Tensor, Tensor]] = None,
          attack_weight: float = 0.0, sam_rho: float = 0.05) -> dict:
    r"""Train ``model`` in place and return its history.

    **Stopping.** Training stops after ``epochs`` epochs, or — with stopping rules instead —
    at the end of the first epoch whose full training-set accuracy (eval mode) reaches
    ``target_train_acc``, whose full training-set loss (eval mode) is at most
    ``target_train_loss``, or after which the training loss has not improved by a relative
    ``plateau_rtol`` for ``plateau_patience`` epochs (epoch :math:`e` improves when
    :math:`L_e < (1-r) L^*`, :math:`L^*` the loss of the last improving epoch), whichever comes
    first, or at ``max_epochs``. The rules combine; ``history["stop_reason"]`` says which ended
    the run (:data:`STOP_REASONS`).

    **Objective.** Each step minimizes the mean cross-entropy of a mini-batch of the training
    set S; with ``attack_data`` T and ``attack_weight`` γ (Wu, Zhu & E 2017's attack set) it
    minimizes

    .. math:: \ell(\theta) = \frac{1}{|b_S|}\sum_{i\in b_S}\ell_i(\theta)
              + \gamma\,\frac{1}{|b_T|}\sum_{j\in b_T}\ell_j(\theta),

    where :math:`b_T` holds the next :math:`\min(B, |T|)` samples of T's own permutation stream
    (a generator seeded from ``seed``, so S's data order and augmentation are those of a run
    without T; all of T when ``batch_size`` is None or ≥ |T|). T is not augmented; γ = 0 skips
    the forward pass on T, so it trains exactly as without ``attack_data``. The stopping rules
    and the history look at S only.

    **Optimizers.** ``"sgd"`` (momentum μ, L2 weight decay λ: :math:`g \leftarrow \nabla\ell +
    \lambda\theta`, :math:`m \leftarrow \mu m + g`, :math:`\theta \leftarrow \theta -
    \varepsilon m`), ``"adam"``, and sharpness-aware minimization over that same SGD:
    ``"sam"`` (Foret et al. 2021) takes the SGD step with the gradient
    :math:`\nabla\ell(\theta + \hat\epsilon)`, :math:`\hat\epsilon = \rho\,\nabla\ell(\theta)/
    \lVert\nabla\ell(\theta)\rVert_2`, computed on the same mini-batch (same augmentation, same
    T batch); ``"asam"`` (adaptive SAM, Kwon et al. 2021) uses :math:`\hat\epsilon = \rho\,
    T_\theta^2\nabla\ell / \lVert T_\theta\nabla\ell\rVert_2` with :math:`T_\theta = |\theta| +
    0.01` on weight tensors and 1 on biases. Weight decay enters at θ, not at θ + ε̂. The
    parameters are restored bitwise to θ before the step, whatever happens.

    Args:
        model: the network (trained in place).
        train_data: the ``(X, y)`` training pair.
        test_data: an optional ``(X, y)`` pair evaluated after every epoch.
        optimizer: ``"sgd"``, ``"adam"``, ``"sam"`` or ``"asam"``.
        lr: learning rate ε.
        momentum: SGD momentum (also for SAM/ASAM; ignored by Adam).
        batch_size: mini-batch size B; ``None`` or ≥ N gives full-batch gradient descent.
        epochs: a fixed number of epochs (exclusive with the stopping rules).
        target_train_acc: stop when the training accuracy reaches this value in (0, 1].
        max_epochs: the cap when training with stopping rules.
        weight_decay: L2 penalty coefficient passed to the optimizer.
        seed: seeds the data order and augmentation (and T's order).
        augment: keyword arguments of :func:`augment_signals` (``shift``, ``scale``, ``noise``).
        milestones: epochs after which the learning rate is multiplied by ``lr_factor`` and the
            batch size by ``batch_factor`` (Smith et al. 2018's schedules).
        progress: show a tqdm bar (default: on, unless ``FLATNESS_PROGRESS=0``).
        callbacks: callables ``callback(epoch, model, history)`` run after every epoch; a
            callback's optional ``start(model, history)`` runs before the first step and its
            optional ``end(epoch, model, history)`` after the last (for example
            :class:`flatness.curvature.SharpnessTracker`).
        target_train_loss: stop when the training loss is at most this positive value.
        plateau_patience: stop when the training loss has not improved for this many epochs.
        plateau_rtol: the relative improvement r that counts, in [0, 1).
        attack_data: the ``(X_T, y_T)`` attack set (on the training data's device).
        attack_weight: γ ≥ 0; a positive γ needs ``attack_data``.
        sam_rho: SAM's radius ρ ≥ 0 (``"sam"``/``"asam"`` only; ρ = 0 is SGD).

    Returns:
        A dict of per-epoch lists (``epoch``, ``steps``, ``lr``, ``batch_size``, ``train_loss``,
        ``train_acc`` and, with test data, ``test_loss``, ``test_acc``) and totals
        (``epochs``, ``total_steps``, ``reached_target`` — True when ``target_train_acc`` or
        ``target_train_loss`` ended the run —, ``stop_reason``, ``seconds``) and the ``device``
        it ran on. Training runs where the model's parameters are; the data must be there too.

    Raises:
        TypeError: ``model`` not a module, ``train_data`` not a pair of tensors (a DataLoader
            included: train shuffles and batches the tensors itself), inputs of a dtype the
            model cannot take, labels that are not integers.
        ValueError: bad options (named), bad ``test_data`` or ``attack_data``, labels out of
            range, inputs that are not finite, or a loss that became NaN or infinite
            (divergence).
    """
    check_model(model)
    if not (isinstance(train_data, (tuple, list)) and len(train_data) == 2):
        raise TypeError(f"train_data: train needs an (X, y) pair of tensors (it shuffles and "
                        f"batches them itself), got {type(train_data).__name__}")
    X, y = check_tensor_pair(train_data, "train_data")
    N = X.shape[0]
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected 'sgd', 'adam', 'sam' or 'asam', got {optimizer!r}")
    _check_stopping(epochs, target_train_acc, target_train_loss, plateau_patience, plateau_rtol,
                    max_epochs)
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
    if not (is_real(attack_weight) and math.isfinite(attack_weight) and attack_weight >= 0):
        raise ValueError(f"attack_weight: expected a non-negative number, got {attack_weight!r}")
    if attack_weight > 0 and attack_data is None:
        raise ValueError(f"attack_weight: a positive attack weight ({attack_weight!r}) needs "
                         "attack_data, the (X_T, y_T) attack set")
    if not (is_real(sam_rho) and math.isfinite(sam_rho) and sam_rho >= 0):
        raise ValueError(f"sam_rho: expected a non-negative number, got {sam_rho!r}")
    loss_fn = nn.CrossEntropyLoss()
    _check_classification_data(model, X, y, loss_fn, "train_data")
    if test_data is not None:
        for Xt, yt in materialize(test_data, "test_data"):
            _check_classification_data(model, Xt, yt, loss_fn, "test_data")
    stream = None
    if attack_data is not None:
        if not (isinstance(attack_data, (tuple, list)) and len(attack_data) == 2):
            raise TypeError(f"attack_data: expected an (X_T, y_T) pair of tensors, got "
                            f"{type(attack_data).__name__}")
        X_T, y_T = check_tensor_pair(attack_data, "attack_data")
        if X_T.device != X.device:
            raise ValueError(f"attack_data: it is on {X_T.device} but train_data is on "
                             f"{X.device}")
        if X_T.shape[1:] != X.shape[1:] or X_T.dtype != X.dtype:
            raise ValueError(f"attack_data: inputs of shape {tuple(X_T.shape[1:])} and dtype "
                             f"{X_T.dtype}, but the training inputs have shape "
                             f"{tuple(X.shape[1:])} and dtype {X.dtype}")
        _check_classification_data(model, X_T, y_T, loss_fn, "attack_data")
        stream = _AttackStream(X_T, y_T, seed)
    gamma = float(attack_weight)
    N, B = int(N), N if batch_size is None else min(int(batch_size), int(N))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: it has no parameters that require gradients")
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=float(lr), weight_decay=float(weight_decay))
    else:
        opt = torch.optim.SGD(params, lr=float(lr), momentum=float(momentum),
                              weight_decay=float(weight_decay))
    sam = optimizer in ("sam", "asam")
    gen = torch.Generator().manual_seed(int(seed))
    stopper = _Stopper(epochs, target_train_acc, target_train_loss, plateau_patience,
                       plateau_rtol, max_epochs)
    limit = stopper.limit
    hist: Dict[str, list] = {k: [] for k in ("epoch", "steps", "lr", "batch_size", "train_loss",
                                             "train_acc", "test_loss", "test_acc")}
    start, steps, reason = time.perf_counter(), 0, "epochs" if limit == 0 else None
    modes = {m: m.training for m in model.modules()}
    bar = _tqdm(total=limit, desc="train", disable=not _progress_enabled(progress))
    epoch = 0

    def objective(xb: Tensor, yb: Tensor, tb) -> Tensor:
        loss = loss_fn(model(xb), yb)
        if tb is not None and gamma != 0:
            loss = loss + gamma * loss_fn(model(tb[0]), tb[1])
        return loss

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
                    tb = stream.next(B) if stream is not None else None
                    opt.zero_grad(set_to_none=True)
                    loss = objective(xb, yb, tb)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise ValueError(f"training diverged: the loss is {value} at epoch "
                                         f"{epoch}, step {steps + 1} (lr="
                                         f"{opt.param_groups[0]['lr']:g}, batch_size={B}); "
                                         "lower lr")
                    loss.backward()
                    if sam:
                        _sam_gradient(params, lambda: objective(xb, yb, tb), float(sam_rho),
                                      optimizer == "asam")
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
                reason = stopper.update(epoch, train_loss, train_acc)
                if reason is not None:
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
    hist.update(epochs=epoch, total_steps=steps,
                reached_target=reason in ("target_acc", "target_loss"), stop_reason=reason,
                seconds=time.perf_counter() - start, device=str(params[0].device))
    return hist


def _sam_gradient(params: Sequence[Tensor], closure: Callable[[], Tensor], rho: float,
                  adaptive: bool) -> None:
    r"""Replace the gradients :math:`g = \nabla\ell(\theta)` in ``params[i].grad`` by SAM's
    :math:`\nabla\ell(\theta + \hat\epsilon)` (:func:`_sam_perturbation`), evaluating
    ``closure`` (the same mini-batch's objective) at :math:`\theta + \hat\epsilon`; the
    parameters are restored bitwise to θ afterwards, also on an error."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    with torch.no_grad():
        eps = _sam_perturbation(params, grads, rho, adaptive)
        saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.add_(e)
        for p in params:
            p.grad = None
        loss = closure()
        if not math.isfinite(float(loss.detach())):
            raise ValueError(f"training diverged: the loss at SAM's ascent point is "
                             f"{float(loss.detach())} (sam_rho={rho:g}); lower lr or sam_rho")
        loss.backward()
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


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
        attack: a data spec whose *training* split is the attack set T of :func:`train`
            (``attack_data``), weighted by ``attack_weight``.
        The remaining fields are the keyword arguments of :func:`train`.

    The fields added after the first release (:data:`_LATER_FIELDS`: ``target_train_loss``,
    ``plateau_patience``, ``plateau_rtol``, ``attack``, ``attack_weight``, ``sam_rho``) enter
    the JSON and the cache key only when they differ from their defaults, so that the key of
    every configuration that does not use them is the one it had before they existed.
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
    target_train_loss: Optional[float] = None
    plateau_patience: Optional[int] = None
    plateau_rtol: float = 1e-3
    attack: Optional[dict] = None
    attack_weight: float = 0.0
    sam_rho: float = 0.05

    def __post_init__(self):
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device: expected a torch device string such as 'cpu' or 'cuda', "
                             f"got {self.device!r}") from None
        if self.attack is not None and not isinstance(self.attack, dict):
            raise ValueError(f"attack: expected None or a data spec (a dict) for "
                             f"flatness.data.from_spec, got {type(self.attack).__name__}")

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The configuration as sorted JSON (later fields at their defaults left out)."""
        return json.dumps(_jsonable(_drop_later_defaults(dataclasses.asdict(self))),
                          sort_keys=True)

    def to_dict(self) -> dict:
        """The configuration as plain JSON data, as it enters the cache key (the device reduced
        to its type, recursively for ``init``)."""
        return json.loads(self.to_json())

    def key(self) -> str:
        """The cache key: a hash of the full configuration."""
        blob = json.dumps({"flatness_cache": CACHE_VERSION, "config": json.loads(self.to_json())},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


#: Fields added to :class:`TrainConfig` later, with their defaults: left out of its JSON (and
#: key) at these values, so that older configurations keep their cache keys.
_LATER_FIELDS = {"target_train_loss": None, "plateau_patience": None, "plateau_rtol": 1e-3,
                 "attack": None, "attack_weight": 0.0, "sam_rho": 0.05}


def _drop_later_defaults(d: dict) -> dict:
    """``dataclasses.asdict`` of a TrainConfig without the later fields at their defaults
    (recursively through ``init``)."""
    def at_default(k, v) -> bool:
        default = _LATER_FIELDS[k]
        if default is None or v is None:
            return v is None and default is None
        return not isinstance(v, bool) and v == default

    out = {k: v for k, v in d.items() if not (k in _LATER_FIELDS and at_default(k, v))}
    if isinstance(out.get("init"), dict):
        out["init"] = _drop_later_defaults(out["init"])
    return out


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
