r"""Keskar et al.'s ε-sharpness (Metric 2.1 of "On Large-Batch Training for Deep Learning").

For parameters :math:`x \in \mathbb{R}^n`, a matrix :math:`A \in \mathbb{R}^{n\times p}` and the
box

.. math:: \mathcal{C}_\epsilon = \{ z \in \mathbb{R}^p :
          -\epsilon(|(A^+x)_i| + 1) \le z_i \le \epsilon(|(A^+x)_i| + 1) \},

the sharpness is

.. math:: \phi_{x,f}(\epsilon, A) = 100\,
          \frac{\max_{y\in\mathcal{C}_\epsilon} f(x + Ay) - f(x)}{1 + f(x)}.

``A = I`` gives the full-space version; a random ``n × p`` matrix the subspace version. As in the
paper, the maximum is found inexactly by a few iterations of L-BFGS-B (SciPy).
"""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import nn

from .checks import (
    check_finite,
    check_labels,
    check_positive,
    check_reduction,
    evaluation,
    materialize,
    num_samples,
    trainable_parameters,
)

__all__ = ["random_subspace", "keskar_sharpness"]


def random_subspace(n: int, p: int, seed: int = 0) -> np.ndarray:
    """A random ``n × p`` matrix with orthonormal columns (QR of a Gaussian matrix).

    With orthonormal columns the pseudo-inverse is the transpose, :math:`A^+ = A^\\top`. Keskar
    et al. do not specify the distribution of ``A``; this choice makes the box sides comparable
    across subspace dimensions.
    """
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, p)))
    return q * np.sign(np.diag(r))


class _FlatLoss:
    """The full-data loss as a function of a flat float64 parameter vector."""

    def __init__(self, model, loss_fn, batches, eval_mode):
        self.model = copy.deepcopy(model).double()
        self.params = trainable_parameters(self.model)
        self.shapes = [p.shape for p in self.params]
        self.batches = [(X.double() if X.is_floating_point() else X, y) for X, y in batches]
        self.N = num_samples(batches)
        self.loss_fn, self.eval_mode = loss_fn, eval_mode
        self.x0 = torch.cat([p.detach().reshape(-1) for p in self.params]).numpy().copy()

    def _load(self, x: np.ndarray) -> None:
        with torch.no_grad():
            offset = 0
            t = torch.from_numpy(x)
            for p in self.params:
                p.copy_(t[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def value_and_grad(self, x: np.ndarray):
        self._load(x)
        total = 0.0
        for p in self.params:
            p.grad = None
        with evaluation(self.model, self.eval_mode):
            for X, y in self.batches:
                out = self.model(X)
                loss = self.loss_fn(out, y) * (X.shape[0] / self.N)
                loss.backward()
                total += float(loss.detach())
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self.params]).numpy()
        return total, grad


def keskar_sharpness(model: nn.Module, loss_fn, data, eps: float = 1e-3,
                     subspace_dim: Optional[int] = None, maxiter: int = 10, seed: int = 0,
                     eval_mode: Optional[bool] = None) -> float:
    r"""Keskar et al.'s sharpness :math:`\phi_{x,f}(\epsilon, A)` of the full-data loss.

    The maximization runs on a float64 copy of the model (the model itself is untouched): it
    minimizes :math:`-f(x + Ay)` with gradient :math:`-A^\top\nabla f` by L-BFGS-B within the box,
    starting from a uniformly random point of the box — at an exact minimum the gradient is zero
    and a start at the centre would return 0. The largest loss seen is kept.

    Args:
        model, loss_fn, data: the network, a mean-reduced loss and the dataset.
        eps: the box size ε (the paper uses 1e-3 and 5e-4).
        subspace_dim: ``None`` for the full space (``A = I``), or ``p`` for a random
            ``n × p`` subspace (:func:`random_subspace`; the paper uses p = 100).
        maxiter: L-BFGS-B iterations (10 in the paper).
        seed: seeds the start point and the subspace.
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        The sharpness (a percentage: ×100 as in the paper).

    Raises:
        ValueError: ``eps ≤ 0``, ``subspace_dim`` not in ``[1, n]``, a loss that is not finite,
            empty or mis-shaped data, BatchNorm/Dropout in train mode.

    Example:
        >>> net = torch.nn.Linear(4, 3)
        >>> X, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> keskar_sharpness(net, torch.nn.CrossEntropyLoss(), (X, y), eps=1e-3) > 0
        True
    """
    check_positive(eps, "eps")
    check_positive(maxiter, "maxiter", integer=True)
    check_reduction(loss_fn)
    batches = materialize(data)
    with evaluation(model, eval_mode), torch.no_grad():
        check_labels(model(batches[0][0]), batches[0][1], loss_fn)
    f = _FlatLoss(model, loss_fn, batches, eval_mode)
    x = f.x0
    n = x.size
    if subspace_dim is not None and (not isinstance(subspace_dim, int) or not 1 <= subspace_dim <= n):
        raise ValueError(f"subspace_dim: expected None or an integer in [1, {n}] (the number of "
                         f"parameters), got {subspace_dim!r}")
    f0, _ = f.value_and_grad(x)
    check_finite(f0)
    if subspace_dim is None:
        A = None
        half = eps * (np.abs(x) + 1.0)
    else:
        A = random_subspace(n, subspace_dim, seed)
        half = eps * (np.abs(A.T @ x) + 1.0)
    rng = np.random.default_rng(seed + 1)
    y0 = rng.uniform(-half, half)
    best = [f0]

    def objective(y):
        z = x + (y if A is None else A @ y)
        value, grad = f.value_and_grad(z)
        if np.isfinite(value):
            best[0] = max(best[0], value)
        return -value, -(grad if A is None else A.T @ grad)

    minimize(objective, y0, jac=True, method="L-BFGS-B", bounds=Bounds(-half, half),
             options={"maxiter": maxiter})
    return 100.0 * (best[0] - f0) / (1.0 + f0)
