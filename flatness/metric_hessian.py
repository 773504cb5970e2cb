r"""A reparametrization-covariant Hessian spectrum: the eigenvalues of :math:`M^{-1}H`
(after Kristiadi, Dangel & Hennig 2023, "The Geometry of Neural Nets' Parameter Spaces Under
Reparametrization").

The eigenvalues of the Hessian :math:`H` are not a property of the function: under a
reparametrization :math:`\theta = \varphi(\psi)` with Jacobian :math:`J`, at a critical point
:math:`H_\psi = J^\top H_\theta J`, whose eigenvalues differ. Kristiadi et al. point out that the
Hessian is a bilinear form and needs a metric :math:`M` to give eigenvalues: the spectrum of
:math:`M^{-1}H`. If :math:`M` transforms like a bilinear form too, :math:`M_\psi = J^\top M_\theta
J`, then :math:`M_\psi^{-1}H_\psi = J^{-1}(M_\theta^{-1}H_\theta)J` is similar to
:math:`M_\theta^{-1}H_\theta`: the same eigenvalues in every parametrization.

**Which metric.** :math:`M = G + \lambda\,\mathrm{diag}(G)` with :math:`G = \sum_i J_i^\top
(\partial^2 L/\partial f_i^2) J_i` the generalized Gauss–Newton matrix of the full-data loss
(for cross-entropy it equals the Fisher information of the model's predictive distribution).
:math:`G` transforms exactly as a bilinear form under *any* reparametrization (it is built from
output Jacobians, :math:`J_{f,\psi} = J_{f,\theta}J`), unlike the empirical Fisher's dependence on
the labels or the Hessian itself away from a minimum. :math:`G` is singular (rank at most
:math:`N\cdot C`), so it is damped; Levenberg–Marquardt's :math:`\lambda I` would break the
covariance (:math:`J^\top J \ne I`), while :math:`\lambda\,\mathrm{diag}(G)` transforms as
:math:`D\,\mathrm{diag}(G)\,D` under every positive *diagonal* map :math:`\theta' = D\theta` — the
three symmetries of this book (α-scale, neuron rescaling, weight normalization's radial
direction). So the spectrum is exactly invariant to those, and covariant up to the damping for
general reparametrizations. Coordinates where :math:`\mathrm{diag}(G) = 0` (dead units: no
output depends on them) are dropped; their rows of :math:`H` vanish too at a point where the
outputs do not depend on them.

Where :math:`H = G` (a linear model under a squared loss, or at an interpolating minimum of
one) every eigenvalue is at most 1 and close to :math:`1/(1+\lambda)`; for cross-entropy :math:`H - G` (the residual
term) is what makes it differ from 1. Read it as "curvature per unit of output-space
distinguishability".

Computed densely in float64 (the Hessian by :func:`flatness.operators.dense_hessian`, :math:`G`
from the per-sample output Jacobians) and solved as the generalized symmetric problem
:math:`Hv = \mu Mv`, so it is meant for networks of up to a few thousand parameters.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.linalg
import torch
from torch import nn
from torch.func import functional_call, jacrev

from .checks import (check_labels, check_positive, check_reduction, evaluation, is_real,
                     materialize, quiet_torch_func)
from .operators import _loss_weight, dense_hessian
from .params import ParameterLayout, _fixed_tensors

__all__ = ["fisher_hessian_eigenvalues", "dense_ggn"]


def dense_ggn(model: nn.Module, loss_fn, data, eval_mode: Optional[bool] = None) -> torch.Tensor:
    r"""The dense generalized Gauss–Newton matrix :math:`G = \sum_i J_i^\top h_i J_i` of the
    full-data mean loss in float64 (:math:`h_i = \partial^2 L/\partial f_i^2`, including the
    batch weights of :class:`flatness.operators.HessianOperator`)."""
    check_reduction(loss_fn)
    layout = ParameterLayout(model)
    f64 = torch.float64
    theta = layout.to_vector(model, "model").to(f64)
    fixed = _fixed_tensors(model, layout, theta)
    batches = materialize(data)
    raw = [_loss_weight(loss_fn, X, y) for X, y in batches]
    total = sum(raw)
    if not total > 0:
        raise ValueError("data: every sample has weight 0 in the loss (all labels ignored)")
    G = torch.zeros(layout.numel, layout.numel, dtype=f64, device=theta.device)
    with evaluation(model, eval_mode):
        for (X, y), wb in zip(batches, raw):
            if wb == 0:
                continue
            X = X.to(device=theta.device, dtype=f64) if X.is_floating_point() else X
            y = y.to(device=theta.device, dtype=f64) if y.is_floating_point() else y

            def f(v):
                with quiet_torch_func():
                    return functional_call(model, {**fixed, **layout.to_dict(v)}, (X,))

            with torch.no_grad():
                out = f(theta)
            check_labels(out, y, loss_fn)
            J = jacrev(f)(theta).reshape(out.shape[0], -1, layout.numel)   # (N, C, n)
            z = out.detach().reshape(out.shape[0], -1)
            with torch.enable_grad():
                zz = z.clone().requires_grad_(True)
                value = loss_fn(zz.reshape(out.shape), y) * (wb / total)
                (g,) = torch.autograd.grad(value, zz, create_graph=True)
                h = torch.stack([torch.autograd.grad(g[:, c].sum(), zz, retain_graph=True)[0]
                                 for c in range(z.shape[1])], dim=2)           # (N, C, C)
            G += torch.einsum("ica,icd,idb->ab", J, h.detach(), J)
    return 0.5 * (G + G.T)


def fisher_hessian_eigenvalues(model: nn.Module, loss_fn, data, k: int = 1,
                               damping: float = 1e-3, *, max_params: int = 5000,
                               eval_mode: Optional[bool] = None) -> np.ndarray:
    r"""The ``k`` largest eigenvalues of :math:`M^{-1}H`, :math:`M = G + \lambda\,\mathrm{diag}(G)`
    (GGN metric with diagonal damping; see the module docstring).

    Args:
        model: the network (not changed).
        loss_fn: a mean-reduced loss.
        data: an ``(X, y)`` pair or an iterable of batches.
        k: how many eigenvalues (largest first).
        damping: λ > 0, relative to the GGN's own diagonal.
        max_params: refuse models with more trainable parameters (dense float64 matrices).
        eval_mode: see :func:`flatness.checks.evaluation`.

    Returns:
        A NumPy array of ``k`` eigenvalues, in descending order.

    Raises:
        ValueError: ``k`` not an integer in [1, number of kept coordinates], ``damping`` not
            positive, a model with more than ``max_params`` parameters, a GGN that is zero.

    >>> net = torch.nn.Linear(2, 1, bias=False)
    >>> X, y = torch.eye(2), torch.ones(2, 1)          # linear least squares: H = G = I
    >>> fisher_hessian_eigenvalues(net, torch.nn.MSELoss(), (X, y), k=2, damping=0.5).round(6)
    array([0.666667, 0.666667])
    """
    check_positive(k, "k", integer=True)
    if not (is_real(damping) and damping > 0 and np.isfinite(damping)):
        raise ValueError(f"damping: expected a positive number, got {damping!r}")
    check_positive(max_params, "max_params", integer=True)
    n = ParameterLayout(model).numel
    if n > max_params:
        raise ValueError(f"model: {n} trainable parameters, more than max_params={max_params} "
                         "for the dense generalized eigenproblem")
    H = dense_hessian(model, loss_fn, data, eval_mode=eval_mode).to(torch.float64)
    G = dense_ggn(model, loss_fn, data, eval_mode=eval_mode).to(H.device)
    diag = torch.diagonal(G)
    keep = diag > diag.max() * 1e-14 if diag.max() > 0 else diag > 0
    if not bool(keep.any()):
        raise ValueError("model: the Gauss-Newton matrix is zero (no output depends on the "
                         "parameters); the metric is degenerate")
    m = int(keep.sum())
    if k > m:
        raise ValueError(f"k: expected at most {m} (the coordinates the metric sees), got {k}")
    idx = torch.nonzero(keep).reshape(-1)
    Hk = H[idx][:, idx].cpu().numpy()
    Gk = G[idx][:, idx].cpu().numpy()
    Mk = Gk + damping * np.diag(np.diag(Gk))
    # symmetric scaling by diag(M)^-1/2 first: the same numbers in every diagonal rescaling
    s = 1.0 / np.sqrt(np.diag(Mk))
    mu = scipy.linalg.eigh(s[:, None] * Hk * s[None, :], s[:, None] * Mk * s[None, :],
                           eigvals_only=True)
    return np.sort(mu)[::-1][:k].copy()
