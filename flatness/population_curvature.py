r"""Top Hessian eigenvalues of every member of a population, in one batched Lanczos iteration.

For a population of :math:`P` networks of one architecture (:mod:`flatness.population`) the
full-data losses :math:`L_p(\theta_p) = \sum_b \frac{n_b}{N} L_{p,b}(\theta_p)` depend on
disjoint parameters, so the Hessian of their sum :math:`\sum_p L_p` with respect to the stacked
parameters is block diagonal with blocks :math:`H_p = \nabla^2 L_p(\theta_p)`. One double
backward through the gradient of the sum (Pearlmutter 1994) therefore gives every member's
product :math:`H_p v_p` at once, for the cost of one product of a network :math:`P` times as
wide; the gradient graph is built once and kept.

:func:`population_top_eigenvalues` runs Lanczos with full reorthogonalization for every member
on these batched products: member :math:`p` gets its own basis, tridiagonal matrix and Ritz
values, and stops on the same rule as :func:`flatness.krylov.lanczos` — every wanted Ritz value
:math:`\theta_i` with error estimate :math:`e_i = \min(r_i, r_i^2/\delta_i)` (residual
:math:`r_i = \beta_{m+1}|s_{mi}|`, gap :math:`\delta_i` to the nearest other Ritz value less its
residual) below ``tol`` :math:`\cdot|\theta_i|`, and the next Ritz value below
:math:`\sqrt{\mathrm{tol}}` — from the start vector that
:func:`flatness.curvature.top_eigenvalues` uses (a standard Gaussian vector drawn with
``seed``), so for ``k = 1`` each member's result is the one ``top_eigenvalues(model, loss,
data, tol=tol)`` gives, up to rounding (same products, same value). Converged members leave
the iteration (the graph is rebuilt on the rest once they are at most half of it).

References:
    Pearlmutter, B. A. (1994). Fast exact multiplication by the Hessian. Neural Computation.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .checks import check_reduction, materialize
from .krylov import _WHICH, BREAKDOWN, EigenResult, ritz_converged, ritz_error_estimates, tridiagonal
from .population import _check_population, population_forward, stack_parameters

__all__ = ["PopulationHessian", "population_top_eigenvalues"]



class PopulationHessian:
    r"""Batched Hessian-vector products of the full-data losses of a population's members.

    Args:
        models: the population (see :func:`flatness.population.population_plan`); not changed.
        loss_fn: a mean-reduced loss of ``(outputs, targets)`` (e.g. ``nn.CrossEntropyLoss()``).
        data: an ``(X, y)`` pair or a list of pairs, shared by every member; batch :math:`b`
            has weight :math:`n_b/N`.
        dtype: compute in this dtype (default the models' dtype).

    Attributes:
        dim: parameters per member.
        products: batched products computed so far (one per call of :meth:`matvec`, whatever
            the number of members).
    """

    def __init__(self, models: Sequence[nn.Module], loss_fn, data,
                 dtype: Optional[torch.dtype] = None):
        self.plan, models = _check_population(models)
        check_reduction(loss_fn)
        self.loss_fn = loss_fn
        self.batches = materialize(data, "data")
        first = next(models[0].parameters())
        self.dtype = first.dtype if dtype is None else dtype
        self.device = first.device
        for X, y in self.batches:
            if X.device != self.device:
                raise ValueError(f"data: X is on {X.device} but the models are on "
                                 f"{self.device}; move one of them")
        N = sum(int(X.shape[0]) for X, _ in self.batches)
        self.weights = [X.shape[0] / N for X, _ in self.batches]
        self.base = [p.to(self.dtype) for p in stack_parameters(models)]
        self.shapes = [tuple(p.shape[1:]) for p in self.base]
        self.numels = [int(math.prod(s)) for s in self.shapes]
        self.dim = sum(self.numels)
        self.products = 0
        self.members: List[int] = []
        self._build(list(range(len(models))))

    def _build(self, members: List[int]) -> None:
        """The retained gradient graph of :math:`\\sum_p L_p` over ``members``."""
        sel = torch.tensor(members, dtype=torch.long, device=self.device)
        self.members = list(members)
        self._params = [p[sel].detach().requires_grad_(True) for p in self.base]
        P = len(members)
        with torch.enable_grad():
            grads = None
            for (X, y), w in zip(self.batches, self.weights):
                X = X.to(self.dtype) if X.is_floating_point() else X
                out = population_forward(self.plan, self._params, X, shared=True)
                n = X.shape[0]
                target = y.repeat(P, *([1] * (y.ndim - 1)))
                loss = self.loss_fn(out.reshape(P * n, *out.shape[2:]), target) * (P * w)
                g = torch.autograd.grad(loss, self._params, create_graph=True)
                grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
        self._grads = grads

    def restrict(self, members: Sequence[int]) -> None:
        """Rebuild the graph on a subset of the members (indices into the population)."""
        self._build(list(members))

    def matvec(self, V: Tensor) -> Tensor:
        """``H_p v_p`` for every member in :attr:`members`: ``V`` and the result are
        ``(len(members), dim)``."""
        P = len(self.members)
        if V.shape != (P, self.dim):
            raise ValueError(f"V: expected shape ({P}, {self.dim}), got {tuple(V.shape)}")
        V = V.to(device=self.device, dtype=self.dtype)
        parts = [c.reshape(P, *s) for c, s in zip(V.split(self.numels, dim=1), self.shapes)]
        with torch.enable_grad():
            hv = torch.autograd.grad(self._grads, self._params, grad_outputs=parts,
                                     retain_graph=True)
        self.products += 1
        return torch.cat([h.reshape(P, -1) for h in hv], dim=1).detach()


def population_top_eigenvalues(models: Sequence[nn.Module], loss_fn, data, k: int = 1,
                               tol: float = 1e-3, maxiter: Optional[int] = None, seed: int = 0,
                               which: str = "LA", return_eigenvectors: bool = False,
                               dtype: Optional[torch.dtype] = None) -> List[EigenResult]:
    r"""The ``k`` extreme Hessian eigenvalues of every member of a population, batched.

    Equivalent, member by member and up to rounding, to
    ``flatness.curvature.top_eigenvalues(model, loss_fn, data, k=k, tol=tol, seed=seed,
    which=which, maxiter=maxiter)`` (its default Lanczos method), with every iteration's
    Hessian-vector products of all unconverged members computed as one batched double
    backward (:class:`PopulationHessian`).

    Args:
        models: the population; not changed.
        loss_fn: a mean-reduced loss, e.g. ``nn.CrossEntropyLoss()``.
        data: an ``(X, y)`` pair or a list of pairs shared by the members.
        k: number of eigenvalues per member, in ``[1, dim)``.
        tol: relative accuracy of each eigenvalue (the stopping rule of the module docstring).
        maxiter: product budget per member (default ``min(dim, max(200, 20 k))``).
        seed: seeds the start vector (the one of ``top_eigenvalues``) and restart vectors.
        which: ``"LA"`` (largest algebraic, default), ``"SA"`` or ``"LM"``.
        return_eigenvectors: also return each member's Ritz vectors (``dim × k``).
        dtype: compute the products in this dtype (default the models').

    Returns:
        One :class:`flatness.curvature.EigenResult` per model, in order (eigenvalues in the
        order of ``which``; ``products`` counts that member's products). Unlike
        ``top_eigenvalues`` for ``k ≥ 2``, no confirming restart runs, so a repeated
        eigenvalue can be missed, as by any single Krylov space.

    Raises:
        TypeError, ValueError: an empty population, mixed architectures, devices or dtypes
            (naming ``models``), a loss that is not a mean, bad ``k``, ``tol``, ``which`` or
            ``maxiter``.
    """
    if which not in _WHICH:
        raise ValueError(f"which: expected one of {list(_WHICH)}, got {which!r}")
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and math.isfinite(tol)
            and tol > 0):
        raise ValueError(f"tol: expected a positive number, got {tol!r}")
    H = PopulationHessian(models, loss_fn, data, dtype=dtype)
    P, dim = len(H.members), H.dim
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < dim:
        raise ValueError(f"k: expected an integer in [1, {dim - 1}], got {k!r}")
    budget = min(dim, max(200, 20 * k)) if maxiter is None else maxiter
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < k:
        raise ValueError(f"maxiter: expected an integer ≥ k={k}, got {maxiter!r}")
    budget = min(budget, dim)

    # the start vector of flatness.krylov.random_vector(dim, seed); restarts continue its stream
    gens = [torch.Generator().manual_seed(int(seed)) for _ in range(P)]
    v0 = torch.randn(dim, generator=gens[0], dtype=torch.float64)
    for g in gens[1:]:
        torch.randn(dim, generator=g, dtype=torch.float64)
    q0 = (v0 / torch.linalg.vector_norm(v0)).to(H.device)
    # the bases, (member, step, dim), grown as the iteration needs
    Q = torch.zeros(P, min(budget, 16), dim, dtype=torch.float64, device=H.device)
    q = q0.unsqueeze(0).repeat(P, 1)
    alphas: List[list] = [[] for _ in range(P)]
    betas: List[list] = [[] for _ in range(P)]
    results: List[Optional[EigenResult]] = [None] * P
    active = list(range(P))  # rows of Q and q, and members of the population
    m = 0
    while active:
        rows = torch.tensor(active, dtype=torch.long, device=H.device)
        if m == Q.shape[1]:
            Q = torch.cat([Q, torch.zeros_like(Q[:, :min(Q.shape[1], budget - m)])], dim=1)
        Q[rows, m] = q[rows]
        # products of the active members; rebuild the graph once they are half of it or less
        if 2 * len(active) <= len(H.members) and len(active) < len(H.members):
            H.restrict(active)
        pos = {member: i for i, member in enumerate(H.members)}
        V = torch.zeros(len(H.members), dim, dtype=torch.float64, device=H.device)
        V[[pos[i] for i in active]] = q[rows]
        W = H.matvec(V).to(torch.float64)[[pos[i] for i in active]]
        m += 1
        basis = Q[rows, :m]                                    # (A, m, dim)
        h = torch.bmm(basis, W.unsqueeze(2)).squeeze(2)        # (A, m)
        W = W - torch.bmm(h.unsqueeze(1), basis).squeeze(1)
        h2 = torch.bmm(basis, W.unsqueeze(2)).squeeze(2)
        W = W - torch.bmm(h2.unsqueeze(1), basis).squeeze(1)
        norms = torch.linalg.vector_norm(W, dim=1).cpu().numpy()
        diag = (h[:, m - 1] + h2[:, m - 1]).cpu().numpy()
        still = []
        for a, i in enumerate(active):
            alphas[i].append(float(diag[a]))
            beta = float(norms[a])
            theta, S = np.linalg.eigh(tridiagonal(alphas[i], betas[i]))
            scale = max(max(abs(x) for x in alphas[i]), max(betas[i], default=0.0), beta)
            invariant = beta <= BREAKDOWN * scale  # the breakdown rule of the Krylov core
            residual = 0.0 if invariant else beta
            bounds = ritz_error_estimates(theta, residual * np.abs(S[-1]))
            done, wanted, _ = ritz_converged(theta, bounds, k, tol, which, m, dim)
            if done or m == budget:
                vecs = None
                if return_eigenvectors:
                    Sw = torch.from_numpy(S[:, wanted].copy()).to(H.device)
                    vecs = (Q[i, :m].T @ Sw).cpu().numpy()
                residuals = residual * np.abs(S[-1, wanted])
                results[i] = EigenResult(
                    eigenvalues=theta[wanted].copy(), eigenvectors=vecs,
                    error_estimates=bounds[wanted].copy(), residuals=residuals, products=m,
                    converged=bool(done) or m == dim, method="lanczos",
                    alphas=np.array(alphas[i]), betas=np.array(betas[i]))
                continue
            still.append(i)
            if invariant:  # continue from a fresh direction orthogonal to the basis
                w = torch.randn(dim, generator=gens[i], dtype=torch.float64).to(H.device)
                for _ in range(2):
                    w = w - Q[i, :m].T @ (Q[i, :m] @ w)
                betas[i].append(0.0)
                q[i] = w / torch.linalg.vector_norm(w)
            else:
                betas[i].append(beta)
                q[i] = W[a] / beta
        active = still
    return results
