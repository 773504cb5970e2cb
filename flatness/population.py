r"""Train many small networks of one architecture as one batched computation.

On a CPU, training one small network is dominated by the fixed cost of each step (a few
hundred microseconds of Python and dispatch per layer), not by arithmetic. A *population* of
:math:`P` networks of one architecture stacks every parameter along a leading member axis —
:math:`W \in \mathbb{R}^{P\times d_\text{out}\times d_\text{in}}` — so that one step of all
members is one batched matrix product per layer (``torch.baddbmm`` for a linear layer, a
grouped convolution with ``groups = P`` for a 1-D or 2-D convolution) and one update per
parameter tensor, whatever :math:`P`.

:func:`train_population` trains such a population in place. Each member keeps everything that
:func:`flatness.training.train` lets one vary: its seed (data order and augmentation draws,
from its own ``torch.Generator``), learning rate, momentum, weight decay, augmentation,
learning-rate milestones, its stopping rule (fixed epochs, or target accuracy / target loss /
plateau with a cap), its attack weight γ (on an attack set shared by the population, drawn
from the member's own T stream) and its SAM radius ρ. A member that stops leaves the
population (its rows are dropped from the stacked tensors), so the cost of an epoch follows
the members still training. Each member follows
the trajectory :func:`~flatness.training.train` would give it, up to float32 rounding: the
same permutations and augmentation draws, the same update rule (``torch.optim.SGD`` with
momentum and L2 weight decay, ``torch.optim.Adam`` with its bias correction), the same
evaluation of the training accuracy after every epoch, and a history with the same keys.
Measured after an epoch of MNIST-1D: SGD members of the reference MLP are bitwise equal to
``train``'s, 1-D CNN members within max |Δθ| ≈ 2e-7 (the grouped convolution sums in another
order), Adam members within ≈ 1e-8 of theirs; after 3 epochs of small 2-D CNNs (cnn2d,
mlenet) within ≈ 1e-7, and attack/SAM/ASAM members of small MLPs within ≈ 2e-7. For ReLU
networks a sample whose pre-activation lies within rounding of a kink can turn such a
difference into a jump of the gradient, which the dynamics then carry on (seen once, while
developing: 1e-3 for one CNN of five).

:func:`load_or_train_many` is the batched :func:`flatness.cache.load_or_train`: it loads the
configurations already cached and trains the others in as few populations as possible, storing
each member under its own configuration's key, so that :func:`~flatness.cache.load_or_train`
finds it later.

Supported layers: ``nn.Sequential`` of ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` (zero
padding, one group), pooling (``nn.MaxPool1d/2d``, ``nn.AvgPool1d/2d``,
``nn.AdaptiveAvgPool1d/2d`` — global average pooling —, ``nn.AdaptiveMaxPool1d/2d``),
``nn.Flatten`` and the parameter-free activations of :data:`flatness.models.ACTIVATIONS` —
the MLPs, 1-D CNNs and 2-D CNNs (``cnn2d``, ``mlenet``) of :mod:`flatness.models`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_model, check_tensor_pair, is_integer, is_real, materialize
from .training import (
    ASAM_ETA,
    OPTIMIZERS,
    TrainConfig,
    _AttackStream,
    _check_classification_data,
    _check_stopping,
    _progress_enabled,
    _Stopper,
    _tqdm,
    augment_signals,
    train,
)

__all__ = ["population_plan", "stack_parameters", "population_forward", "train_population",
           "population_groups"]

#: Parameter-free elementwise modules that a population applies as they are.
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Identity)

#: Parameter-free modules that act on each sample separately (pooling), with the constructor
#: arguments that describe them: a population applies them to all members' samples at once.
_PER_SAMPLE = {
    nn.MaxPool1d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    nn.AvgPool1d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                   "divisor_override"),
    nn.AdaptiveAvgPool1d: ("output_size",),
    nn.AdaptiveAvgPool2d: ("output_size",),
    nn.AdaptiveMaxPool1d: ("output_size",),
    nn.AdaptiveMaxPool2d: ("output_size",),
}

#: Options of :func:`flatness.training.train` that describe one member's run.
_NOT_OPTIONS = ("test_data", "progress", "callbacks")


# --------------------------------------------------------------------------------------------
# the batched network
# --------------------------------------------------------------------------------------------

def population_plan(model: nn.Module, name: str = "models") -> Tuple[tuple, ...]:
    """The layer-by-layer description of ``model`` that a population evaluates in batch.

    Each entry is ``("linear", has_bias)``, ``("conv1d", has_bias, stride, padding,
    dilation)``, ``("conv2d", has_bias, stride, padding, dilation)`` (pairs for 2-D),
    ``("flatten",)``, ``("per_sample", class name, arguments)`` (pooling) or
    ``("elementwise", module)``, with the shapes of its parameters; two models with equal
    plans can be trained as one population.

    Args:
        model: an ``nn.Sequential`` of supported layers (see the module docstring).
        name: the argument name used in errors.

    Returns:
        A tuple of layer entries; the parameter shapes are the last element of each entry.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or not an ``nn.Sequential``.
        ValueError: a layer that cannot be batched exactly (BatchNorm, Dropout, grouped or
            non-zero-padded convolutions, nested containers, …), or frozen parameters.
    """
    check_model(model)
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"{name}: a population needs nn.Sequential models of Linear, Conv1d, "
                         f"Conv2d, pooling, Flatten and activation layers, got "
                         f"{type(model).__name__}")
    plan = []
    for i, layer in enumerate(model):
        shapes = tuple(tuple(p.shape) for p in layer.parameters())
        if isinstance(layer, nn.Linear):
            plan.append(("linear", layer.bias is not None, shapes))
        elif isinstance(layer, nn.Conv1d):
            if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding,
                                                                               str):
                raise ValueError(f"{name}: layer {i} ({layer}) is a grouped, non-zero-padded or "
                                 "'same'-padded convolution, which a population does not batch")
            plan.append(("conv1d", layer.bias is not None, layer.stride[0], layer.padding[0],
                         layer.dilation[0], shapes))
        elif isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding,
                                                                               str):
                raise ValueError(f"{name}: layer {i} ({layer}) is a grouped, non-zero-padded or "
                                 "'same'-padded convolution, which a population does not batch")
            plan.append(("conv2d", layer.bias is not None, tuple(layer.stride),
                         tuple(layer.padding), tuple(layer.dilation), shapes))
        elif type(layer) in _PER_SAMPLE:
            if getattr(layer, "return_indices", False):
                raise ValueError(f"{name}: layer {i} ({layer}) returns indices; a population "
                                 "supports pooling layers that return their output only")
            args = tuple((a, _frozen(getattr(layer, a))) for a in _PER_SAMPLE[type(layer)])
            plan.append(("per_sample", type(layer).__name__, args, shapes))
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise ValueError(f"{name}: layer {i} flattens dimensions {layer.start_dim} to "
                                 f"{layer.end_dim}; a population supports nn.Flatten() only")
            plan.append(("flatten", shapes))
        elif isinstance(layer, _ELEMENTWISE):
            plan.append(("elementwise", repr(layer), shapes))
        else:
            raise ValueError(f"{name}: layer {i} ({type(layer).__name__}) cannot be batched "
                             "exactly in a population (supported: Linear, Conv1d, Conv2d, "
                             "Max/Avg/AdaptiveAvg/AdaptiveMax pooling (1-D, 2-D), Flatten, "
                             "ReLU/LeakyReLU/Tanh/Sigmoid/GELU/Identity); train it with "
                             "flatness.training.train")
        if any(not p.requires_grad for p in layer.parameters()):
            raise ValueError(f"{name}: layer {i} has frozen parameters (requires_grad=False); "
                             "a population trains every parameter")
    if list(model.buffers()):
        raise ValueError(f"{name}: the model has buffers (running statistics), which a "
                         "population does not batch")
    if not list(model.parameters()):
        raise ValueError(f"{name}: the model has no parameters")
    return tuple(plan)


def _check_population(models, name: str = "models") -> Tuple[tuple, List[nn.Module]]:
    """The common plan of a non-empty population of same-architecture models on one device
    and dtype."""
    if isinstance(models, nn.Module) or not isinstance(models, Sequence):
        raise TypeError(f"{name}: expected a sequence of models, got {type(models).__name__}")
    models = list(models)
    if not models:
        raise ValueError(f"{name}: the population is empty; give at least one model")
    plan = population_plan(models[0], f"{name}[0]")
    p0 = next(models[0].parameters())
    for i, m in enumerate(models[1:], 1):
        other = population_plan(m, f"{name}[{i}]")
        if other != plan:
            raise ValueError(f"{name}: member {i} has a different architecture than member 0 "
                             f"({_describe(other)} vs {_describe(plan)}); mixed architectures "
                             "go in different populations")
        p = next(m.parameters())
        if p.device != p0.device:
            raise ValueError(f"{name}: member {i} is on {p.device} but member 0 is on "
                             f"{p0.device}; move them to one device")
        if p.dtype != p0.dtype or any(q.dtype != p0.dtype for q in m.parameters()):
            raise ValueError(f"{name}: member {i} has parameters of dtype {p.dtype} but member 0 "
                             f"has {p0.dtype}; convert them to one dtype")
    if len({id(m) for m in models}) != len(models):
        raise ValueError(f"{name}: the same model object appears twice; give distinct models")
    return plan, models


def _frozen(value):
    """A layer argument as a hashable, comparable value (lists become tuples)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _describe(plan) -> str:
    return "-".join(entry[0] + (str(entry[-1][0]) if entry[-1] else "") for entry in plan)


def stack_parameters(models: Sequence[nn.Module]) -> List[Tensor]:
    """Every parameter of a population stacked along a new leading member axis.

    Returns:
        One detached tensor ``(P, *shape)`` per parameter, in ``model.parameters()`` order.
    """
    per_model = [list(m.parameters()) for m in models]
    return [torch.stack([ps[j].detach() for ps in per_model]) for j in range(len(per_model[0]))]


def population_forward(plan: Sequence[tuple], params: Sequence[Tensor], x: Tensor,
                       shared: bool = False) -> Tensor:
    r"""The outputs of every member of a population on its inputs.

    A linear layer is :math:`y_p = x_p W_p^\top + b_p` for every member :math:`p` at once
    (``torch.baddbmm``); a 1-D or 2-D convolution runs as one convolution with ``groups = P``
    over the members' channels stacked side by side (member p's output channels see only its
    input channels: :math:`y_{p} = W_p * x_p + b_p`); a pooling layer runs once on the
    :math:`P n` samples of all members (it acts on each sample alone).

    Args:
        plan: from :func:`population_plan`.
        params: from :func:`stack_parameters` (or any tensors of those shapes).
        x: inputs ``(P, n, *input_shape)`` — one batch per member —, or ``(n, *input_shape)``
            shared by every member when ``shared``.
        shared: ``x`` is one batch for all members.

    Returns:
        The outputs ``(P, n, *output_shape)``.
    """
    P = params[0].shape[0]
    if shared:
        x = x.unsqueeze(0).expand(P, *x.shape)
    it = iter(params)
    for entry in plan:
        kind = entry[0]
        if kind == "linear":
            W = next(it)
            b = next(it) if entry[1] else None
            x2 = x if x.ndim == 3 else x.reshape(P, -1, x.shape[-1])
            if b is None:
                out = torch.bmm(x2, W.transpose(1, 2))
            else:
                out = torch.baddbmm(b.unsqueeze(1), x2, W.transpose(1, 2))
            x = out if x.ndim == 3 else out.reshape(*x.shape[:-1], W.shape[1])
        elif kind == "conv1d":
            W = next(it)
            b = next(it) if entry[1] else None
            _, stride, padding, dilation = entry[1:5]
            n, c, L = x.shape[1], x.shape[2], x.shape[3]
            xs = x.transpose(0, 1).reshape(n, P * c, L)
            out = F.conv1d(xs, W.reshape(P * W.shape[1], c, W.shape[3]),
                           None if b is None else b.reshape(-1), stride, padding, dilation, P)
            x = out.reshape(n, P, W.shape[1], out.shape[-1]).transpose(0, 1)
        elif kind == "conv2d":
            W = next(it)
            b = next(it) if entry[1] else None
            stride, padding, dilation = entry[2:5]
            n, c = x.shape[1], x.shape[2]
            xs = x.transpose(0, 1).reshape(n, P * c, x.shape[3], x.shape[4])
            out = F.conv2d(xs, W.reshape(P * W.shape[1], c, W.shape[3], W.shape[4]),
                           None if b is None else b.reshape(-1), stride, padding, dilation, P)
            x = out.reshape(n, P, W.shape[1], out.shape[-2], out.shape[-1]).transpose(0, 1)
        elif kind == "per_sample":
            n = x.shape[1]
            out = _per_sample(entry[1], entry[2])(x.reshape(P * n, *x.shape[2:]))
            x = out.reshape(P, n, *out.shape[1:])
        elif kind == "flatten":
            x = x.reshape(P, x.shape[1], -1)
        else:
            x = _elementwise(entry[1])(x)
    return x


@functools.lru_cache(maxsize=None)
def _per_sample(name: str, args: tuple) -> nn.Module:
    """The pooling module described by a ``("per_sample", name, args)`` plan entry."""
    return getattr(nn, name)(**dict(args))


def _elementwise(description: str) -> Callable[[Tensor], Tensor]:
    # the plan stores the module's repr so that plans compare by value; rebuild the function
    for cls in _ELEMENTWISE:
        if description.startswith(cls.__name__ + "("):
            if cls is nn.LeakyReLU:
                slope = float(description.split("negative_slope=")[1].rstrip(")").split(",")[0])
                return lambda x: F.leaky_relu(x, slope)
            if cls is nn.GELU:
                approximate = "tanh" if "tanh" in description else "none"
                return lambda x: F.gelu(x, approximate=approximate)
            return {nn.ReLU: torch.relu, nn.Tanh: torch.tanh, nn.Sigmoid: torch.sigmoid,
                    nn.Identity: lambda x: x}[cls]
    raise ValueError(f"plan: unknown layer {description}")  # pragma: no cover


def _evaluate(plan, params: List[Tensor], data, chunk_rows: int = 1 << 17
              ) -> Tuple[List[float], List[float]]:
    """Mean cross-entropy and accuracy of every member on shared data (one ``(X, y)`` pair or
    a list of pairs), as :func:`flatness.training.evaluate` computes them."""
    P = params[0].shape[0]
    loss_sum = torch.zeros(P, dtype=torch.float64)
    correct = torch.zeros(P, dtype=torch.int64)
    total = 0
    step = max(1, chunk_rows // P)
    with torch.no_grad():
        for X, y in data:
            for s in range(0, X.shape[0], step):
                xb, yb = X[s:s + step], y[s:s + step]
                out = population_forward(plan, params, xb, shared=True)
                n = xb.shape[0]
                losses = F.cross_entropy(out.reshape(P * n, -1), yb.repeat(P),
                                         reduction="none").reshape(P, n)
                loss_sum += losses.sum(1).double().cpu()
                correct += (out.argmax(-1) == yb).sum(1).cpu()
                total += n
    return (loss_sum / total).tolist(), (correct.double() / total).tolist()


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------

def _train_defaults() -> Dict[str, object]:
    """The keyword options of :func:`flatness.training.train` and their defaults."""
    return {k: p.default for k, p in inspect.signature(train).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in _NOT_OPTIONS}


def _check_options(options, P: int) -> List[dict]:
    """Each member's complete, validated options (train's defaults filled in)."""
    if options is None:
        options = [{}] * P
    elif isinstance(options, Mapping):
        options = [options] * P
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise TypeError(f"options: expected a dict or a sequence of dicts (one per model), got "
                        f"{type(options).__name__}")
    if len(options) != P:
        raise ValueError(f"options: {len(options)} option dicts for {P} models; give one per "
                         "model (or one dict for all)")
    defaults = _train_defaults()
    out = []
    for i, opts in enumerate(options):
        where = f"options[{i}]"
        if not isinstance(opts, Mapping):
            raise TypeError(f"{where}: expected a dict of train's keyword options, got "
                            f"{type(opts).__name__}")
        unknown = sorted(set(opts) - set(defaults))
        if unknown:
            extra = (" (callbacks cannot be batched: train that member with "
                     "flatness.training.train)" if "callbacks" in unknown else "")
            raise ValueError(f"{where}: unknown options {unknown}; expected some of "
                             f"{sorted(defaults)}{extra}")
        o = {**defaults, **opts}
        _check_member(o, where)
        o["milestones"] = frozenset(int(m) for m in o["milestones"])
        out.append(o)
    return out


def _check_member(o: dict, where: str) -> None:
    """The checks of :func:`flatness.training.train` on one member's options."""
    if o["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"{where}.optimizer: expected 'sgd', 'adam', 'sam' or 'asam', got "
                         f"{o['optimizer']!r}")
    _check_stopping(o["epochs"], o["target_train_acc"], o["target_train_loss"],
                    o["plateau_patience"], o["plateau_rtol"], o["max_epochs"], f"{where}.")
    gamma = o["attack_weight"]
    if not (is_real(gamma) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"{where}.attack_weight: expected a non-negative number, got {gamma!r}")
    if gamma > 0 and o["attack_data"] is None:
        raise ValueError(f"{where}.attack_weight: a positive attack weight ({gamma!r}) needs "
                         "attack_data, the (X_T, y_T) attack set")
    if o["attack_data"] is not None and not (isinstance(o["attack_data"], (tuple, list))
                                             and len(o["attack_data"]) == 2):
        raise TypeError(f"{where}.attack_data: expected an (X_T, y_T) pair of tensors, got "
                        f"{type(o['attack_data']).__name__}")
    rho = o["sam_rho"]
    if not (is_real(rho) and math.isfinite(rho) and rho >= 0):
        raise ValueError(f"{where}.sam_rho: expected a non-negative number, got {rho!r}")
    for key in ("lr", "lr_factor"):
        v = o[key]
        if not (is_real(v) and math.isfinite(v) and v > 0):
            raise ValueError(f"{where}.{key}: expected a positive number, got {v!r}")
    if not (is_real(o["momentum"]) and 0 <= o["momentum"] < 1):
        raise ValueError(f"{where}.momentum: expected a number in [0, 1), got {o['momentum']!r}")
    wd = o["weight_decay"]
    if not (is_real(wd) and math.isfinite(wd) and wd >= 0):
        raise ValueError(f"{where}.weight_decay: expected a non-negative number, got {wd!r}")
    bs = o["batch_size"]
    if bs is not None and (not is_integer(bs) or bs <= 0):
        raise ValueError(f"{where}.batch_size: expected a positive integer or None, got {bs!r}")
    if not is_integer(o["batch_factor"]) or o["batch_factor"] <= 0:
        raise ValueError(f"{where}.batch_factor: expected a positive integer, "
                         f"got {o['batch_factor']!r}")
    if not is_integer(o["seed"]):
        raise ValueError(f"{where}.seed: expected an integer, got {o['seed']!r}")
    ms = o["milestones"]
    if isinstance(ms, (str, bytes)) or not isinstance(ms, (Sequence, set, frozenset)) \
            or not all(is_integer(m) for m in ms):
        raise ValueError(f"{where}.milestones: expected a sequence of epoch numbers, got {ms!r}")
    if o["augment"] is not None and not isinstance(o["augment"], dict):
        raise ValueError(f"{where}.augment: expected None or a dict of augment_signals options, "
                         f"got {type(o['augment']).__name__}")


def _batch_schedule(o: dict, N: int):
    """What fixes a member's batch size at every epoch: it must be shared by a population."""
    B = N if o["batch_size"] is None else min(int(o["batch_size"]), N)
    if o["batch_factor"] == 1 or B >= N:
        return (B,)
    return (B, int(o["batch_factor"]), tuple(sorted(o["milestones"])))


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

def train_population(models: Sequence[nn.Module], train_data: Tuple[Tensor, Tensor], *,
                     test_data=None, options=None, progress: Optional[bool] = None,
                     on_member_done: Optional[Callable[[int, dict], None]] = None,
                     bar=None) -> List[dict]:
    r"""Train a population of same-architecture models in place, as one batched computation.

    Member :math:`p` runs exactly what ``flatness.training.train(models[p], train_data,
    test_data=test_data, **options[p])`` runs, up to float32 rounding: every epoch a
    permutation from its generator ``torch.Generator().manual_seed(seed)``, mini-batches of
    :math:`B` samples (the last one shorter), augmentation drawn from the same generator after
    the permutation, the mean cross-entropy of each batch — plus, with an attack set T,
    :math:`\gamma_p` times the mean cross-entropy of the member's next
    :math:`\min(B, |T|)` items of T from its own permutation stream (all of T when that is
    |T|; γ = 0 for all active members skips T, as ``train`` does) —, then the update

    * SGD: :math:`g \leftarrow \nabla L_B + \lambda\theta`,
      :math:`m \leftarrow \mu m + g` (:math:`m = g` at the first step),
      :math:`\theta \leftarrow \theta - \varepsilon m`;
    * Adam (:math:`\beta = (0.9, 0.999)`, :math:`\epsilon = 10^{-8}`):
      :math:`g \leftarrow \nabla L_B + \lambda\theta`, :math:`m \leftarrow \beta_1 m +
      (1-\beta_1) g`, :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2`,
      :math:`\theta \leftarrow \theta - \frac{\varepsilon}{1-\beta_1^t}\,
      \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}`;
    * SAM / ASAM: SGD's update with :math:`\nabla L_B` taken at :math:`\theta +
      \hat\epsilon_p` on the same batch, :math:`\hat\epsilon_p = \rho_p g_p/\lVert g_p
      \rVert_2` (ASAM: :math:`\rho_p T^2 g_p/\lVert T g_p\rVert_2`, :math:`T = |\theta| +
      0.01` on weights, 1 on biases), each member's norm over its own parameters; the ascent
      point is a separate tensor, so θ is never perturbed;

    and after every epoch the full training-set loss and accuracy (and the test set's). A
    member stops by :func:`~flatness.training.train`'s rules — after ``epochs`` epochs, or at
    the end of the first epoch whose training accuracy reaches ``target_train_acc``, whose
    training loss is at most ``target_train_loss`` or after which the loss has not improved by
    ``plateau_rtol`` for ``plateau_patience`` epochs, or at ``max_epochs`` — each member on its
    own (it leaves the population; its history's ``stop_reason`` says why); at a milestone it
    multiplies its learning rate by ``lr_factor`` and its batch size by ``batch_factor``. The
    population ends when every member has stopped. The models' modes are not changed (the
    supported layers do not depend on them).

    Args:
        models: the population: ``nn.Sequential`` models of one architecture (see
            :func:`population_plan`) on one device, one dtype; trained in place.
        train_data: the ``(X, y)`` training pair shared by all members.
        test_data: an optional ``(X, y)`` pair (or list of pairs) evaluated after every epoch.
        options: one dict per model (or one dict for all) of the keyword options of
            :func:`flatness.training.train` — ``optimizer``, ``lr``, ``momentum``,
            ``batch_size``, ``epochs``, ``target_train_acc``, ``target_train_loss``,
            ``plateau_patience``, ``plateau_rtol``, ``max_epochs``, ``weight_decay``,
            ``seed``, ``augment``, ``milestones``, ``lr_factor``, ``batch_factor`` — with
            ``attack_data``, ``attack_weight``, ``sam_rho`` — with train's defaults. Every
            member must use the same optimizer, the same batch-size schedule (``batch_size``,
            and ``milestones`` where ``batch_factor`` ≠ 1) and, where it has one, the same
            attack set (members without one have γ = 0).
        progress: show a tqdm bar of the members still training (default: on, unless
            ``FLATNESS_PROGRESS=0``).
        on_member_done: ``callback(index, history)`` called as soon as member ``index`` has
            stopped (its model already holds its final parameters), e.g. to cache it.
        bar: an existing tqdm bar to advance by one per finished member instead of a new one.

    Returns:
        One history per model, in order, with the keys and meaning of
        :func:`flatness.training.train`'s, ``device`` included (``seconds`` is the
        population's wall-clock time until that member stopped).

    Raises:
        TypeError: ``models`` not a sequence of modules, bad ``train_data`` or ``options``.
        ValueError: an empty population, mixed architectures, devices or dtypes, layers that
            cannot be batched, options ``train`` refuses, members with different optimizers or
            batch sizes, a loss that became NaN or infinite (naming the member).
    """
    plan, models = _check_population(models)
    P = len(models)
    opts = _check_options(options, P)
    if not (isinstance(train_data, (tuple, list)) and len(train_data) == 2):
        raise TypeError(f"train_data: a population needs an (X, y) pair of tensors, got "
                        f"{type(train_data).__name__}")
    X, y = check_tensor_pair(train_data, "train_data")
    loss_fn = nn.CrossEntropyLoss()
    _check_classification_data(models[0], X, y, loss_fn, "train_data")
    tests = None
    if test_data is not None:
        tests = materialize(test_data, "test_data")
        for Xt, yt in tests:
            _check_classification_data(models[0], Xt, yt, loss_fn, "test_data")
    N = int(X.shape[0])
    optimizer = {o["optimizer"] for o in opts}
    if len(optimizer) > 1:
        raise ValueError(f"options: members use different optimizers ({sorted(optimizer)}); "
                         "train them in different populations")
    adam = optimizer == {"adam"}
    sam = optimizer & {"sam", "asam"}
    adaptive = optimizer == {"asam"}
    attack = _check_attack_sets(models[0], X, opts, loss_fn)
    schedules = {_batch_schedule(o, N) for o in opts}
    if len(schedules) > 1:
        raise ValueError(f"options: members have different batch sizes or batch-size "
                         f"schedules ({sorted(schedules)}); members with different batch sizes "
                         "go in different populations")
    B = _batch_schedule(opts[0], N)[0]

    show = bar is None and _progress_enabled(progress)
    own_bar = _tqdm(total=P, desc="population", disable=not show) if bar is None else None
    bar_ = own_bar if own_bar is not None else bar
    start = time.perf_counter()
    device, dtype = X.device, next(models[0].parameters()).dtype
    keys = ("epoch", "steps", "lr", "batch_size", "train_loss", "train_acc", "test_loss",
            "test_acc")
    hists = [{k: [] for k in keys} for _ in range(P)]
    lrs = [float(o["lr"]) for o in opts]
    stoppers = [_Stopper(o["epochs"], o["target_train_acc"], o["target_train_loss"],
                         o["plateau_patience"], o["plateau_rtol"], o["max_epochs"]) for o in opts]
    limits = [st.limit for st in stoppers]
    gens = [torch.Generator().manual_seed(int(o["seed"])) for o in opts]
    streams = {i: _AttackStream(*attack, o["seed"]) for i, o in enumerate(opts)
               if o["attack_data"] is not None}
    active = list(range(P))
    epoch = steps = 0

    def column(values) -> Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    def finish(i: int, reason: str) -> None:
        h = hists[i]
        if tests is None:
            del h["test_loss"], h["test_acc"]
        h.update(epochs=len(h["epoch"]), total_steps=h["steps"][-1] if h["steps"] else 0,
                 reached_target=reason in ("target_acc", "target_loss"), stop_reason=reason,
                 seconds=time.perf_counter() - start)
        h["device"] = str(next(models[i].parameters()).device)
        if bar_ is not None:
            bar_.update(1)
        if on_member_done is not None:
            on_member_done(i, h)

    try:
        for i in [i for i in active if limits[i] == 0]:
            finish(i, "epochs")
        active = [i for i in active if limits[i] > 0]
        if not active:
            return hists
        params = [p.requires_grad_(True) for p in stack_parameters([models[i] for i in active])]
        state = [[torch.zeros_like(p) for p in params] for _ in range(2 if adam else 1)]
        with torch.enable_grad():
            while active:
                epoch += 1
                A = len(active)
                lr_t = column([lrs[i] for i in active])
                mom_t = column([float(opts[i]["momentum"]) for i in active])
                wd = [float(opts[i]["weight_decay"]) for i in active]
                wd_t = column(wd) if any(wd) else None
                use_momentum = any(opts[i]["momentum"] for i in active)
                # one value per member, shaped to broadcast over each stacked parameter
                lr_v = [lr_t.view(_column_shape(p)) for p in params]
                neg_lr_v = [(-lr_t).view(_column_shape(p)) for p in params]
                mom_v = [mom_t.view(_column_shape(p)) for p in params]
                wd_v = [wd_t.view(_column_shape(p)) for p in params] if wd_t is not None else None
                gammas = [float(opts[i]["attack_weight"]) for i in active]
                gamma_t = column(gammas) if any(gammas) else None
                rho_t = column([float(opts[i]["sam_rho"]) for i in active]) if sam else None
                augmented = [(k, opts[i]["augment"]) for k, i in enumerate(active)
                             if opts[i]["augment"]]
                perms = torch.stack([torch.randperm(N, generator=gens[i]) for i in active])
                perms = perms.to(device)
                for s in range(0, N, B):
                    idx = perms[:, s:s + B]
                    xb, yb = X[idx], y[idx]
                    if augmented:
                        rows = list(xb.unbind(0))
                        for k, aug in augmented:
                            rows[k] = augment_signals(rows[k], gens[active[k]], **aug)
                        xb = torch.stack(rows)
                    # T's batches: every member with an attack set advances its own stream
                    t_rows = [streams[i].indices(B) if i in streams else None for i in active]
                    tb = None
                    if gamma_t is not None:
                        tb = _attack_batch(attack, t_rows, B)

                    def member_losses(ps) -> Tensor:
                        out = population_forward(plan, ps, xb)
                        n = xb.shape[1]
                        losses = F.cross_entropy(out.reshape(A * n, -1), yb.reshape(-1),
                                                 reduction="none").reshape(A, n).mean(1)
                        if tb is not None:
                            shared = tb[0].ndim == X.ndim
                            out_t = population_forward(plan, ps, tb[0], shared=shared)
                            m = out_t.shape[1]
                            yt = tb[1].repeat(A) if shared else tb[1].reshape(-1)
                            losses = losses + gamma_t * F.cross_entropy(
                                out_t.reshape(A * m, -1), yt, reduction="none"
                            ).reshape(A, m).mean(1)
                        return losses

                    def check(losses: Tensor, where: str = "") -> Tensor:
                        total = losses.sum()
                        if not math.isfinite(float(total.detach())):  # one sync, as train's
                            k = int((~torch.isfinite(losses)).nonzero()[0])
                            raise ValueError(
                                f"training diverged: member {active[k]}'s loss{where} is "
                                f"{float(losses[k])} at epoch {epoch}, step {steps + 1} "
                                f"(lr={lrs[active[k]]:g}, batch_size={B}); lower lr")
                        return total

                    total = check(member_losses(params))
                    grads = torch.autograd.grad(total, params)
                    if sam:  # the gradient at θ + ε̂ on the same batch; θ is not touched
                        with torch.no_grad():
                            eps = _population_sam_perturbation(params, grads, rho_t, adaptive)
                            ascent = [(p.detach() + e).requires_grad_(True)
                                      for p, e in zip(params, eps)]
                        total = check(member_losses(ascent), " at SAM's ascent point")
                        grads = torch.autograd.grad(total, ascent)
                    steps += 1
                    with torch.no_grad():
                        for j, (p, g) in enumerate(zip(params, grads)):
                            if wd_t is not None:
                                g = torch.addcmul(g, p, wd_v[j])
                            if adam:
                                _adam_update(p, g, state[0][j], state[1][j], steps, lr_v[j])
                            else:
                                if use_momentum:
                                    g = state[0][j].mul_(mom_v[j]).add_(g)
                                p.addcmul_(g, neg_lr_v[j])
                train_loss, train_acc = _evaluate(plan, params, [(X, y)])
                test = _evaluate(plan, params, tests) if tests is not None else None
                keep = []
                for k, i in enumerate(active):
                    if not math.isfinite(train_loss[k]):
                        raise ValueError(f"training diverged: member {i}'s training loss is "
                                         f"{train_loss[k]} after epoch {epoch}; lower lr")
                    h = hists[i]
                    h["epoch"].append(epoch)
                    h["steps"].append(steps)
                    h["lr"].append(lrs[i])
                    h["batch_size"].append(B)
                    h["train_loss"].append(train_loss[k])
                    h["train_acc"].append(train_acc[k])
                    if test is not None:
                        h["test_loss"].append(test[0][k])
                        h["test_acc"].append(test[1][k])
                    reason = stoppers[i].update(epoch, train_loss[k], train_acc[k])
                    if reason is not None:
                        with torch.no_grad():
                            for q, p in zip(models[i].parameters(), params):
                                q.copy_(p[k])
                        finish(i, reason)
                        continue
                    keep.append(k)
                    if epoch in opts[i]["milestones"]:
                        lrs[i] *= float(opts[i]["lr_factor"])
                if keep:  # the kept members share one batch-size schedule (checked above)
                    first = opts[active[keep[0]]]
                    if epoch in first["milestones"]:
                        B = min(N, B * int(first["batch_factor"]))
                if len(keep) < A:
                    sel = torch.tensor(keep, dtype=torch.long, device=device)
                    params = [p.detach()[sel].requires_grad_(True) for p in params]
                    state = [[t[sel] for t in ts] for ts in state]
                    active = [active[k] for k in keep]
    finally:
        if own_bar is not None:
            own_bar.close()
    return hists


def _check_attack_sets(model: nn.Module, X: Tensor, opts: List[dict], loss_fn
                       ) -> Optional[Tuple[Tensor, Tensor]]:
    """The attack set T shared by the members that have one (None when none has)."""
    sets = [(i, o["attack_data"]) for i, o in enumerate(opts) if o["attack_data"] is not None]
    if not sets:
        return None
    i0, (X_T, y_T) = sets[0]
    where = f"options[{i0}].attack_data"
    X_T, y_T = check_tensor_pair((X_T, y_T), where)
    for i, (Xi, yi) in sets[1:]:
        same = (Xi is X_T and yi is y_T) or (
            isinstance(Xi, Tensor) and isinstance(yi, Tensor) and Xi.shape == X_T.shape
            and yi.shape == y_T.shape and torch.equal(Xi, X_T) and torch.equal(yi, y_T))
        if not same:
            raise ValueError(f"options[{i}].attack_data: members use different attack sets; "
                             "members with different attack sets go in different populations")
    if X_T.device != X.device:
        raise ValueError(f"{where}: it is on {X_T.device} but train_data is on {X.device}")
    if X_T.shape[1:] != X.shape[1:] or X_T.dtype != X.dtype:
        raise ValueError(f"{where}: inputs of shape {tuple(X_T.shape[1:])} and dtype "
                         f"{X_T.dtype}, but the training inputs have shape "
                         f"{tuple(X.shape[1:])} and dtype {X.dtype}")
    _check_classification_data(model, X_T, y_T, loss_fn, where)
    return X_T, y_T


def _attack_batch(attack: Tuple[Tensor, Tensor], rows: List[Optional[Tensor]], B: int):
    """The members' T batches: all of T, shared (``(n_T, ...)``), when ``min(B, |T|) = |T|``;
    else ``(A, b, ...)`` from each member's indices (a member without an attack set, whose
    weight is 0, gets T's first ``b`` items)."""
    X_T, y_T = attack
    b = min(int(B), int(X_T.shape[0]))
    if b >= X_T.shape[0]:
        return X_T, y_T
    filler = torch.arange(b)
    idx = torch.stack([filler if r is None else r for r in rows]).to(X_T.device)
    return X_T[idx], y_T[idx]


def _population_sam_perturbation(params: Sequence[Tensor], grads: Sequence[Tensor],
                                 rho: Tensor, adaptive: bool) -> List[Tensor]:
    r"""Each member's SAM (or ASAM) ascent step :math:`\hat\epsilon_p`, as
    :func:`flatness.training._sam_perturbation` computes it for one model: SAM
    :math:`\rho_p g_p/\lVert g_p\rVert_2`, ASAM :math:`\rho_p T_p^2 g_p/\lVert T_p g_p\rVert_2`
    (:math:`T = |\theta| + \eta` on weight tensors, 1 on biases), zero for a zero gradient."""
    A = params[0].shape[0]
    if adaptive:  # a stacked weight has three or more dimensions, a stacked bias two
        scales = [p.detach().abs() + ASAM_ETA if p.ndim >= 3 else None for p in params]
        scaled = [g if t is None else g * t for g, t in zip(grads, scales)]
    else:
        scales, scaled = [None] * len(params), list(grads)
    norm = torch.sqrt(sum((s.double() ** 2).reshape(A, -1).sum(1) for s in scaled))
    norm32 = norm.to(grads[0].dtype)
    factor = torch.where(norm > 0, rho / torch.where(norm > 0, norm32, torch.ones_like(norm32)),
                         torch.zeros_like(norm32))
    return [factor.view(_column_shape(s)) * (s if t is None else s * t)
            for s, t in zip(scaled, scales)]


def _column_shape(p: Tensor) -> Tuple[int, ...]:
    """The shape that broadcasts one value per member over a stacked tensor ``p``."""
    return (p.shape[0],) + (1,) * (p.ndim - 1)


def _adam_update(p: Tensor, g: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int,
                 lr: Tensor, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """One step of ``torch.optim.Adam`` (its single-tensor CPU path) on stacked members."""
    beta1, beta2 = betas
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    p.sub_((lr / bias_correction1) * exp_avg / denom)


# --------------------------------------------------------------------------------------------
# configurations and the cache
# --------------------------------------------------------------------------------------------

def _member_options(config: TrainConfig, where: str) -> dict:
    """``config``'s options of :func:`flatness.training.train`; refuses what cannot be batched."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"{where}: expected a TrainConfig, got {type(config).__name__}")
    if config.init is not None:
        raise ValueError(f"{where}: a warm start (init) cannot be trained in a population")
    if config.track_sharpness_every:
        raise ValueError(f"{where}: sharpness tracking (track_sharpness_every) cannot be "
                         "batched in a population")
    names = _train_defaults()
    opts = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name in names}
    opts["milestones"] = tuple(opts["milestones"])
    return opts


def _batchable(config: TrainConfig) -> bool:
    """Whether ``config`` can train in a population: no warm start, no sharpness tracking
    (those train one by one through :func:`flatness.cache.load_or_train`)."""
    return config.init is None and not config.track_sharpness_every


def population_groups(configs: Sequence[TrainConfig]) -> List[List[int]]:
    """Indices of ``configs`` that can train as one population, in order of first appearance.

    Members of one population share the model and data descriptions, the device type, the
    optimizer, the attack-set spec (``attack``) and the batch-size schedule (``batch_size``, and
    ``milestones`` where ``batch_factor`` ≠ 1); a configuration with a warm start (``init``) or
    sharpness tracking is a group of its own.

    Raises:
        TypeError: an element that is not a :class:`~flatness.training.TrainConfig`.
    """
    groups: Dict[object, List[int]] = {}
    for i, c in enumerate(configs):
        if not isinstance(c, TrainConfig):
            raise TypeError(f"configs[{i}]: expected a TrainConfig, got {type(c).__name__}")
        if not _batchable(c):
            groups[("single", i)] = [i]
            continue
        schedule = (c.batch_size,) if c.batch_factor == 1 else (
            c.batch_size, c.batch_factor, tuple(sorted(c.milestones)))
        device = getattr(c, "device", "cpu")
        key = (json.dumps([c.model, c.data, getattr(c, "attack", None)], sort_keys=True),
               torch.device(device).type, c.optimizer, schedule)
        groups.setdefault(key, []).append(i)
    return list(groups.values())
