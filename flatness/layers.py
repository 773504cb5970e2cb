r"""Curvature of parameter blocks: diagonal blocks of the Hessian and how rescaling them acts.

Group the parameter vector into blocks :math:`\theta = (\theta_1, \dots, \theta_G)` (one layer,
or a few) and rescale block :math:`g` by :math:`d_g = \alpha^{p_g}`, i.e. :math:`\theta \mapsto
D\theta`. If the loss is invariant, :math:`L(D\theta) = L(\theta)`, then
:math:`\nabla^2L(D\theta) = D^{-1}\nabla^2L(\theta)D^{-1}`, so

.. math:: \operatorname{Tr}\nabla^2L(D\theta) = \sum_g \alpha^{-2p_g}\operatorname{Tr}H_{gg},
   \qquad \lVert\nabla^2L(D\theta)\rVert_F^2 = \sum_{g,h}\alpha^{-2(p_g+p_h)}\lVert H_{gh}\rVert_F^2 .

Bottom-up:

* :func:`group_slices` names contiguous blocks of the flat parameter vector;
* :func:`block_hutchinson` estimates every :math:`\operatorname{Tr}H_{gg}` and
  :math:`\lVert H_{gh}\rVert_F^2` with the same Rademacher probes (:func:`hutchinson_variance`
  is one probe's exact variance); :func:`scaled_block_trace` and :func:`scaled_block_frobenius`
  turn them into the curves above;
* :func:`layer_top_eigenvalues` and :func:`block_gram` give the largest eigenvalue of each block
  and the Gram matrix :math:`C_{kl} = u_k^\top H u_l` of the blocks' top eigenvectors;
* :func:`block_scaling_prediction` does it all at once: the predicted trace and Frobenius curves
  from the blocks at α = 1;
* :func:`curvature_profile` measures λ_max, the trace, the Frobenius norm and Keskar's sharpness
  of each network of a family (:func:`profile_table` tabulates it).

The experiments built on these live in :mod:`flatness.alpha_experiments` (Dinh et al.'s
:math:`T_\alpha`) and :mod:`flatness.reparam_experiments`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .checks import check_positive
from .curvature import block_top_eigenvalues, hessian_frobenius, hessian_trace, top_eigenvalues
from .operators import HessianOperator
from .params import parameter_slices
from .sharpness import keskar_sharpness
from .tables import MarkdownTable, markdown_table

__all__ = ["group_slices", "BlockHutchinson", "block_hutchinson", "hutchinson_variance",
           "scaled_block_trace", "scaled_block_frobenius", "layer_top_eigenvalues", "block_gram",
           "BlockScalingPrediction", "block_scaling_prediction", "curvature_profile",
           "profile_table", "scaling_agreement", "agreement_table"]


def group_slices(model: nn.Module, groups: Mapping[str, Sequence[str]]) -> Dict[str, slice]:
    """Contiguous slices of the flat parameter vector, one per group of named parameters.

    Args:
        model: the network (its ``named_parameters`` order defines the flat vector).
        groups: group name → parameter names, which must be adjacent in that order.

    Returns:
        group name → ``slice`` from the first parameter's start to the last one's stop.

    Raises:
        ValueError: an unknown parameter name, an empty group, or names that are not adjacent.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    >>> group_slices(net, {"first": ["0.weight", "0.bias"], "second": ["2.weight"]})
    {'first': slice(0, 9, None), 'second': slice(9, 12, None)}
    """
    slices = parameter_slices(model)
    names = list(slices)
    out = {}
    for group, members in groups.items():
        members = list(members)
        if not members:
            raise ValueError(f"groups: group {group!r} is empty")
        unknown = [m for m in members if m not in slices]
        if unknown:
            raise ValueError(f"groups: unknown parameter names {unknown} in group {group!r}; "
                             f"expected names from {names}")
        idx = sorted(names.index(m) for m in members)
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise ValueError(f"groups: the parameters of group {group!r} are not adjacent")
        out[group] = slice(slices[names[idx[0]]].start, slices[names[idx[-1]]].stop)
    return out


def _check_blocks(blocks: Mapping[str, slice], P: int) -> None:
    if not blocks:
        raise ValueError("blocks: expected at least one block")
    for name, b in blocks.items():
        if not isinstance(b, slice) or b.step not in (None, 1):
            raise ValueError(f"blocks: block {name!r} is not a contiguous slice: {b!r}")
        start, stop, _ = b.indices(P)
        if stop <= start:
            raise ValueError(f"blocks: block {name!r} is empty for {P} parameters")


@dataclass
class BlockHutchinson:
    r"""Result of :func:`block_hutchinson`.

    Attributes:
        traces: block name ``g`` → estimate of :math:`\operatorname{Tr}H_{gg}`.
        frobenius_sq: ``(g, h)`` → estimate of :math:`\lVert H_{gh}\rVert_F^2`.
        num_probes: the number of Rademacher probes.
        trace_samples, frobenius_samples: the per-probe values whose means these are (one
            array of ``num_probes`` entries per key), for error bars.
    """

    traces: Dict[str, float]
    frobenius_sq: Dict[Tuple[str, str], float]
    num_probes: int
    trace_samples: Dict[str, np.ndarray] = None
    frobenius_samples: Dict[Tuple[str, str], np.ndarray] = None

    @property
    def trace_stderr(self) -> Dict[str, float]:
        r"""block → standard error of :math:`\operatorname{Tr}H_{gg}`: the probes' sample
        standard deviation over :math:`\sqrt m` (``nan`` for one probe)."""
        return {g: _stderr(v) for g, v in self.trace_samples.items()}


def block_hutchinson(operator, blocks: Mapping[str, slice], num_probes: int,
                     seed: int = 0) -> BlockHutchinson:
    r"""Hutchinson estimates of the diagonal blocks' traces and of every block's Frobenius norm.

    For each Rademacher probe :math:`v` and each block :math:`h`, one product
    :math:`w = H[0; v_h; 0]` gives :math:`v_h^\top w_h`, unbiased for
    :math:`\operatorname{Tr}H_{hh}`, and :math:`\lVert w_g\rVert^2 = v_h^\top H_{gh}^\top
    H_{gh} v_h`, unbiased for :math:`\lVert H_{gh}\rVert_F^2`. The variance of one probe's
    trace estimate is :math:`2(\lVert H_{hh}\rVert_F^2 - \sum_i (H_{hh})_{ii}^2)`
    (:func:`hutchinson_variance`); the estimates are means over ``num_probes`` probes. Costs
    ``num_probes × len(blocks)`` Hessian-vector products.

    Args:
        operator: the Hessian, anything with ``shape``, ``dtype``, ``device`` and ``@`` (a
            :class:`~flatness.operators.HessianOperator` or a dense symmetric tensor).
        blocks: block name → contiguous ``slice`` of the parameter vector (see
            :func:`group_slices`); the blocks should not overlap.
        num_probes: probes :math:`m`.
        seed: seeds the probes (a ``torch.Generator`` on the CPU).

    Returns:
        A :class:`BlockHutchinson`.

    Raises:
        ValueError: a non-positive ``num_probes`` or a bad block.
    """
    check_positive(num_probes, "num_probes", integer=True)
    P = operator.shape[0]
    _check_blocks(blocks, P)
    gen = torch.Generator().manual_seed(seed)
    traces = {g: 0.0 for g in blocks}
    fro2 = {(g, h): 0.0 for g in blocks for h in blocks}
    t_samples = {g: [] for g in blocks}
    f_samples = {key: [] for key in fro2}
    for _ in range(num_probes):
        v = (torch.randint(0, 2, (P,), generator=gen) * 2 - 1).to(operator.dtype).to(operator.device)
        for h, sh in blocks.items():
            vh = torch.zeros(P, dtype=operator.dtype, device=operator.device)
            vh[sh] = v[sh]
            Hv = operator @ vh
            t_samples[h].append(float(v[sh] @ Hv[sh]))
            traces[h] += t_samples[h][-1] / num_probes
            for g, sg in blocks.items():
                f_samples[(g, h)].append(float(Hv[sg].pow(2).sum()))
                fro2[(g, h)] += f_samples[(g, h)][-1] / num_probes
    return BlockHutchinson(traces, fro2, num_probes, {k: np.array(v) for k, v in t_samples.items()},
                           {k: np.array(v) for k, v in f_samples.items()})


def _stderr(samples) -> float:
    samples = np.asarray(samples, dtype=np.float64)
    return float(samples.std(ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else float("nan")


def hutchinson_variance(A: Tensor) -> float:
    r"""The variance of one Rademacher probe's estimate :math:`v^\top Av` of
    :math:`\operatorname{Tr}A`, for symmetric :math:`A`:
    :math:`2(\lVert A\rVert_F^2 - \sum_i A_{ii}^2)`.

    Args:
        A: a symmetric square matrix.

    Returns:
        The variance (a float).

    Raises:
        ValueError: ``A`` is not a square matrix.

    >>> hutchinson_variance(torch.tensor([[1.0, 2.0], [2.0, 3.0]]))
    16.0
    """
    if not isinstance(A, Tensor) or A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError("A: expected a square matrix")
    return float(2 * (A.pow(2).sum() - A.diagonal().pow(2).sum()))


def _check_powers(powers: Mapping[str, float], names) -> None:
    missing = [g for g in names if g not in powers]
    if missing:
        raise ValueError(f"powers: no power for blocks {missing}")


def scaled_block_trace(traces: Mapping[str, float], powers: Mapping[str, float], alphas):
    r""":math:`\sum_g \alpha^{-2p_g}\operatorname{Tr}H_{gg}`: the trace of
    :math:`D^{-1}HD^{-1}` with :math:`D = \operatorname{diag}(\alpha^{p_g})`.

    Args:
        traces: block → :math:`\operatorname{Tr}H_{gg}` (e.g. ``BlockHutchinson.traces``).
        powers: block → :math:`p_g`.
        alphas: α (a float or a NumPy array).

    Returns:
        The predicted trace at each α.

    Raises:
        ValueError: a block without a power.

    >>> scaled_block_trace({"a": 1.0, "b": 2.0}, {"a": 1, "b": -1}, 2.0)
    8.25
    """
    _check_powers(powers, traces)
    return sum(alphas ** (-2.0 * powers[g]) * traces[g] for g in traces)


def scaled_block_frobenius(frobenius_sq: Mapping[Tuple[str, str], float],
                           powers: Mapping[str, float], alphas):
    r""":math:`\bigl(\sum_{g,h}\alpha^{-2(p_g+p_h)}\lVert H_{gh}\rVert_F^2\bigr)^{1/2}`: the
    Frobenius norm of :math:`D^{-1}HD^{-1}`.

    Args:
        frobenius_sq: ``(g, h)`` → :math:`\lVert H_{gh}\rVert_F^2` (every pair of blocks).
        powers: block → :math:`p_g`.
        alphas: α (a float or a NumPy array).

    Returns:
        The predicted Frobenius norm at each α.

    >>> float(scaled_block_frobenius({("a", "a"): 4.0}, {"a": 1}, 2.0))
    0.5
    """
    _check_powers(powers, {g for pair in frobenius_sq for g in pair})
    return np.sqrt(sum(alphas ** (-2.0 * (powers[g] + powers[h])) * f
                       for (g, h), f in frobenius_sq.items()))


def layer_top_eigenvalues(model: nn.Module, loss_fn, data, blocks: Sequence[slice],
                          tol: float = 1e-6, operator=None) -> list:
    r"""The largest eigenvalue of each diagonal block :math:`H_{bb}` (Lanczos,
    :func:`flatness.curvature.block_top_eigenvalues`).

    Args:
        model, loss_fn, data: as for :class:`flatness.operators.HessianOperator`.
        blocks: contiguous slices of the flat parameter vector.
        tol: ARPACK's relative tolerance.
        operator: an existing Hessian operator of the model (built once otherwise).

    Returns:
        A list of floats, one per block.
    """
    H = operator or HessianOperator(model, loss_fn, data)
    return [block_top_eigenvalues(model, loss_fn, data, b, tol=tol, operator=H)[0] for b in blocks]


def block_gram(model: nn.Module, loss_fn, data, blocks: Sequence[slice], tol: float = 1e-6,
               operator=None) -> Tuple[Tensor, float]:
    r"""Gram matrix :math:`C_{kl} = u_k^\top H u_l` of the top eigenvectors :math:`u_k` of the
    diagonal blocks, and its smallest eigenvalue μ.

    The :math:`u_k` have disjoint supports, so they are orthonormal; if :math:`C \succ 0`, the
    Hessian has at least ``len(blocks)`` eigenvalues :math:`\ge \mu` on their span
    (Courant–Fischer), and rescaling those blocks by α multiplies that bound by
    :math:`\alpha^{-2}`. The signs of the :math:`u_k` are arbitrary; μ does not depend on them.

    Args:
        model, loss_fn, data: as for :class:`flatness.operators.HessianOperator`.
        blocks: disjoint contiguous slices of the flat parameter vector.
        tol: ARPACK's relative tolerance.
        operator: an existing Hessian operator of the model.

    Returns:
        ``(C, mu)``: ``C`` a float64 ``len(blocks) × len(blocks)`` tensor, ``mu`` the smallest
        eigenvalue of its symmetric part.
    """
    H = operator or HessianOperator(model, loss_fn, data)
    P = H.shape[0]
    U = torch.zeros(P, len(blocks), dtype=H.dtype)
    for col, b in enumerate(blocks):
        _, vec = block_top_eigenvalues(model, loss_fn, data, b, tol=tol, return_eigenvectors=True,
                                       operator=H)
        U[b, col] = torch.as_tensor(vec[:, 0], dtype=H.dtype)
    U = U.to(H.device)
    C = (U.T @ (H @ U)).double().cpu()
    mu = float(torch.linalg.eigvalsh((C + C.T) / 2)[0])
    return C, mu


@dataclass
class BlockScalingPrediction:
    r"""Result of :func:`block_scaling_prediction`.

    Attributes:
        blocks: block name → slice.
        estimates: the :class:`BlockHutchinson` estimates at α = 1.
        lambda_max: block name → :math:`\lambda_{\max}(H_{gg})`.
        trace: the predicted :math:`\operatorname{Tr}\nabla^2L(D\theta)` at each α.
        frobenius: the predicted :math:`\lVert\nabla^2L(D\theta)\rVert_F` at each α.
        trace_stderr, frobenius_stderr: their standard errors at each α, from the per-probe
            predictions :math:`\sum_g \alpha^{-2p_g} v_g^\top H_{gg} v_g` (and the same for the
            squared Frobenius norm, then the delta method :math:`\mathrm{se}(F) =
            \mathrm{se}(F^2)/(2F)`): the probes' sample standard deviation over :math:`\sqrt m`.
    """

    blocks: Dict[str, slice]
    estimates: BlockHutchinson
    lambda_max: Dict[str, float]
    trace: np.ndarray
    frobenius: np.ndarray
    trace_stderr: np.ndarray = None
    frobenius_stderr: np.ndarray = None

    def table(self) -> MarkdownTable:
        r"""One row per block: :math:`\operatorname{Tr}H_{gg}` ± its standard error at α = 1, and
        :math:`\lambda_{\max}(H_{gg})`."""
        se = self.estimates.trace_stderr
        return markdown_table(["block g", "Tr H_gg at α = 1", "λ_max(H_gg)"],
                              [(g, f"{t:.3f} ± {se[g]:.2g}", f"{self.lambda_max[g]:.3f}")
                               for g, t in self.estimates.traces.items()])


def block_scaling_prediction(model: nn.Module, loss_fn, data, groups: Mapping[str, Sequence[str]],
                             powers: Mapping[str, float], alphas, num_probes: int, seed: int = 0,
                             tol: float = 1e-6) -> BlockScalingPrediction:
    r"""Predict the trace and Frobenius norm of :math:`\nabla^2L(D\theta)` from blocks at θ.

    Groups the parameters (:func:`group_slices`), estimates the blocks' traces and Frobenius
    norms with :func:`block_hutchinson` and each block's λ_max with
    :func:`layer_top_eigenvalues`, all on one Hessian operator, and evaluates
    :func:`scaled_block_trace` and :func:`scaled_block_frobenius` at ``alphas``.

    Args:
        model, loss_fn, data: as for :class:`flatness.operators.HessianOperator`.
        groups: block name → adjacent parameter names.
        powers: block name → :math:`p_g` (:math:`d_g = \alpha^{p_g}`).
        alphas: the α at which to predict (a NumPy array).
        num_probes: Rademacher probes.
        seed: seeds the probes.
        tol: the block eigenvalue solver's relative tolerance.

    Returns:
        A :class:`BlockScalingPrediction`.
    """
    blocks = group_slices(model, groups)
    _check_powers(powers, blocks)
    H = HessianOperator(model, loss_fn, data)
    est = block_hutchinson(H, blocks, num_probes=num_probes, seed=seed)
    lams = layer_top_eigenvalues(model, loss_fn, data, list(blocks.values()), tol=tol, operator=H)
    a = np.asarray(alphas, dtype=np.float64)[..., None]   # per-probe predictions: (..., m)
    t_probe = scaled_block_trace(est.trace_samples, powers, a)
    f2_probe = sum(a ** (-2.0 * (powers[g] + powers[h])) * v for (g, h), v in est.frobenius_samples.items())
    m = est.num_probes
    se = lambda x: x.std(-1, ddof=1) / np.sqrt(m) if m > 1 else np.full(x.shape[:-1], np.nan)  # noqa: E731
    fro = scaled_block_frobenius(est.frobenius_sq, powers, alphas)
    return BlockScalingPrediction(blocks, est, dict(zip(blocks, lams)),
                                  scaled_block_trace(est.traces, powers, alphas), fro,
                                  se(t_probe), se(f2_probe) / (2 * fro))


def curvature_profile(models: Sequence[nn.Module], loss_fn, data, num_matvecs: int,
                      epsilons: Sequence[float] = (1e-3,), subspace_dim: int = 100,
                      seed: int = 0, tol: float = 1e-4, num_repeats: int = 1) -> Dict[object, np.ndarray]:
    r"""λ_max, trace, Frobenius norm and Keskar's sharpness of each network of a family.

    For each model: :math:`\lambda_{\max}` (:func:`~flatness.curvature.top_eigenvalues`, relative
    tolerance ``tol``), :math:`\operatorname{Tr}H` (:func:`~flatness.curvature.hessian_trace`),
    :math:`\lVert H\rVert_F` (:func:`~flatness.curvature.hessian_frobenius`), both with
    ``num_matvecs`` products, and Keskar et al.'s sharpness for every ε in the full space and in
    a random ``subspace_dim``-dimensional subspace (the same ``seed``, hence the same subspace,
    for every model).

    Args:
        models: the networks (not changed).
        loss_fn, data: the loss and the ``(X, y)`` pair whose curvature is measured.
        num_matvecs: Hessian-vector products of each trace / Frobenius estimate.
        epsilons: Keskar's box sizes.
        subspace_dim: dimension of the random subspace.
        seed: seeds every estimator.
        tol: the eigenvalue solver's relative tolerance.
        num_repeats: independent runs ``R`` of the trace and Frobenius estimators (seeds
            ``seed, seed + 1, …``); the reported values are those of ``seed`` (the same numbers
            as with ``R = 1``), and with ``R ≥ 2`` ``"trace_sd"`` and ``"fro_sd"`` are the sample
            standard deviations of the ``R`` runs — the error bar of one estimate.

    Returns:
        A dict of arrays, one entry per model: ``"lambda_max"``, ``"trace"``, ``"fro"``,
        ``("full", eps)`` and ``("subspace", eps)`` (and ``"trace_sd"``, ``"fro_sd"`` and the
        0-d ``"num_repeats"`` when ``num_repeats ≥ 2``).
    """
    models = list(models)
    if not models:
        raise ValueError("models: expected at least one network")
    check_positive(num_matvecs, "num_matvecs", integer=True)
    check_positive(num_repeats, "num_repeats", integer=True)
    results = {key: [] for key in ("lambda_max", "trace", "fro")}
    if num_repeats > 1:
        results["trace_sd"], results["fro_sd"], results["num_repeats"] = [], [], num_repeats
    for eps in epsilons:
        results[("full", eps)], results[("subspace", eps)] = [], []
    for net in models:
        H = HessianOperator(net, loss_fn, data)
        results["lambda_max"].append(top_eigenvalues(net, loss_fn, data, k=1, tol=tol,
                                                     operator=H).lambda_max)
        results["trace"].append(hessian_trace(net, loss_fn, data, num_matvecs=num_matvecs,
                                              seed=seed, operator=H))
        results["fro"].append(hessian_frobenius(net, loss_fn, data, num_matvecs=num_matvecs,
                                                seed=seed, operator=H))
        if num_repeats > 1:
            for key, fn, first in (("trace", hessian_trace, results["trace"][-1]),
                                   ("fro", hessian_frobenius, results["fro"][-1])):
                runs = [first] + [fn(net, loss_fn, data, num_matvecs=num_matvecs, seed=seed + r, operator=H)
                                  for r in range(1, num_repeats)]
                results[key + "_sd"].append(float(np.std(runs, ddof=1)))
        for eps in epsilons:
            results[("full", eps)].append(keskar_sharpness(net, loss_fn, data, eps=eps, seed=seed))
            results[("subspace", eps)].append(keskar_sharpness(net, loss_fn, data, eps=eps,
                                                               subspace_dim=subspace_dim, seed=seed))
    return {k: np.array(v) for k, v in results.items()}


def profile_table(results: Mapping, labels: Sequence[str]) -> MarkdownTable:
    """A table of a :func:`curvature_profile`: one row per model, 4 significant digits.

    The sharpness columns come full space first, then subspace, each in the order of ε.
    """
    eps = [key[1] for key in results if isinstance(key, tuple) and key[0] == "full"]
    sharp = [(kind, e) for kind in ("full", "subspace") for e in eps]
    keys = ["lambda_max", "trace", "fro", *sharp]
    if any(len(results[k]) != len(labels) for k in keys):
        raise ValueError("labels: expected one label per model of the profile")
    return markdown_table(["α", "λ_max", "Tr H", "‖H‖_F", *[f"{kind}, ε = {e:g}" for kind, e in sharp]],
                          [(label, *[f"{results[k][i]:.4g}" for k in keys])
                           for i, label in enumerate(labels)])


def scaling_agreement(results: Mapping, prediction: BlockScalingPrediction, powers: Mapping[str, float],
                      alphas, level: float = 0.05) -> Dict[str, np.ndarray]:
    r"""The measured trace and Frobenius norm of a :func:`curvature_profile` (run with
    ``num_repeats ≥ 2``) against the block prediction at the same α, with error bars on both.

    For each α: :math:`z = (\text{measured} - \text{predicted}) / \sqrt{\mathrm{sd}^2 + \mathrm{se}^2}`,
    with sd the standard deviation of one measured estimate (``"trace_sd"``/``"fro_sd"``) and se
    the standard error of the prediction (:func:`block_scaling_prediction`). Both estimate the
    same number (:math:`\nabla^2L(D\theta) = D^{-1}HD^{-1}` exactly), so :math:`|z|` is of order
    one unless an estimator is biased.

    Args:
        results: the profile (keys ``"trace"``, ``"trace_sd"``, ``"fro"``, ``"fro_sd"``).
        prediction: the :class:`BlockScalingPrediction` at α = 1 (its per-probe samples are used).
        powers: block → :math:`p_g`.
        alphas: the α of the profile's models.
        level: the family-wise level of ``z_threshold``.

    Returns:
        A dict of arrays: ``trace_pred``, ``trace_pred_se``, ``trace_z``, ``fro_pred``,
        ``fro_pred_se``, ``fro_z``, and ``z_threshold``: the two-sided Bonferroni quantile
        :math:`t_{R-1}(1 - \text{level}/(2n))` over the :math:`n = 2|\alpha|` comparisons, with
        Student's t of :math:`R - 1` degrees of freedom because each measured sd comes from only
        :math:`R` runs (a normal quantile would reject a correct identity far too often when
        :math:`R` is small).

    Raises:
        ValueError: a profile without standard deviations.
    """
    if "trace_sd" not in results:
        raise ValueError("results: expected a curvature_profile with num_repeats ≥ 2 (no trace_sd)")
    est = prediction.estimates
    a = np.asarray(alphas, dtype=np.float64)
    t_probe = scaled_block_trace(est.trace_samples, powers, a[:, None])
    f2_probe = sum(a[:, None] ** (-2.0 * (powers[g] + powers[h])) * v for (g, h), v in est.frobenius_samples.items())
    m = est.num_probes
    out = dict(trace_pred=scaled_block_trace(est.traces, powers, a),
               fro_pred=scaled_block_frobenius(est.frobenius_sq, powers, a))
    out["trace_pred_se"] = t_probe.std(1, ddof=1) / np.sqrt(m)
    out["fro_pred_se"] = f2_probe.std(1, ddof=1) / np.sqrt(m) / (2 * out["fro_pred"])
    for key in ("trace", "fro"):
        out[key + "_z"] = (np.asarray(results[key]) - out[key + "_pred"]) / np.sqrt(
            np.asarray(results[key + "_sd"]) ** 2 + out[key + "_pred_se"] ** 2)
    from scipy.stats import t as student_t

    out["z_threshold"] = float(student_t.ppf(1 - level / (4 * len(a)), int(results["num_repeats"]) - 1))
    return out


def agreement_table(results: Mapping, agreement: Mapping, labels: Sequence[str]) -> MarkdownTable:
    """A table of :func:`scaling_agreement`: per α, measured ± sd, predicted ± se and z, for the
    trace and the Frobenius norm."""
    fmt = lambda v, e: f"{v:.4g} ± {e:.2g}"  # noqa: E731
    return markdown_table(["α", "Tr H measured", "Tr H predicted", "z", "‖H‖_F measured", "‖H‖_F predicted", "z"],
                          [(label, fmt(results["trace"][i], results["trace_sd"][i]),
                            fmt(agreement["trace_pred"][i], agreement["trace_pred_se"][i]), f"{agreement['trace_z'][i]:+.2f}",
                            fmt(results["fro"][i], results["fro_sd"][i]),
                            fmt(agreement["fro_pred"][i], agreement["fro_pred_se"][i]), f"{agreement['fro_z'][i]:+.2f}")
                           for i, label in enumerate(labels)])
