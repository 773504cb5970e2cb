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

__all__ = ["random_subspace", "keskar_sharpness", "keskar_first_order", "keskar_box_radius"]


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
    check_positive(maxiter, "maxiter", integer=True)
    check_reduction(loss_fn)
    layout, x, A, half = _box(model, eps, subspace_dim, seed)
    device = layout.device
    # every batch in float64 on the model's device, once; the first loss_at checks every batch
    batches = _float64_batches(data, device)
    # x is a host copy of the parameters: SciPy works on float64 NumPy arrays, the model on its device

    def value_and_grad(z: np.ndarray):
        value, grad = loss_at(model, loss_fn, batches, torch.from_numpy(z).to(device), grad=True,
                              layout=layout, eval_mode=eval_mode, check=False)
        return value, grad.cpu().numpy()

    with evaluation(model, eval_mode):
        f0 = check_finite(loss_at(model, loss_fn, batches, torch.from_numpy(x).to(device),
                                  layout=layout, eval_mode=eval_mode))
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


def _float64_batches(data, device) -> list:
    """Every batch of ``data`` on ``device``, floating-point tensors in float64 (labels kept)."""
    return [(X.to(device=device, dtype=torch.float64) if X.is_floating_point() else X.to(device),
             y.to(device=device, dtype=torch.float64) if y.is_floating_point() else y.to(device))
            for X, y in materialize(data)]


def _box(model: nn.Module, eps: float, subspace_dim: Optional[int], seed: int):
    """The parameters ``x`` (float64, host), the subspace ``A`` (or None) and the box half-sides."""
    check_positive(eps, "eps")
    layout = ParameterLayout(model)
    n = layout.numel
    if subspace_dim is not None and (isinstance(subspace_dim, bool) or not isinstance(subspace_dim, int)
                                     or not 1 <= subspace_dim <= n):
        raise ValueError(f"subspace_dim: expected None or an integer in [1, {n}] (the number of "
                         f"parameters), got {subspace_dim!r}")
    x = layout.to_vector(model, "model").detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    if subspace_dim is None:
        return layout, x, None, eps * (np.abs(x) + 1.0)
    A = random_subspace(n, subspace_dim, seed)
    return layout, x, A, eps * (np.abs(A.T @ x) + 1.0)


def keskar_box_radius(model: nn.Module, eps: float = 1e-3, subspace_dim: Optional[int] = None,
                      seed: int = 0) -> float:
    r"""The largest perturbation of the parameters that Keskar's box allows, :math:`\max\lVert Ay\rVert_2`.

    With half-sides :math:`h_i = \epsilon(|(A^+x)_i| + 1)` the corner of the box is the farthest
    point, :math:`\max_{y\in\mathcal{C}_\epsilon}\lVert Ay\rVert_2 = \lVert h\rVert_2` for
    :math:`A = I` and for orthonormal columns (:func:`random_subspace`), where
    :math:`\lVert Ay\rVert = \lVert y\rVert`. For a random subspace :math:`|(A^\top x)_i|` is
    about :math:`\lVert x\rVert/\sqrt{n}`, so the radius is about
    :math:`\epsilon\sqrt{p}\,(1 + \lVert x\rVert/\sqrt n)`, against
    :math:`\epsilon\lVert\,|x| + 1\rVert_2` in the full space.

    Args:
        model: the network (not changed).
        eps, subspace_dim, seed: as in :func:`keskar_sharpness` (the same subspace for the same
            seed).

    Returns:
        :math:`\lVert h\rVert_2`.

    Raises:
        ValueError: ``eps ≤ 0`` or a bad ``subspace_dim``.

    >>> net = torch.nn.Linear(3, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[0.0, 1.0, -3.0]]))
    >>> round(keskar_box_radius(net, eps=0.5), 6)   # 0.5 * ||(1, 2, 4)||
    2.291288
    """
    return float(np.linalg.norm(_box(model, eps, subspace_dim, seed)[3]))


def keskar_first_order(model: nn.Module, loss_fn, data, eps: float = 1e-3,
                       subspace_dim: Optional[int] = None, seed: int = 0,
                       eval_mode: Optional[bool] = None) -> dict:
    r"""The first-order part of Keskar's sharpness: the gradient and its maximum over the box.

    To first order :math:`f(x + Ay) \approx f(x) + g^\top Ay` with :math:`g = \nabla f(x)`, whose
    maximum over the box :math:`|y_i| \le h_i` is at the corner :math:`y_i = h_i\,
    \mathrm{sign}((A^\top g)_i)`:

    .. math:: \phi^{(1)}(\epsilon, A) = 100\,\frac{\sum_i h_i\,|(A^\top g)_i|}{1 + f(x)}.

    The sharpness :func:`keskar_sharpness` is at least the value of the loss at that corner, which
    is :math:`\phi^{(1)}` plus a second-order term :math:`\tfrac12 y^\top A^\top H A y`; for a
    quadratic with zero gradient :math:`\phi(\epsilon) \propto \epsilon^2`, so
    :math:`\phi(10^{-3})/\phi(5\cdot10^{-4}) = 4`, while a purely first-order :math:`\phi` gives
    2. The share :math:`\phi^{(1)}/\phi` says how much of the measured sharpness the gradient
    alone explains (it can exceed 1 where the curvature along the corner is negative or the
    10 L-BFGS-B iterations stop short).

    Args:
        model, loss_fn, data: the network (not changed), a mean-reduced loss and the dataset.
        eps, subspace_dim, seed: as in :func:`keskar_sharpness` (the same box and subspace).
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        ``{"gradient_norm": ‖g‖₂, "first_order": φ⁽¹⁾, "loss": f(x)}`` (floats; the gradient in
        the full parameter space whatever ``subspace_dim``).

    Raises:
        ValueError: as :func:`keskar_sharpness`.

    >>> net = torch.nn.Linear(2, 1, bias=False)
    >>> X, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0]])
    >>> out = keskar_first_order(net, torch.nn.MSELoss(), (X, y), eps=0.1)
    >>> w = net.weight.detach().double()[0]
    >>> g = 2 * (float(w[0]) - 3.0)                       # d/dw0 of (w0 - 3)^2
    >>> abs(out["first_order"] - 100 * 0.1 * abs(g) * (abs(float(w[0])) + 1) / (1 + (float(w[0]) - 3) ** 2)) < 1e-9
    True
    """
    check_reduction(loss_fn)
    layout, x, A, half = _box(model, eps, subspace_dim, seed)
    device = layout.device
    batches = _float64_batches(data, device)
    with evaluation(model, eval_mode):
        f0, grad = loss_at(model, loss_fn, batches, torch.from_numpy(x).to(device), grad=True,
                           layout=layout, eval_mode=eval_mode)
    f0 = check_finite(f0)
    g = grad.cpu().numpy()
    slope = np.abs(g if A is None else A.T @ g)
    return {"gradient_norm": float(np.linalg.norm(g)),
            "first_order": float(100.0 * np.sum(half * slope) / (1.0 + f0)), "loss": float(f0)}
