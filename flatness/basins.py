r"""Good and bad minima, basins of attraction and the Hessian (Wu, Zhu & E 2017).

Wu, Zhu & E find *bad* minima — 100 % training accuracy, test accuracy near chance — by adding
to the training loss an attack term on data whose labels are all wrong,

.. math:: \min_\theta\; \frac1{|S|}\sum_{i\in S}\ell_i(\theta)
          + \gamma\,\frac1{|T|}\sum_{j\in T}\ell_j(\theta),

and measure the inverse volume of a minimum's basin by its top Hessian eigenvalues or the
Hessian's Frobenius norm. This module holds the pieces of that study:

* :func:`attack_set` — the attack set's wrong labels (the data spec ``{"name": "attack", ...}``
  of :func:`flatness.data.from_spec` builds T from it);
* :func:`log_volume` — :math:`-\sum_{i\le k}\log\lambda_i` over the top-k positive eigenvalues;
* :func:`frobenius_fd` and :func:`fd_study` — the seed's finite-difference estimate of
  :math:`\lVert H\rVert_F` and its bias/variance against δ and M;
* :func:`two_layer_decomposition` and :func:`complexity_bound` — the 2-layer analysis:
  :math:`H = \hat F + R` for the least-squares loss and the bound of the hypothesis complexity
  :math:`\mathbb E_x\lVert\nabla_x f\rVert^2` by the Fisher information and the Hessian;
* :func:`spectrum_counts`, :func:`perturb` and :func:`is_bad` — helpers for the spectra and the
  basin-of-attraction restarts.
"""

from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .checks import check_tensor_pair, evaluation, materialize
from .data import wrong_labels
from .operators import dense_hessian

__all__ = ["attack_set", "log_volume", "frobenius_fd", "fd_study", "fd_relative_sd",
           "squared_error", "two_layer_decomposition", "complexity_bound", "spectrum_counts",
           "perturb", "is_bad", "weight_norm", "measure_minimum", "rank_correlation_interval",
           "restarts", "relu_flips", "INIT_SCHEMES", "attack_spec", "two_layer_config", "population_runs",
           "build_population", "cnn_pair", "spectra_of", "fd_comparison", "spectrum_figure", "volume_figure"]


def attack_set(data, num_classes: int, seed: int = 0) -> Tuple[Tensor, Tensor]:
    r"""The same inputs with labels drawn from the wrong classes only.

    :math:`y'_i = (y_i + r_i) \bmod C`, :math:`r_i` uniform on :math:`\{1,\dots,C-1\}`: uniform
    among the :math:`C-1` wrong classes, never the true one, the same for the same ``seed``
    (:func:`flatness.data.wrong_labels`).

    Args:
        data: an ``(X, y)`` pair with integer labels in ``[0, num_classes)``.
        num_classes: :math:`C \ge 2`.
        seed: seeds the draw.

    Returns:
        ``(X, y_wrong)``; ``X`` is the same tensor.

    Raises:
        TypeError: ``data`` not a tensor pair, labels not integers.
        ValueError: ``num_classes`` < 2 or labels out of range.

    >>> X, y = torch.zeros(5, 2), torch.tensor([0, 1, 2, 3, 0])
    >>> _, yw = attack_set((X, y), 4)
    >>> bool((yw != y).all())
    True
    """
    X, y = check_tensor_pair(data, "data")
    return X, wrong_labels(y, num_classes, seed)


def log_volume(eigenvalues, k: int) -> float:
    r"""The seed's log basin volume, :math:`-\sum_{i\le k}\log\lambda_i`, over the ``k`` largest
    *positive* eigenvalues (so :math:`\log\prod_{i\le k}\lambda_i` is its negative, the log
    inverse volume).

    Non-positive eigenvalues (directions not yet converged, or flat ones) are dropped before the
    top k are taken: a volume of a quadratic basin counts only curved directions. The
    eigenvalues need not be sorted. Fewer than ``k`` positive eigenvalues — including a list
    shorter than ``k`` (eigenvalues that were not computed) — is an error, not a silent
    shorter product.

    Args:
        eigenvalues: a 1-D sequence, array or tensor of real eigenvalues.
        k: how many of the largest positive ones enter.

    Returns:
        :math:`-\sum_{i\le k}\log\lambda_{(i)}`.

    Raises:
        ValueError: ``k`` not a positive integer, NaN/inf eigenvalues, or fewer than ``k``
            positive ones.

    >>> round(log_volume([4.0, -1.0, 1.0, 2.0], k=2), 12) == round(-math.log(8.0), 12)
    True
    """
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    lam = np.asarray(eigenvalues.detach().cpu() if isinstance(eigenvalues, Tensor) else eigenvalues,
                     dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(lam)):
        raise ValueError("eigenvalues: expected finite numbers, found NaN or inf")
    pos = np.sort(lam[lam > 0])[::-1]
    if len(pos) < k:
        raise ValueError(f"k: {k} exceeds the {len(pos)} positive eigenvalues given "
                         f"(of {len(lam)} eigenvalues)")
    return float(-np.log(pos[:k]).sum())


def _flat_params(model: nn.Module) -> Tuple[List[str], List[Tensor]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model: it has no parameters that require gradients")
    return [n for n, _ in named], [p for _, p in named]


def _full_gradient(model, names, params, batches, loss_fn, weights) -> Tensor:
    """The gradient of the sample-weighted mean loss at ``params`` (a functional call)."""
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_(True) for p in params]
        state = dict(zip(names, leaves))
        total = None
        for (X, y), w in zip(batches, weights):
            loss = loss_fn(torch.func.functional_call(model, state, (X,)), y) * w
            total = loss if total is None else total + loss
        grads = torch.autograd.grad(total, leaves)
    return torch.cat([g.reshape(-1) for g in grads])


def _check_fd_args(num_vectors, delta):
    if not isinstance(num_vectors, int) or isinstance(num_vectors, bool) or num_vectors <= 0:
        raise ValueError(f"num_vectors: expected a positive integer M, got {num_vectors!r}")
    if not (isinstance(delta, (int, float)) and not isinstance(delta, bool)
            and math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta: expected a positive finite step δ, got {delta!r}")


def _fd_samples(model, loss_fn, data, num_vectors, deltas, seed, dtype) -> Tensor:
    """Per-vector values ``‖∇L(θ+δv_j) − ∇L(θ)‖² / δ²``, shape ``(len(deltas), M)``."""
    work = model if dtype is None else copy.deepcopy(model).to(dtype)
    batches = materialize(data)
    if dtype is not None:
        batches = [(X.to(dtype) if X.is_floating_point() else X,
                    y.to(dtype) if y.is_floating_point() else y) for X, y in batches]
    sizes = [X.shape[0] for X, _ in batches]
    weights = [n / sum(sizes) for n in sizes]
    names, params = _flat_params(work)
    shapes = [p.shape for p in params]
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.empty(len(deltas), num_vectors, dtype=torch.float64)
    with evaluation(work, None):
        g0 = _full_gradient(work, names, params, batches, loss_fn, weights)
        for j in range(num_vectors):
            v = torch.randn(theta.numel(), generator=gen, dtype=torch.float64)
            v = v.to(dtype=theta.dtype, device=theta.device)
            for a, d in enumerate(deltas):
                shifted = theta + d * v
                pieces = list(torch.split(shifted, [int(np.prod(s)) for s in shapes]))
                moved = [q.reshape(s) for q, s in zip(pieces, shapes)]
                g = _full_gradient(work, names, moved, batches, loss_fn, weights)
                out[a, j] = float(((g - g0).double() ** 2).sum()) / float(d) ** 2
    return out


def frobenius_fd(model: nn.Module, loss_fn, data, num_vectors: int, delta: float,
                 seed: int = 0, dtype: Optional[torch.dtype] = None,
                 return_samples: bool = False):
    r"""Wu, Zhu & E's finite-difference estimate of the Hessian's Frobenius norm,

    .. math:: \lVert H\rVert_F^2 \approx \frac{1}{M\delta^2}\sum_{j=1}^M
              \lVert\nabla L(\theta+\delta v_j) - \nabla L(\theta)\rVert^2,
              \qquad v_j\sim\mathcal N(0, I),

    which rests on :math:`\lVert H\rVert_F^2 = \mathbb E_v\lVert Hv\rVert^2`. With exact
    products (:func:`flatness.curvature.hessian_frobenius`) each term has variance
    :math:`2\operatorname{tr}H^4` (Gaussian probes); the difference quotient adds a truncation
    bias :math:`\tfrac{\delta^2}{4}\mathbb E\lVert\nabla^3L[v,v]\rVert^2 + O(\delta^2)`
    (the odd terms vanish in expectation) and a round-off term that grows like
    :math:`(\epsilon\lVert\nabla L\rVert/\delta)^2` with the working precision :math:`\epsilon`
    (float32 by default: the model's dtype). See :func:`fd_study`.

    Args:
        model: the network; not changed (gradients at shifted parameters are functional calls).
        loss_fn: a mean-reduced loss.
        data: an ``(X, y)`` pair or an iterable of pairs (weighted by their sizes).
        num_vectors: :math:`M \ge 1`.
        delta: the step :math:`\delta > 0`.
        seed: seeds the Gaussian directions (drawn in float64 on the CPU, then cast).
        dtype: compute in this dtype on a copy (default: the model's own).
        return_samples: also return the ``M`` per-direction values (float64 tensor).

    Returns:
        The estimate of :math:`\lVert H\rVert_F` (the square root of the mean), or
        ``(estimate, samples)``.

    Raises:
        ValueError: ``num_vectors`` ≤ 0, ``delta`` ≤ 0, a model without trainable parameters.
    """
    _check_fd_args(num_vectors, delta)
    s = _fd_samples(model, loss_fn, data, num_vectors, [float(delta)], seed, dtype)[0]
    est = float(s.mean()) ** 0.5
    return (est, s) if return_samples else est


def relu_flips(model: nn.Module, data, deltas: Sequence[float], num_vectors: int,
               seed: int = 0) -> List[float]:
    r"""How many ReLU pre-activations change sign between :math:`\theta` and
    :math:`\theta + \delta v_j`, averaged over the directions of :func:`frobenius_fd` (the same
    ``seed`` gives the same :math:`v_j`), for each δ.

    A ReLU network's gradient jumps where a pre-activation crosses zero; the Hessian that autograd
    returns is that of the piece the parameters sit on, so every crossing adds to
    :math:`\lVert\nabla L(\theta+\delta v)-\nabla L(\theta)\rVert^2` a term that the Hessian does
    not have. Zero flips means the finite difference sees one linear piece.

    Args:
        model: a network whose ReLUs are ``nn.ReLU`` modules; not changed.
        data: an ``(X, y)`` pair or an iterable of pairs (only the inputs are used).
        deltas: the steps δ > 0.
        num_vectors: M directions.
        seed: as for :func:`frobenius_fd`.

    Returns:
        The mean number of sign changes per direction, one per δ.
    """
    deltas = [float(d) for d in deltas]
    for d in deltas:
        _check_fd_args(num_vectors, d)
    batches = materialize(data)
    names, params = _flat_params(model)
    shapes = [p.shape for p in params]
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    seen: List[Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach() > 0)) for m in relus]

    def signs(vec):
        seen.clear()
        state = dict(zip(names, [q.reshape(s) for q, s in
                                 zip(torch.split(vec, [int(np.prod(s)) for s in shapes]), shapes)]))
        with torch.no_grad():
            for X, _ in batches:
                torch.func.functional_call(model, state, (X,))
        return [t.clone() for t in seen]

    gen = torch.Generator().manual_seed(int(seed))
    counts = np.zeros(len(deltas))
    try:
        with evaluation(model, None):
            base = signs(theta)
            for _ in range(num_vectors):
                v = torch.randn(theta.numel(), generator=gen, dtype=torch.float64)
                v = v.to(dtype=theta.dtype, device=theta.device)
                for a, d in enumerate(deltas):
                    counts[a] += sum(int((s0 != s1).sum()) for s0, s1 in zip(base, signs(theta + d * v)))
    finally:
        for h in hooks:
            h.remove()
    return [float(c) / num_vectors for c in counts]


def fd_relative_sd(H: Tensor) -> float:
    r"""The relative standard deviation of one term :math:`\lVert Hv\rVert^2`,
    :math:`v\sim\mathcal N(0,I)`, about :math:`\lVert H\rVert_F^2`:
    :math:`\sqrt{2\operatorname{tr}H^4}/\operatorname{tr}H^2`. The estimate of
    :math:`\lVert H\rVert_F^2` from ``M`` directions has ``fd_relative_sd(H) / sqrt(M)``.

    >>> round(fd_relative_sd(torch.eye(4, dtype=torch.float64)), 12)  # sqrt(2·4)/4
    0.707106781187
    """
    H = torch.as_tensor(H, dtype=torch.float64)
    H2 = H @ H
    return float(torch.sqrt(2 * (H2 * H2).sum()) / torch.trace(H2))


def fd_study(model: nn.Module, loss_fn, data, deltas: Sequence[float], num_vectors: int,
             exact_squared: float, seed: int = 0, dtype: Optional[torch.dtype] = None
             ) -> List[Dict[str, float]]:
    r"""Bias and spread of :func:`frobenius_fd` against δ, with common directions.

    The same ``num_vectors`` Gaussian directions serve every δ, so differences between rows
    are the δ-dependence, not sampling noise.

    Args:
        model, loss_fn, data, seed, dtype: as for :func:`frobenius_fd`.
        deltas: the steps δ to try.
        num_vectors: M directions.
        exact_squared: the reference :math:`\lVert H\rVert_F^2` (from the dense Hessian).

    Returns:
        One row per δ: ``delta``, ``estimate`` (of :math:`\lVert H\rVert_F^2` from all M),
        ``relative_bias`` (estimate / exact − 1), ``relative_se`` (the standard error of that
        mean over the M terms, relative to the exact value) and ``relative_sd`` (one term's).

    Raises:
        ValueError: bad ``deltas``, ``num_vectors`` or ``exact_squared``.
    """
    deltas = [float(d) for d in deltas]
    if not deltas:
        raise ValueError("deltas: expected at least one step")
    for d in deltas:
        _check_fd_args(num_vectors, d)
    if not (math.isfinite(exact_squared) and exact_squared > 0):
        raise ValueError(f"exact_squared: expected a positive number, got {exact_squared!r}")
    S = _fd_samples(model, loss_fn, data, num_vectors, deltas, seed, dtype)
    rows = []
    for d, s in zip(deltas, S):
        sd = float(s.std(unbiased=True)) if num_vectors > 1 else float("nan")
        rows.append({"delta": d, "estimate": float(s.mean()),
                     "relative_bias": float(s.mean()) / exact_squared - 1.0,
                     "relative_se": sd / math.sqrt(num_vectors) / exact_squared,
                     "relative_sd": sd / exact_squared})
    return rows


class _HalfSquaredError(nn.Module):
    """:math:`\\tfrac{1}{2n}\\sum_i\\lVert f(x_i) - Y_i\\rVert^2` (a mean over samples)."""

    reduction = "mean"

    def forward(self, out: Tensor, target: Tensor) -> Tensor:
        return 0.5 * ((out - target) ** 2).reshape(out.shape[0], -1).sum(1).mean()


def squared_error() -> nn.Module:
    r"""The least-squares loss of the seed's 2-layer analysis,
    :math:`L = \frac1{2n}\sum_i\lVert f(x_i)-Y_i\rVert^2` (Y one-hot for classes)."""
    return _HalfSquaredError()


def _two_layer_parts(model: nn.Module):
    if not (isinstance(model, nn.Sequential) and len(model) == 3
            and isinstance(model[0], nn.Linear) and isinstance(model[1], nn.ReLU)
            and isinstance(model[2], nn.Linear)):
        raise ValueError("model: expected a 2-layer ReLU network nn.Sequential(Linear, ReLU, "
                         "Linear), as flatness.models.mlp(d, (m,), K) builds")
    if model[0].bias is None:
        raise ValueError("model: the hidden layer needs a bias (the bound uses ∂f/∂b)")
    return model[0], model[2]


def _one_hot(y: Tensor, K: int, dtype) -> Tensor:
    if y.is_floating_point():
        return y.to(dtype)
    return torch.nn.functional.one_hot(y.long(), K).to(dtype)


def _jacobians(model: nn.Module, X: Tensor):
    """Per-sample Jacobians of the outputs w.r.t. the parameters (n, K, P) and inputs (n, K, d)."""
    names, params = _flat_params(model)
    state = {n: p.detach() for n, p in zip(names, params)}

    def f(st, x):
        return torch.func.functional_call(model, st, (x.unsqueeze(0),)).squeeze(0)

    Jp = torch.func.vmap(torch.func.jacrev(f), in_dims=(None, 0))(state, X)
    Jp = torch.cat([Jp[n].reshape(X.shape[0], -1, state[n].numel()) for n in names], 2)
    Jx = torch.func.vmap(torch.func.jacrev(f, argnums=1), in_dims=(None, 0))(state, X)
    return names, Jp, Jx.reshape(X.shape[0], Jx.shape[1], -1)


def two_layer_decomposition(model: nn.Module, data) -> Dict[str, Tensor]:
    r"""The seed's split of the least-squares Hessian of a 2-layer network (float64, dense):

    .. math:: \nabla^2_\theta L = \underbrace{\frac1n\sum_i J_i^\top J_i}_{\hat F}
              + \underbrace{\frac1n\sum_i\sum_c (f_c(x_i)-Y_{ic})\,\nabla^2_\theta f_c(x_i)}_{R},

    :math:`J_i = \partial f(x_i)/\partial\theta`, :math:`L = \frac1{2n}\sum_i\lVert f(x_i)-Y_i\rVert^2`.
    :math:`\hat F` is the empirical Fisher information of the Gaussian model
    :math:`y\sim\mathcal N(f(x;\theta), I)`; :math:`R` the fitting-residual term. For ReLU,
    :math:`\partial^2 f/\partial\theta_a^2 = 0` for every parameter (σ'' = 0 off the kinks), so
    :math:`\operatorname{tr}R = 0` and :math:`\operatorname{tr}\nabla^2L = \operatorname{tr}\hat F`
    whatever the targets.

    Args:
        model: ``nn.Sequential(Linear, ReLU, Linear)``; not changed.
        data: ``(X, y)``; integer labels become one-hot targets, float targets are used as
            they are.

    Returns:
        ``{"hessian": H, "fisher": F̂, "residual": R = H − F̂}``, each ``P × P`` float64, in the
        order of ``model.parameters()``.
    """
    _two_layer_parts(model)
    X, y = check_tensor_pair(data, "data")
    net = copy.deepcopy(model).double()
    X = X.double()
    K = net[2].out_features
    Y = _one_hot(y, K, torch.float64)
    H = dense_hessian(net, squared_error(), (X, Y), dtype=torch.float64, eval_mode=True)
    _, Jp, _ = _jacobians(net, X)
    F = torch.einsum("nkp,nkq->pq", Jp, Jp) / X.shape[0]
    return {"hessian": H, "fisher": F, "residual": H - F}


def complexity_bound(model: nn.Module, data, hessian: Optional[str] = "dense",
                     num_vectors: int = 30, seed: int = 0, chunk: int = 64) -> Dict[str, float]:
    r"""The 2-layer bound of the hypothesis complexity, both sides (float64).

    For :math:`f_c(x) = \sum_k A_{ck}\,\sigma(w_k^\top x + b_k) + c_c` with ReLU σ,
    :math:`\nabla_x f_c = \sum_k g_{ck} w_k` and :math:`\partial f_c/\partial b_k = g_{ck}`,
    :math:`g_{ck} = A_{ck}\sigma'(w_k^\top x+b_k)`. Cauchy–Schwarz gives, for every x,

    .. math:: \lVert\nabla_x f\rVert_F^2 \le \lVert W\rVert_F^2\,\lVert\partial f/\partial b\rVert_F^2
              \le \lVert W\rVert_F^2\,\lVert\partial f/\partial\theta\rVert_F^2,

    so, averaging over the samples, :math:`C := \frac1n\sum_i\lVert\nabla_x f(x_i)\rVert^2 \le
    \lVert W\rVert_F^2\operatorname{tr}\hat F_{bb} \le \lVert W\rVert_F^2\operatorname{tr}\hat F`.
    With the least-squares Hessian (:func:`two_layer_decomposition`),
    :math:`\operatorname{tr}\hat F = \operatorname{tr}H` (ReLU) and
    :math:`\operatorname{tr}H \le \sqrt{P}\,\lVert H\rVert_F`, so
    :math:`C \le \lVert W\rVert_F^2\sqrt P\,\lVert H\rVert_F`.

    Args:
        model: ``nn.Sequential(Linear, ReLU, Linear)``; not changed.
        data: ``(X, y)`` (labels one-hot for the least-squares Hessian).
        hessian: ``"dense"`` builds the least-squares Hessian (``P`` products) and also returns
            its trace and the residual term; ``"estimate"`` estimates only
            :math:`\lVert H\rVert_F` with ``num_vectors`` exact products
            (:func:`flatness.curvature.hessian_frobenius`); ``None``: the Fisher side only.
        num_vectors, seed: the probes of ``"estimate"``.
        chunk: samples per batch of per-sample Jacobians (memory only).

    Returns:
        ``complexity`` (C), ``weight_norm_sq`` (:math:`\lVert W\rVert_F^2`, first layer),
        ``fisher_trace_bias`` (:math:`\operatorname{tr}\hat F_{bb}`), ``fisher_trace``,
        ``bound_bias`` and ``bound_fisher`` (the two right-hand sides), ``num_parameters``
        and, with a Hessian, ``hessian_frobenius`` and ``bound_hessian``
        (:math:`\lVert W\rVert_F^2\sqrt P\lVert H\rVert_F`); ``"dense"`` adds
        ``hessian_trace``, ``residual_trace`` and ``residual_frobenius``.

    Raises:
        ValueError: not a 2-layer ReLU network with a hidden bias, an unknown ``hessian``.
    """
    _two_layer_parts(model)
    if hessian not in ("dense", "estimate", None):
        raise ValueError(f"hessian: expected 'dense', 'estimate' or None, got {hessian!r}")
    X, y = check_tensor_pair(data, "data")
    net = copy.deepcopy(model).double().eval()
    Xd = X.double()
    n = Xd.shape[0]
    offsets, start = {}, 0
    for name, p in net.named_parameters():
        offsets[name] = (start, start + p.numel())
        start += p.numel()
    P = start
    lo, hi = offsets["0.bias"]
    cx = cb = cp = 0.0
    for i in range(0, n, chunk):
        _, Jp, Jx = _jacobians(net, Xd[i:i + chunk])
        cx += float((Jx ** 2).sum())
        cb += float((Jp[:, :, lo:hi] ** 2).sum())
        cp += float((Jp ** 2).sum())
    W2 = float((net[0].weight.detach() ** 2).sum())
    out = {"complexity": cx / n, "weight_norm_sq": W2, "fisher_trace_bias": cb / n,
           "fisher_trace": cp / n, "num_parameters": P}
    out["bound_bias"] = W2 * out["fisher_trace_bias"]
    out["bound_fisher"] = W2 * out["fisher_trace"]
    if hessian == "dense":
        parts = two_layer_decomposition(model, (X, y))
        H, R = parts["hessian"], parts["residual"]
        out.update(hessian_trace=float(torch.trace(H)),
                   hessian_frobenius=float(torch.linalg.matrix_norm(H)),
                   residual_trace=float(torch.trace(R)),
                   residual_frobenius=float(torch.linalg.matrix_norm(R)))
    elif hessian == "estimate":
        from .curvature import hessian_frobenius

        Y = _one_hot(y, net[2].out_features, torch.float64)
        out["hessian_frobenius"] = hessian_frobenius(net, squared_error(), (Xd, Y),
                                                     num_matvecs=num_vectors, seed=seed)
    if hessian is not None:
        out["bound_hessian"] = W2 * math.sqrt(P) * out["hessian_frobenius"]
    return out


def restarts(model: nn.Module, train_data, test_data, radii: Sequence[float],
             seeds: Sequence[int], **train_options) -> List[Dict[str, float]]:
    r"""Basin-of-attraction probes: from :func:`perturb` ``(model, r, seed)`` for every radius
    and seed, train on ``train_data`` alone (:func:`flatness.training.train` with
    ``train_options``, e.g. ``lr``, ``momentum``, ``target_train_acc``, ``max_epochs``) and
    record where the run ends. ``model`` is not changed.

    Returns:
        One row per (radius, seed): ``radius``, ``seed``, ``start_test_acc``, ``test_acc``,
        ``train_acc``, ``epochs``.
    """
    from .training import evaluate, train

    rows = []
    for r in radii:
        for s in seeds:
            net = perturb(model, float(r), seed=int(s))
            start = evaluate(net, test_data)[1]
            h = train(net, train_data, seed=int(s), progress=False, **train_options)
            rows.append({"radius": float(r), "seed": int(s), "start_test_acc": start,
                         "test_acc": evaluate(net, test_data)[1], "train_acc": h["train_acc"][-1],
                         "epochs": h["epochs"]})
    return rows


def spectrum_counts(eigenvalues, tol: float) -> Dict[str, int]:
    r"""How many eigenvalues are negative (:math:`\lambda < -\text{tol}`), near zero
    (:math:`|\lambda|\le\text{tol}`) and positive (:math:`\lambda > \text{tol}`).

    >>> spectrum_counts([-2.0, -1e-9, 0.0, 3.0], tol=1e-6)
    {'negative': 1, 'near_zero': 2, 'positive': 1, 'total': 4}
    """
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol: expected a non-negative number, got {tol!r}")
    lam = np.asarray(eigenvalues.detach().cpu() if isinstance(eigenvalues, Tensor) else eigenvalues,
                     dtype=np.float64).reshape(-1)
    return {"negative": int((lam < -tol).sum()), "near_zero": int((np.abs(lam) <= tol).sum()),
            "positive": int((lam > tol).sum()), "total": int(lam.size)}


def weight_norm(model: nn.Module) -> float:
    r""":math:`\lVert\theta\rVert_2` over the trainable parameters."""
    _, params = _flat_params(model)
    return float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in params)))


def perturb(model: nn.Module, radius: float, seed: int = 0) -> nn.Module:
    r"""A copy of ``model`` moved a relative distance ``radius`` in a random direction:
    :math:`\theta' = \theta + \text{radius}\cdot\lVert\theta\rVert\,u`, u uniform on the unit
    sphere (a normalized Gaussian drawn in float64 on the CPU from ``seed``). The model itself is
    not changed.

    Raises:
        ValueError: a negative or non-finite ``radius``.
    """
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius >= 0):
        raise ValueError(f"radius: expected a non-negative number, got {radius!r}")
    new = copy.deepcopy(model)
    _, params = _flat_params(new)
    P = sum(p.numel() for p in params)
    u = torch.randn(P, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    step = radius * weight_norm(model) * u / u.norm()
    with torch.no_grad():
        i = 0
        for p in params:
            p.add_(step[i:i + p.numel()].reshape(p.shape).to(p.dtype).to(p.device))
            i += p.numel()
    return new


def is_bad(test_accuracy: float, good_accuracy: float, num_classes: int) -> bool:
    r"""A minimum is *bad* when its test accuracy is closer to chance than to the good level:
    below the midpoint :math:`(1/C + a_\text{good})/2`.

    >>> is_bad(0.3, good_accuracy=0.9, num_classes=10), is_bad(0.8, 0.9, 10)
    (True, False)
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: expected an integer ≥ 2, got {num_classes!r}")
    return bool(test_accuracy < 0.5 * (1.0 / num_classes + good_accuracy))


def measure_minimum(model: nn.Module, train_data, test_data, k: int = 10,
                    num_vectors: int = 20, delta: float = 1e-3, seed: int = 0,
                    loss_fn=None) -> Dict[str, object]:
    r"""The flatness numbers of one minimum that the chapter compares with its test accuracy.

    All on the training set S with the cross-entropy loss (default): the top ``k`` eigenvalues
    (:func:`flatness.curvature.top_eigenvalues`, float64), the log inverse volume
    :math:`\log\prod_{i\le k}\lambda_i = -`:func:`log_volume` (over the positive ones among the
    top ``k``; NaN when fewer than ``k`` are positive), :math:`\lambda_{\max}`, the trace
    (:func:`flatness.curvature.hessian_trace`), :math:`\lVert H\rVert_F` by exact products
    (:func:`flatness.curvature.hessian_frobenius`, ``num_vectors`` probes) and by the seed's finite
    differences (:func:`frobenius_fd`, float32 as the seed, the same ``num_vectors`` and
    ``delta``), and the weight norm :math:`\lVert\theta\rVert`.

    Returns:
        A dict: ``train_acc``, ``test_acc``, ``top`` (list), ``log_inv_volume``, ``lambda_max``,
        ``trace``, ``frobenius``, ``frobenius_fd``, ``weight_norm``.
    """
    from .curvature import hessian_frobenius, hessian_trace, top_eigenvalues
    from .training import evaluate

    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    top = top_eigenvalues(model, loss_fn, train_data, k=k, tol=1e-4, seed=seed,
                          dtype=torch.float64).eigenvalues
    top = [float(v) for v in top]
    try:
        liv = -log_volume(top, k)
    except ValueError:
        liv = float("nan")
    return {"train_acc": evaluate(model, train_data, loss_fn)[1],
            "test_acc": evaluate(model, test_data, loss_fn)[1],
            "top": top, "log_inv_volume": liv, "lambda_max": top[0],
            "trace": hessian_trace(model, loss_fn, train_data, num_matvecs=60, seed=seed,
                                   dtype=torch.float64),
            "frobenius": hessian_frobenius(model, loss_fn, train_data, num_matvecs=num_vectors,
                                           seed=seed, dtype=torch.float64),
            "frobenius_fd": frobenius_fd(model, loss_fn, train_data, num_vectors, delta, seed=seed),
            "weight_norm": weight_norm(model)}


def rank_correlation_interval(x: Sequence[float], y: Sequence[float], name: str,
                              n_resamples: int = 2000, seed: int = 0, unit: str = "minima"):
    r"""Spearman's :math:`\rho(x, y)` with a percentile-bootstrap interval over the pairs
    (:func:`flatness.stats.bootstrap_ci` of the resampled indices), as a
    :class:`flatness.claims.Measurement`; pairs with a NaN are dropped.

    Raises:
        ValueError: sequences of different lengths, fewer than three complete pairs.

    >>> m = rank_correlation_interval([1, 2, 3, 4, 5], [2, 4, 6, 8, 11], "ρ")
    >>> round(m.estimate, 12)
    1.0
    """
    from scipy.stats import spearmanr

    from .claims import Measurement
    from .stats import bootstrap_ci

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x, y: expected 1-D sequences of one length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3:
        raise ValueError(f"x, y: expected at least three complete pairs, got {a.size}")

    def rho(idx):
        i = idx.astype(int)
        if np.ptp(a[i]) == 0 or np.ptp(b[i]) == 0:
            return 0.0  # a resample without spread carries no rank information
        return float(spearmanr(a[i], b[i]).statistic)

    ci = bootstrap_ci(np.arange(a.size, dtype=np.float64), rho, n_resamples=n_resamples, seed=seed)
    return Measurement.from_interval(name, ci, unit=unit, method="percentile bootstrap over pairs")


#: The four initializations of the chapter's Table 1 analogue (the seed's row labels are lost
#: except He's): PyTorch's default, a near-zero Gaussian, Xavier and He (the seed's choice).
INIT_SCHEMES = {"PyTorch default U(±1/√fan_in)": {}, "N(0, 0.01²)": {"init": "normal", "init_std": 0.01},
                "Xavier N(0, 2/(fan_in+fan_out))": {"init": "xavier"}, "He N(0, 2/fan_in)": {"init": "he"}}
HE = "He N(0, 2/fan_in)"


def attack_spec(base: dict, n_s: int, size: int, seed: int = 0) -> dict:
    """The data spec of an attack set of ``size`` items after the first ``n_s`` of ``base``
    (:func:`flatness.data.attack_split`)."""
    return {"name": "attack", "base": base, "n_s": n_s, "size": size, "seed": seed}


def two_layer_config(seed: int = 0, init: str = HE, size: int = 0, gamma: float = 0.0, *,
                     base: Optional[dict] = None, n_s: int = 512, width: int = 64, **options):
    r"""The chapter's run: a ``64-width-10`` ReLU network (:func:`flatness.models.two_layer`) on
    the first ``n_s`` training images of ``base`` (default: the 8×8 digits), trained to 100 %
    training accuracy (at most 300 epochs) by SGD (lr 0.1, momentum 0.9, B = 64 unless
    ``options`` say otherwise), with the attack term :math:`\gamma\,\bar L_T` of an attack
    set of ``size`` items when ``size > 0``.

    Returns:
        A :class:`flatness.training.TrainConfig`.
    """
    from .training import TrainConfig

    if init not in INIT_SCHEMES:
        raise ValueError(f"init: expected one of {sorted(INIT_SCHEMES)}, got {init!r}")
    base = {"name": "digits"} if base is None else base
    model = {"name": "two_layer", "input_dim": 64, "width": width, "num_classes": 10, **INIT_SCHEMES[init]}
    attack = attack_spec(base, n_s, size, seed) if size else None
    opts = {"lr": 0.1, "momentum": 0.9, "batch_size": 64, **options}
    return TrainConfig(model=model, data={"name": "first", "base": base, "n": n_s}, target_train_acc=1.0,
                       max_epochs=300, seed=seed, attack=attack, attack_weight=float(gamma), **opts)


def population_runs(seeds: Sequence[int], attacks: Sequence[Tuple[int, float]],
                    adam_attack: bool = False, **kwargs) -> Dict[str, tuple]:
    """The chapter's population, ``{name: (config, group)}``: every :data:`INIT_SCHEMES` entry
    with SGD (group ``"init"``), full-batch gradient descent (``"gd"``, lr 0.2) and Adam
    (``"adam"``, lr 3e-3) from He initializations, one run per seed; and the attack runs
    (``"attack"``) for every ``(|T|, γ)`` with the first two seeds, plus one Adam attack run on
    the largest set with ``adam_attack``. ``kwargs`` go to :func:`two_layer_config`."""
    adam = {"optimizer": "adam", "lr": 3e-3, "momentum": 0.0}
    runs = {f"{i}, seed {s}": (two_layer_config(s, i, **kwargs), "init") for i in INIT_SCHEMES for s in seeds}
    runs.update({f"full-batch GD, seed {s}": (two_layer_config(s, batch_size=None, lr=0.2, **kwargs), "gd")
                 for s in seeds})
    runs.update({f"Adam, seed {s}": (two_layer_config(s, **adam, **kwargs), "adam") for s in seeds})
    runs.update({f"|T| = {n}, γ = {g}, seed {s}": (two_layer_config(s, size=n, gamma=g, **kwargs), "attack")
                 for n, g in attacks for s in list(seeds)[:2]})
    if adam_attack and attacks:
        n = max(a for a, _ in attacks)
        runs[f"Adam, |T| = {n}, γ = 1.0, seed {seeds[0]}"] = (
            two_layer_config(seeds[0], size=n, gamma=1.0, **adam, **kwargs), "attack")
    return runs


def build_population(runs: Dict[str, tuple], train_data, test_data, k: int = 10,
                     num_vectors: int = 20, delta: float = 1e-3, num_classes: int = 10):
    """Train (or load) every run of :func:`population_runs` with
    :func:`flatness.cache.load_or_train_many` and measure it with :func:`measure_minimum`.

    The *good level* is the median test accuracy of the ``"init"`` runs that reached 100 %
    training accuracy; each record's ``bad`` is :func:`is_bad` against it.

    Returns:
        ``(records, good_level)``; a record has ``name``, ``group``, ``net``, ``reached``,
        ``epochs``, ``bad`` and :func:`measure_minimum`'s fields.
    """
    from .cache import load_or_train_many

    nets, hists = load_or_train_many([c for c, _ in runs.values()], progress=False)
    records = [{"name": name, "group": g, "net": m, "reached": bool(h["reached_target"]),
                "epochs": h["epochs"], **measure_minimum(m, train_data, test_data, k=k,
                                                        num_vectors=num_vectors, delta=delta)}
               for (name, (_, g)), m, h in zip(runs.items(), nets, hists)]
    good = [r["test_acc"] for r in records if r["group"] == "init" and r["reached"]]
    level = float(np.median(good)) if good else float("nan")
    for r in records:
        r["bad"] = is_bad(r["test_acc"], level, num_classes)
    return records, level


def cnn_pair(base: Optional[dict] = None, n_s: int = 512, size: int = 200, gamma: float = 1.0):
    """A good and a bad minimum of the mLeNet-like CNN (:func:`flatness.models.cnn2d`, He
    initialization) on the 8×8 images: trained on the first ``n_s`` images without and with an
    attack set of ``size`` (weight ``gamma``), cached by :func:`flatness.cache.load_or_train`.

    Returns:
        ``(good_net, bad_net, train_data, test_data)``.
    """
    from .cache import load_or_train
    from .data import from_spec
    from .training import TrainConfig

    img = {**({"name": "digits"} if base is None else base), "images": True}
    spec = {"name": "first", "base": img, "n": n_s}
    nets = [load_or_train(TrainConfig(model={"name": "cnn2d", "channels": [8, 16], "init": "he"}, data=spec,
                                      lr=0.1, momentum=0.9, target_train_acc=1.0, max_epochs=300, attack=a,
                                      attack_weight=gamma if a else 0.0), progress=False)[0]
            for a in (None, attack_spec(img, n_s, size))]
    split = from_spec(spec)
    return nets[0], nets[1], split.train, split.test


def spectra_of(pairs: Dict[str, tuple], loss_fn, rel_tol: float = 1e-3):
    r"""Dense Hessian spectra (float64) of the ``"good"`` and ``"bad"`` minimum of every entry
    ``name: (good_net, bad_net, train_data, test_data)``, with :func:`spectrum_counts` at
    ``tol = rel_tol · λ_max(good)``.

    Returns:
        ``(spectra, hessians, rows)``: eigenvalues (ascending) and dense Hessians keyed by
        ``(name, kind)``, and table rows ``[name, kind, test acc., P, negative, near-zero share,
        λ_max]``.
    """
    from .training import evaluate

    spectra, hessians, rows = {}, {}, []
    for name, (g, b, d, t) in pairs.items():
        for kind, net in (("good", g), ("bad", b)):
            hessians[name, kind] = dense_hessian(net, loss_fn, d)
            spectra[name, kind] = torch.linalg.eigvalsh(hessians[name, kind]).numpy()
        for kind, net in (("good", g), ("bad", b)):
            lam = spectra[name, kind]
            c = spectrum_counts(lam, rel_tol * spectra[name, "good"].max())
            rows.append([name, kind, f"{100 * evaluate(net, t)[1]:.1f} %", c["total"], c["negative"],
                         f"{100 * c['near_zero'] / c['total']:.1f} %", f"{lam.max():.3g}"])
    return spectra, hessians, rows


def fd_comparison(nets: Dict[str, tuple], loss_fn, data, deltas: Sequence[float], num_vectors: int):
    """:func:`fd_study` for several networks ``name: (net, dense_hessian)`` — in float32 and
    float64 for names containing ``"float64"``-capable small nets (every name without ``"64-64"``),
    float32 only otherwise — with the exact relative standard deviation (:func:`fd_relative_sd`)
    and the ReLU sign flips (:func:`relu_flips`, names containing ``"ReLU"``).

    Returns:
        ``(study, rel_sd, flips)``: rows of :func:`fd_study` keyed ``"name, dtype"``, the relative
        standard deviation of one term per name, and the mean flips per δ per ReLU name.
    """
    study, rel_sd, flips = {}, {}, {}
    for name, (net, H) in nets.items():
        rel_sd[name] = fd_relative_sd(H)
        for dt in (torch.float32,) if "64-64" in name else (torch.float32, torch.float64):
            study[f"{name}, {str(dt)[6:]}"] = fd_study(net, loss_fn, data, deltas, num_vectors,
                                                       float((H ** 2).sum()), dtype=dt)
        if "ReLU" in name:
            flips[name] = relu_flips(net, data, deltas, num_vectors)
    return study, rel_sd, flips


def spectrum_figure(spectra: Dict[tuple, np.ndarray]):
    """Histograms of the good and bad spectra of every network on a symmetric-log axis."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(k[0] for k in spectra))
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.4), squeeze=False)
    edges = np.concatenate([-np.logspace(1, -6, 29), np.logspace(-6, 3, 37)])
    for ax, name in zip(axes[0], names):
        for kind, col in (("good", "C0"), ("bad", "C3")):
            ax.hist(np.clip(spectra[name, kind], -10, 1e3), bins=edges, histtype="step", color=col,
                    label=f"{kind} minimum")
        ax.set_xscale("symlog", linthresh=1e-6)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("Hessian eigenvalue λ")
    axes[0, 0].set_ylabel("count")
    axes[0, 0].legend()
    return fig


def volume_figure(minima: Sequence[dict], quantities: Dict[str, str]):
    """Test accuracy against each quantity (label → record field); red: runs without the attack
    term (group other than ``"attack"``), blue: with it."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(quantities), figsize=(3 * len(quantities), 3.2), sharey=True, squeeze=False)
    for ax, (label, key) in zip(axes[0], quantities.items()):
        for att, col, lab in ((False, "C3", "without attack term"), (True, "C0", "with attack term")):
            pts = [(r[key], 100 * r["test_acc"]) for r in minima if (r["group"] == "attack") == att]
            if pts:
                ax.scatter(*zip(*pts), s=16, c=col, label=lab)
        ax.set_xlabel(label)
        ax.set_xscale("linear" if key == "log_inv_volume" else "log")
    axes[0, 0].set_ylabel("test accuracy (%)")
    axes[0, 0].legend(fontsize=7)
    return fig
