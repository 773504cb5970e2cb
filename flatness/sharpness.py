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

from typing import Optional

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import nn

from .checks import (
    check_finite,
    check_positive,
    check_reduction,
    evaluation,
    materialize,
)
from .params import ParameterLayout, loss_at

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


def keskar_sharpness(model: nn.Module, loss_fn, data, eps: float = 1e-3,
                     subspace_dim: Optional[int] = None, maxiter: int = 10, seed: int = 0,
                     eval_mode: Optional[bool] = None) -> float:
    r"""Keskar et al.'s sharpness :math:`\phi_{x,f}(\epsilon, A)` of the full-data loss.

    The loss and its gradient are evaluated in float64 by
    :func:`flatness.params.loss_at` (``torch.func.functional_call`` on the model's device; the
    model itself is untouched), while SciPy's L-BFGS-B works on host float64 NumPy arrays: it
    minimizes :math:`-f(x + Ay)` with gradient :math:`-A^\top\nabla f` within the box,
    starting from a uniformly random point of the box — at an exact minimum the gradient is zero
    and a start at the centre would return 0. The largest loss seen is kept. Works inside
    ``torch.no_grad()``.

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
        ValueError: ``eps ≤ 0``, ``maxiter`` not a positive integer, ``subspace_dim`` not an
            integer in ``[1, n]`` (``True`` is refused), a loss that is not finite, empty or
            mis-shaped data, labels out of range in any batch, BatchNorm/Dropout in train mode.

    Example:
        >>> net = torch.nn.Linear(4, 3)
        >>> X, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> keskar_sharpness(net, torch.nn.CrossEntropyLoss(), (X, y), eps=1e-3) > 0
        True
    """
    check_positive(eps, "eps")
    check_positive(maxiter, "maxiter", integer=True)
    check_reduction(loss_fn)
    layout = ParameterLayout(model)
    n = layout.numel
    if subspace_dim is not None and (isinstance(subspace_dim, bool) or not isinstance(subspace_dim, int)
                                     or not 1 <= subspace_dim <= n):
        raise ValueError(f"subspace_dim: expected None or an integer in [1, {n}] (the number of "
                         f"parameters), got {subspace_dim!r}")
    device, f64 = layout.device, torch.float64
    # every batch in float64 on the model's device, once; the first loss_at checks every batch
    batches = [(X.to(device=device, dtype=f64) if X.is_floating_point() else X.to(device),
                y.to(device=device, dtype=f64) if y.is_floating_point() else y.to(device))
               for X, y in materialize(data)]
    # host copy of the parameters: SciPy works on float64 NumPy arrays, the model on its device
    x = layout.to_vector(model, "model").to(device="cpu", dtype=f64).numpy().copy()

    def value_and_grad(z: np.ndarray):
        value, grad = loss_at(model, loss_fn, batches, torch.from_numpy(z).to(device), grad=True,
                              layout=layout, eval_mode=eval_mode, check=False)
        return value, grad.cpu().numpy()

    with evaluation(model, eval_mode):
        f0 = check_finite(loss_at(model, loss_fn, batches, torch.from_numpy(x).to(device),
                                  layout=layout, eval_mode=eval_mode))
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
            value, grad = value_and_grad(z)
            if np.isfinite(value):
                best[0] = max(best[0], value)
            return -value, -(grad if A is None else A.T @ grad)

        minimize(objective, y0, jac=True, method="L-BFGS-B", bounds=Bounds(-half, half),
                 options={"maxiter": maxiter})
    return 100.0 * (best[0] - f0) / (1.0 + f0)
