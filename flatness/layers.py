r"""Per-layer curvature: diagonal blocks of the Hessian, and what rescaling layers does to them.

Group the parameter vector into blocks :math:`\theta = (\theta_1, \dots, \theta_G)` (one layer,
or a few) and rescale block :math:`g` by :math:`d_g = \alpha^{p_g}`, i.e. :math:`\theta \mapsto
D\theta`. If the loss is invariant, :math:`L(D\theta) = L(\theta)`, then
:math:`\nabla^2L(D\theta) = D^{-1}\nabla^2L(\theta)D^{-1}`, so

.. math:: \operatorname{Tr}\nabla^2L(D\theta) = \sum_g \alpha^{-2p_g}\operatorname{Tr}H_{gg},
   \qquad \lVert\nabla^2L(D\theta)\rVert_F^2 = \sum_{g,h}\alpha^{-2(p_g+p_h)}\lVert H_{gh}\rVert_F^2 .

* :func:`group_slices` names contiguous blocks of the flat parameter vector;
  :func:`block_hutchinson` estimates every :math:`\operatorname{Tr}H_{gg}` and
  :math:`\lVert H_{gh}\rVert_F^2` with the same Rademacher probes; :func:`scaled_block_trace` and
  :func:`scaled_block_frobenius` turn them into the curves above.
* :func:`block_scaling_prediction` does both at once: the predicted trace and Frobenius curves
  from the blocks at α = 1.
* :func:`alpha_scale_family` builds the α-scaled copies of a network and checks that they
  compute the same function.
* :func:`layer_top_eigenvalues` and :func:`block_gram` give the largest eigenvalue of each block
  and the Gram matrix :math:`C_{kl} = u_k^\top H u_l` of the blocks' top eigenvectors.
* :func:`block_scaling_check` checks the identity entry by entry on dense Hessians, and
  :func:`alpha_scale_dense_check` does so for Dinh et al.'s :math:`T_\alpha`.
* :func:`sharpen_layers` rescales the first :math:`K-1` weight layers so that the Hessian has
  :math:`K-1` eigenvalues above a target (Dinh et al. 2017, Theorem 5).
* :func:`curvature_profile` measures λ_max, the trace, the Frobenius norm and Keskar's sharpness
  of each network of a family (for example the α-scaled copies of one network).
* :func:`coordinate_curvature_1d` is the curvature of a one-dimensional loss in another
  coordinate, by central differences.
* :func:`scale_parameters` and :func:`scaled_parameters_loss` rescale named parameters,
  :func:`with_flat_parameters` loads a whole parameter vector;
  :func:`scale_invariance_check` checks :math:`\nabla^2L(cw) = c^{-2}\nabla^2L(w)` for a layer
  followed by batch normalization, and :func:`input_map_profile` measures what an invertible
  input map, absorbed by the first layer, does to the curvature;
  :func:`log_bisect`, :func:`log_box_area` and :func:`hyperbolic_band_area` measure the sublevel
  set :math:`\{p_{lo} < st < p_{hi}\}` on the plane of two layer scalings :math:`(s, t)`;
  :func:`plane_band` does all of it for a loss :math:`L(s, t)`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from .checks import check_positive
from .curvature import (
    block_top_eigenvalues,
    hessian_frobenius,
    hessian_trace,
    input_hessian_top_eigenvalues,
    top_eigenvalues,
)
from .operators import HessianOperator, dense_hessian
from .params import flat_parameters, parameter_slices
from .reparametrize import input_transform
from .sharpness import keskar_sharpness
from .stats import loglog_fit
from .symmetries import (
    alpha_factors,
    alpha_scale,
    complete_factors,
    parameter_hessian,
    parameter_scaling,
    weight_layers,
)
from .tables import MarkdownTable, markdown_table
from .training import evaluate

__all__ = ["group_slices", "BlockHutchinson", "block_hutchinson", "hutchinson_variance",
           "scaled_block_trace", "scaled_block_frobenius", "BlockScalingPrediction",
           "block_scaling_prediction", "AlphaScaleFamily", "alpha_scale_family",
           "layer_top_eigenvalues", "block_gram", "BlockScalingCheck", "block_scaling_check",
           "alpha_scale_dense_check", "LayerSharpening", "sharpen_layers", "curvature_profile",
           "profile_table", "dense_check_table", "scale_parameters", "scaled_parameters_loss",
           "with_flat_parameters", "FunctionComparison", "compare_functions",
           "ScaleInvarianceCheck", "scale_invariance_check", "InputMapProfile",
           "input_map_profile", "coordinate_curvature_1d", "log_bisect", "log_box_area",
           "hyperbolic_band_area", "PlaneBand", "plane_band"]


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
    """

    traces: Dict[str, float]
    frobenius_sq: Dict[Tuple[str, str], float]
    num_probes: int


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
    for _ in range(num_probes):
        v = (torch.randint(0, 2, (P,), generator=gen) * 2 - 1).to(operator.dtype).to(operator.device)
        for h, sh in blocks.items():
            vh = torch.zeros(P, dtype=operator.dtype, device=operator.device)
            vh[sh] = v[sh]
            Hv = operator @ vh
            traces[h] += float(v[sh] @ Hv[sh]) / num_probes
            for g, sg in blocks.items():
                fro2[(g, h)] += float(Hv[sg].pow(2).sum()) / num_probes
    return BlockHutchinson(traces, fro2, num_probes)


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


@dataclass
class BlockScalingPrediction:
    r"""Result of :func:`block_scaling_prediction`.

    Attributes:
        blocks: block name → slice.
        estimates: the :class:`BlockHutchinson` estimates at α = 1.
        lambda_max: block name → :math:`\lambda_{\max}(H_{gg})`.
        trace: the predicted :math:`\operatorname{Tr}\nabla^2L(D\theta)` at each α.
        frobenius: the predicted :math:`\lVert\nabla^2L(D\theta)\rVert_F` at each α.
    """

    blocks: Dict[str, slice]
    estimates: BlockHutchinson
    lambda_max: Dict[str, float]
    trace: np.ndarray
    frobenius: np.ndarray


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
    return BlockScalingPrediction(blocks, est, dict(zip(blocks, lams)),
                                  scaled_block_trace(est.traces, powers, alphas),
                                  scaled_block_frobenius(est.frobenius_sq, powers, alphas))


@dataclass
class AlphaScaleFamily:
    r"""Result of :func:`alpha_scale_family`; every list has one entry per α.

    Attributes:
        models: α → the transformed network :math:`T_\alpha\theta`.
        logit_change: :math:`\max|f_{T_\alpha\theta}(x) - f_\theta(x)|` over the inputs.
        norms: :math:`\lVert T_\alpha\theta\rVert_2`.
        train, test: ``(loss, accuracy)`` on the training and the test pair.
    """

    models: Dict[float, nn.Module]
    logit_change: list
    norms: list
    train: list
    test: list

    @property
    def train_losses(self) -> list:
        """The training losses, one per α."""
        return [loss for loss, _ in self.train]

    @property
    def test_accuracies(self) -> list:
        """The test accuracies, one per α."""
        return [acc for _, acc in self.test]

    def table(self, labels: Sequence[str]) -> MarkdownTable:
        """One row per α (labelled by ``labels``): output change, norm, losses and accuracies."""
        if len(labels) != len(self.models):
            raise ValueError(f"labels: expected {len(self.models)} labels, got {len(labels)}")
        return markdown_table(
            ["α", "max abs Δ logit", "‖θ‖", "train loss", "train acc", "test loss", "test acc"],
            [(label, f"{dl:.1e}", f"{norm:.1f}", f"{trl:.6f}", f"{tra:.4f}", f"{tel:.6f}", f"{tea:.4f}")
             for label, dl, norm, (trl, tra), (tel, tea)
             in zip(labels, self.logit_change, self.norms, self.train, self.test)])


def alpha_scale_family(model: nn.Module, alphas: Sequence[float], X, train, test,
                       layers: Tuple[int, int] = (0, 1)) -> AlphaScaleFamily:
    r"""The α-scaled copies :math:`T_\alpha\theta` of a network, and the evidence that they
    compute one function: the largest change of any output on ``X``, and the losses and
    accuracies on ``train`` and ``test``.

    Args:
        model: a network accepted by :func:`flatness.symmetries.alpha_scale` (not changed).
        alphas: the factors α > 0.
        X: inputs on which the outputs are compared.
        train, test: ``(X, y)`` pairs for :func:`flatness.training.evaluate`.
        layers: the two weight layers scaled by α and 1/α
            (:func:`flatness.symmetries.alpha_factors`).

    Returns:
        An :class:`AlphaScaleFamily`.
    """
    alphas = list(alphas)
    if not alphas:
        raise ValueError("alphas: expected at least one factor")
    K = len(weight_layers(model))
    models = {a: alpha_scale(model, alpha_factors(K, a, layers)) for a in alphas}
    with torch.no_grad():
        reference = model(X)
        change = [float((net(X) - reference).abs().max()) for net in models.values()]
        norms = [float(flat_parameters(net).norm()) for net in models.values()]
    return AlphaScaleFamily(models, change, norms, [evaluate(net, train) for net in models.values()],
                            [evaluate(net, test) for net in models.values()])


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
class BlockScalingCheck:
    r"""Result of :func:`block_scaling_check`.

    Attributes:
        identity_error: :math:`\max|H_D - D^{-1}HD^{-1}| / \max|D^{-1}HD^{-1}|`.
        off_diagonal_change: the largest change of the off-diagonal blocks :math:`H_{gh}`
            (:math:`g` before :math:`h`) whose factors cancel, :math:`p_g + p_h = 0`, relative to
            their largest entry.
        lambda_max, lambda_max_scaled: the largest eigenvalues of ``H`` and ``H_scaled``.
        trace_scaled: :math:`\operatorname{Tr}H_D`.
        trace_formula: :math:`\sum_g \alpha^{-2p_g}\operatorname{Tr}H_{gg}`.
        trace_error: their relative difference.
    """

    identity_error: float
    off_diagonal_change: float
    lambda_max: float
    lambda_max_scaled: float
    trace_scaled: float
    trace_formula: float
    trace_error: float


def block_scaling_check(H: Tensor, H_scaled: Tensor, scaling: Tensor, blocks: Mapping[str, slice],
                        powers: Mapping[str, float], alpha: float) -> BlockScalingCheck:
    r"""Check :math:`\nabla^2L(D\theta) = D^{-1}\nabla^2L(\theta)D^{-1}` on dense Hessians.

    Args:
        H: the dense Hessian at θ.
        H_scaled: the dense Hessian at :math:`D\theta`.
        scaling: the diagonal of :math:`D` (e.g. :func:`flatness.symmetries.parameter_scaling`).
        blocks: block → slice; together they should cover the vector.
        powers: block → :math:`p_g` with :math:`d_g = \alpha^{p_g}` on that block.
        alpha: α.

    Returns:
        A :class:`BlockScalingCheck`.

    Raises:
        ValueError: shapes that do not match, or a block without a power.
    """
    if H.ndim != 2 or H.shape != H_scaled.shape or scaling.shape != H.shape[:1]:
        raise ValueError(f"H, H_scaled, scaling: expected two n × n matrices and n factors, got "
                         f"{tuple(H.shape)}, {tuple(H_scaled.shape)}, {tuple(scaling.shape)}")
    _check_blocks(blocks, H.shape[0])
    _check_powers(powers, blocks)
    expected = H / scaling[:, None] / scaling[None, :]
    err = float((H_scaled - expected).abs().max() / expected.abs().max())
    formula = scaled_block_trace({g: float(H[b, b].trace()) for g, b in blocks.items()}, powers,
                                 alpha)
    trace = float(H_scaled.trace())
    off, names = 0.0, list(blocks)
    for i, (g, bg) in enumerate(blocks.items()):
        for h in names[i + 1:]:
            bh = blocks[h]
            if powers[g] + powers[h] == 0 and H[bg, bh].abs().max() > 0:
                off = max(off, float((H_scaled[bg, bh] - H[bg, bh]).abs().max()
                                     / H[bg, bh].abs().max()))
    return BlockScalingCheck(err, off, float(torch.linalg.eigvalsh(H)[-1]),
                             float(torch.linalg.eigvalsh(H_scaled)[-1]), trace, formula,
                             abs(trace - formula) / formula)


def alpha_scale_dense_check(model: nn.Module, loss_fn, data, alpha: float,
                            H: Optional[Tensor] = None) -> BlockScalingCheck:
    r""":func:`block_scaling_check` for :math:`T_\alpha` (:func:`flatness.symmetries.alpha_scale`
    with a scalar α) on dense float64 Hessians.

    The blocks are the maximal runs of equal factors :math:`d_i` of
    :func:`flatness.symmetries.parameter_scaling` (for a bias-free one-hidden-layer network:
    :math:`\theta_1` with :math:`d = \alpha` and :math:`\theta_2` with :math:`d = \alpha^{-1}`),
    named ``"1"``, ``"2"``, … with powers :math:`p = \log d / \log\alpha` rounded to integers.

    Args:
        model: a network accepted by ``alpha_scale`` (float64 weights keep α·θ exact).
        loss_fn, data: the loss and the ``(X, y)`` pair of the Hessian.
        alpha: α > 0, α ≠ 1.
        H: the dense Hessian at θ, if already computed.

    Returns:
        A :class:`BlockScalingCheck`.

    Raises:
        ValueError: α = 1, or factors that are not integer powers of α.
    """
    check_positive(alpha, "alpha")
    if alpha == 1:
        raise ValueError("alpha: expected α ≠ 1 (every block has factor 1)")
    d = parameter_scaling(model, alpha)
    H = dense_hessian(model, loss_fn, data) if H is None else H
    H_scaled = dense_hessian(alpha_scale(model, alpha), loss_fn, data)
    values = d.double().tolist()
    blocks, powers, start = {}, {}, 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            name = str(len(blocks) + 1)
            p = math.log(values[start]) / math.log(alpha)
            if abs(p - round(p)) > 1e-9:
                raise ValueError(f"alpha: the factor {values[start]:g} is not an integer power of "
                                 f"α = {alpha:g}")
            blocks[name], powers[name], start = slice(start, i), int(round(p)), i
    return block_scaling_check(H, H_scaled, d, blocks, powers, alpha)


@dataclass
class LayerSharpening:
    r"""Result of :func:`sharpen_layers`.

    Attributes:
        gram: :math:`C_{kl} = u_k^\top H u_l` for the first :math:`K-1` weight blocks
            (:func:`block_gram`).
        mu: its smallest eigenvalue.
        target: :math:`M` = ``target_factor`` × λ_max(θ).
        alpha: the factor of the first :math:`K-1` layers, a power of two
            :math:`\le\sqrt{\mu/M}`.
        factors: the layer factors :math:`(\alpha, \dots, \alpha, \alpha^{1-K})`.
        model: the rescaled network (the same function as ``model``).
        top_before, top_after: the ``k`` largest Hessian eigenvalues before and after
            (:class:`~flatness.curvature.EigenResult`).
        blocks_before, blocks_after: λ_max of each weight block before and after.
        bound: :math:`\mu/\alpha^2`, the guaranteed lower bound on the :math:`(K-1)`-th eigenvalue.
        logit_change: the largest change of any output on ``X`` (``nan`` without ``X``).
    """

    gram: Tensor
    mu: float
    target: float
    alpha: float
    factors: Tuple[float, ...]
    model: nn.Module
    top_before: object
    top_after: object
    blocks_before: list
    blocks_after: list
    bound: float
    logit_change: float = math.nan

    def table(self) -> MarkdownTable:
        """λ_max of each weight block before and after, and the predicted factors α_k⁻²."""
        return markdown_table(["", *[f"layer {i + 1} block" for i in range(len(self.factors))]],
                              [("λ_max before", *[f"{v:.3g}" for v in self.blocks_before]),
                               ("λ_max after", *[f"{v:.3g}" for v in self.blocks_after]),
                               ("predicted factor α_k⁻²", *[f"{f ** -2:g}" for f in self.factors])])


def sharpen_layers(model: nn.Module, loss_fn, data, weights: Sequence[str], k: int = 8,
                   target_factor: float = 100.0, tol: float = 1e-4, X=None) -> LayerSharpening:
    r"""Make :math:`K-1` Hessian eigenvalues exceed :math:`M` without changing the function.

    Dinh et al. (2017), Theorem 5: with unit vectors :math:`u_k` on the weights of layers
    :math:`k < K` whose Gram matrix :math:`C = U^\top HU` has smallest eigenvalue
    :math:`\mu > 0`, the factors :math:`\alpha_k = \alpha` (:math:`k < K`),
    :math:`\alpha_K = \alpha^{1-K}` give :math:`U^\top\nabla^2L(T\theta)U = \alpha^{-2}C`,
    hence at least :math:`K-1` eigenvalues :math:`\ge\mu/\alpha^2` (Courant–Fischer). The
    :math:`u_k` are the top eigenvectors of the weight blocks; :math:`M` is ``target_factor``
    times λ_max(θ), and α is rounded down to a power of two so that the rescaled network computes
    the same outputs bit for bit.

    Args:
        model: a ReLU network accepted by :func:`flatness.symmetries.alpha_scale` (not changed).
        loss_fn, data: the loss and the ``(X, y)`` pair whose Hessian is used.
        weights: the names of the weight parameters of all :math:`K` weight layers, in order.
        k: eigenvalues reported before and after.
        target_factor: :math:`M / \lambda_{\max}(\theta)`.
        tol: the eigenvalue solvers' relative tolerance.
        X: inputs on which to compare the outputs of the two networks (optional).

    Returns:
        A :class:`LayerSharpening`.

    Raises:
        ValueError: fewer than two weight layers, an unknown name, or :math:`\mu \le 0` (the
            construction needs a positive definite Gram matrix).
    """
    weights = list(weights)
    if len(weights) < 2:
        raise ValueError(f"weights: expected the weight names of at least two layers, got {weights!r}")
    check_positive(target_factor, "target_factor")
    slices = parameter_slices(model)
    unknown = [w for w in weights if w not in slices]
    if unknown:
        raise ValueError(f"weights: unknown parameter names {unknown}")
    blocks = [slices[w] for w in weights]
    H0 = HessianOperator(model, loss_fn, data)
    C, mu = block_gram(model, loss_fn, data, blocks[:-1], tol=tol, operator=H0)
    if not mu > 0:
        raise ValueError(f"model: the Gram matrix of the blocks' top eigenvectors is not positive "
                         f"definite (smallest eigenvalue {mu:g})")
    top_before = top_eigenvalues(model, loss_fn, data, k=k, tol=tol, operator=H0)
    M = target_factor * top_before.lambda_max
    alpha = 2.0 ** math.floor(math.log2(math.sqrt(mu / M)))
    factors = complete_factors([alpha] * (len(weights) - 1))
    multi = alpha_scale(model, factors)
    H_ml = HessianOperator(multi, loss_fn, data)
    top_after = top_eigenvalues(multi, loss_fn, data, k=k, tol=tol, operator=H_ml)
    before = layer_top_eigenvalues(model, loss_fn, data, blocks, tol=tol, operator=H0)
    after = layer_top_eigenvalues(multi, loss_fn, data, blocks, tol=tol, operator=H_ml)
    change = math.nan
    if X is not None:
        with torch.no_grad():
            change = float((multi(X) - model(X)).abs().max())
    return LayerSharpening(C, mu, M, alpha, factors, multi, top_before, top_after, before, after,
                           mu / alpha ** 2, change)


def curvature_profile(models: Sequence[nn.Module], loss_fn, data, num_matvecs: int,
                      epsilons: Sequence[float] = (1e-3,), subspace_dim: int = 100,
                      seed: int = 0, tol: float = 1e-4) -> Dict[object, np.ndarray]:
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

    Returns:
        A dict of arrays, one entry per model: ``"lambda_max"``, ``"trace"``, ``"fro"``,
        ``("full", eps)`` and ``("subspace", eps)``.
    """
    models = list(models)
    if not models:
        raise ValueError("models: expected at least one network")
    check_positive(num_matvecs, "num_matvecs", integer=True)
    results = {key: [] for key in ("lambda_max", "trace", "fro")}
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


def dense_check_table(alphas: Sequence[float], checks: Sequence[BlockScalingCheck]) -> MarkdownTable:
    """A table of :func:`alpha_scale_dense_check` results, one row per α (two blocks)."""
    return markdown_table(["α", "λ_max(θ)", "λ_max(T_αθ)", "max rel. error of D⁻¹HD⁻¹", "change of H₁₂",
                           "Tr H(T_αθ)", "α⁻²Tr H₁₁ + α²Tr H₂₂"],
                          [(f"{a:g}", f"{c.lambda_max:.4g}", f"{c.lambda_max_scaled:.4g}",
                            f"{c.identity_error:.1e}", f"{c.off_diagonal_change:.1e}",
                            f"{c.trace_scaled:.5g}", f"{c.trace_formula:.5g}")
                           for a, c in zip(alphas, checks)])


def _check_factors(model: nn.Module, factors: Mapping[str, float]) -> None:
    names = dict(model.named_parameters())
    unknown = [k for k in factors if k not in names]
    if unknown:
        raise ValueError(f"factors: unknown parameter names {unknown}; expected names from "
                         f"{list(names)}")


def scale_parameters(model: nn.Module, factors: Mapping[str, float]) -> nn.Module:
    """A copy of ``model`` with each named parameter multiplied by its factor.

    Args:
        model: the network (not changed).
        factors: parameter name → factor.

    Returns:
        The rescaled copy.

    Raises:
        ValueError: an unknown parameter name.
    """
    _check_factors(model, factors)
    net = copy.deepcopy(model)
    named = dict(net.named_parameters())
    with torch.no_grad():
        for name, c in factors.items():
            named[name].mul_(c)
    return net


def scaled_parameters_loss(model: nn.Module, loss_fn, data, factors: Mapping[str, float]) -> float:
    r"""The loss of ``model`` with each named parameter multiplied by its factor, computed with
    ``torch.func.functional_call`` (the model is not touched, its mode is used as it is).

    Args:
        model: the network.
        loss_fn: the loss.
        data: an ``(X, y)`` pair.
        factors: parameter name → factor.

    Returns:
        The loss, a float.

    Raises:
        ValueError: an unknown parameter name.
    """
    _check_factors(model, factors)
    X, y = data
    p = {k: (factors[k] * v.detach() if k in factors else v.detach())
         for k, v in model.named_parameters()}
    with torch.no_grad():
        return float(loss_fn(functional_call(model, p, (X,)), y))


def with_flat_parameters(model: nn.Module, vector: Tensor) -> nn.Module:
    """A copy of ``model`` whose parameters are the flat ``vector``.

    Args:
        model: the network (not changed).
        vector: all parameters in ``model.parameters()`` order (cast to the model's dtype).

    Returns:
        The new network.

    Raises:
        ValueError: a vector of the wrong length.
    """
    n = sum(p.numel() for p in model.parameters())
    if not isinstance(vector, Tensor) or vector.shape != (n,):
        raise ValueError(f"vector: expected a tensor of shape ({n},), got "
                         f"{tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__}")
    net = copy.deepcopy(model)
    dtype = next(net.parameters()).dtype
    torch.nn.utils.vector_to_parameters(vector.to(dtype), net.parameters())
    return net


@dataclass
class FunctionComparison:
    """Result of :func:`compare_functions`.

    Attributes:
        logit_change: name → the largest change of any output against the reference.
        accuracy: name → accuracy on the data.
        reference_accuracy: the reference network's accuracy.
    """

    logit_change: Dict[str, float]
    accuracy: Dict[str, float]
    reference_accuracy: float

    def table(self, reference_name: str = "reference", first_column: str = "network",
              change_column: str = "max abs Δ logit") -> MarkdownTable:
        """The reference first, then one row per network."""
        return markdown_table([first_column, change_column, "test accuracy"],
                              [(reference_name, "0", f"{self.reference_accuracy:.4f}"),
                               *[(name, f"{self.logit_change[name]:.1e}", f"{self.accuracy[name]:.4f}")
                                 for name in self.logit_change]])


def compare_functions(models: Mapping[str, nn.Module], reference: nn.Module, data) -> FunctionComparison:
    """Do these networks compute the reference's function? Output changes and accuracies.

    Args:
        models: name → network.
        reference: the reference network.
        data: the ``(X, y)`` pair (accuracy by :func:`flatness.training.evaluate`).

    Returns:
        A :class:`FunctionComparison`.
    """
    X, _ = data
    with torch.no_grad():
        ref = reference(X)
        change = {name: float((net(X) - ref).abs().max()) for name, net in models.items()}
    return FunctionComparison(change, {name: evaluate(net, data)[1] for name, net in models.items()},
                              evaluate(reference, data)[1])


def _train_mode_loss(model: nn.Module, loss_fn, X: Tensor, y: Tensor) -> float:
    net = copy.deepcopy(model).train()    # batch statistics; the copy absorbs the running-stat update
    with torch.no_grad():
        return float(loss_fn(net(X), y))


@dataclass
class ScaleInvarianceCheck:
    r"""Result of :func:`scale_invariance_check`; one entry per factor :math:`c`.

    Attributes:
        factors: the factors :math:`c`.
        loss_gaps: :math:`|L(cw) - L(w)|` with batch statistics.
        eval_losses: the loss of the rescaled network in eval mode (running statistics).
        lambda_max: :math:`\lambda_{\max}(\nabla_w^2 L(cw))`.
        hessian_errors: :math:`\max|c^2\nabla^2L(cw) - \nabla^2L(w)| / \max|\nabla^2L(w)|`.
    """

    factors: list
    loss_gaps: list
    eval_losses: list
    lambda_max: list
    hessian_errors: list

    @property
    def lambda_slope(self) -> float:
        """The least-squares slope of ln λ_max against ln c (−2 for an exact symmetry)."""
        return loglog_fit(self.factors, self.lambda_max).slope

    def table(self, other: Optional["ScaleInvarianceCheck"] = None,
              other_label: str = "same, other model") -> MarkdownTable:
        """One row per factor; ``other`` adds the Hessian errors of a second check."""
        header = ["c", "abs L(cw) − L(w), batch stats", "eval-mode loss", "λ_max of ∇²L(cw)",
                  "max rel. error of c²∇²L(cw) vs ∇²L(w)"] + ([other_label] if other else [])
        extra = other.hessian_errors if other else [None] * len(self.factors)
        return markdown_table(header, [
            (f"{c:g}", f"{gap:.1e}", f"{ev:.4f}", f"{lam:.4g}", f"{err:.1e}",
             *([f"{e:.1e}"] if other else []))
            for c, gap, ev, lam, err, e in zip(self.factors, self.loss_gaps, self.eval_losses,
                                               self.lambda_max, self.hessian_errors, extra)])


def scale_invariance_check(model: nn.Module, loss_fn, data, name: str,
                           factors: Sequence[float]) -> ScaleInvarianceCheck:
    r"""Check the scale symmetry of a weight followed by batch normalization.

    With batch statistics, :math:`L(cw) = L(w)` for :math:`c > 0` (up to the ε of the
    normalization), hence :math:`\nabla^2L(cw) = c^{-2}\nabla^2L(w)`: the weight block's
    sharpness can be set at will. The block Hessians are dense
    (:func:`flatness.symmetries.parameter_hessian` with ``batch_statistics=True``).

    Args:
        model: the network (not changed; the train-mode losses are computed on copies).
        loss_fn: the loss.
        data: an ``(X, y)`` pair (one batch: its statistics normalize).
        name: the weight's parameter name.
        factors: the factors :math:`c > 0`.

    Returns:
        A :class:`ScaleInvarianceCheck`.
    """
    factors = list(factors)
    for c in factors:
        check_positive(c, "factors")
    _check_factors(model, {name: 1.0})
    X, y = data
    X = X.to(next(model.parameters()).dtype)
    H_w = parameter_hessian(model, loss_fn, data, name, batch_statistics=True)
    L_w = _train_mode_loss(model, loss_fn, X, y)
    out = ScaleInvarianceCheck(factors, [], [], [], [])
    for c in factors:
        net_c = scale_parameters(model, {name: c})
        H_c = parameter_hessian(net_c, loss_fn, data, name, batch_statistics=True)
        out.hessian_errors.append(float((c ** 2 * H_c - H_w).abs().max() / H_w.abs().max()))
        out.loss_gaps.append(abs(_train_mode_loss(net_c, loss_fn, X, y) - L_w))
        with torch.no_grad():
            out.eval_losses.append(float(loss_fn(copy.deepcopy(net_c).eval()(X), y)))
        out.lambda_max.append(float(torch.linalg.eigvalsh(H_c)[-1]))
    return out


@dataclass
class InputMapProfile:
    r"""Result of :func:`input_map_profile`; dicts keyed by the maps' names.

    Attributes:
        logit_change: the largest change of any output on the (mapped) test inputs.
        agreement: the share of test inputs with the same predicted class.
        accuracy: the test accuracy of the transformed network on the mapped inputs.
        input_lambda: per test signal, :math:`\lambda_{\max}(\nabla_x^2\ell)` (a tensor).
        param_lambda: :math:`\lambda_{\max}` of the parameter Hessian on the mapped data.
    """

    logit_change: Dict[str, float]
    agreement: Dict[str, float]
    accuracy: Dict[str, float]
    input_lambda: Dict[str, Tensor]
    param_lambda: Dict[str, float]

    def table(self) -> MarkdownTable:
        """One row per map."""
        return markdown_table(["input map", "max abs Δ logit", "same prediction", "test accuracy",
                               "mean input λ_max", "parameter λ_max"],
                              [(name, f"{self.logit_change[name]:.1e}", f"{self.agreement[name]:.4f}",
                                f"{self.accuracy[name]:.4f}", f"{float(self.input_lambda[name].mean()):.4g}",
                                f"{self.param_lambda[name]:.4g}") for name in self.logit_change])

    def scaling_errors(self, scales: Mapping[str, float], base: str) -> Dict[str, float]:
        r"""For isotropic maps :math:`x \mapsto \sigma x`: the largest per-signal deviation of
        :math:`\sigma^2\lambda_{\max}(\sigma) / \lambda_{\max}(\text{base})` from 1 (zero in exact
        arithmetic: the input Hessian scales by :math:`\sigma^{-2}`).

        Args:
            scales: map name → σ.
            base: the name of the map with σ = 1.
        """
        ref = self.input_lambda[base]
        return {name: float(((self.input_lambda[name] * s ** 2) / ref - 1).abs().max())
                for name, s in scales.items()}

    def rank_change(self, before: str, after: str, threshold: float = 1e-6):
        r"""How a map reorders the test signals by input curvature.

        Only signals with :math:`\lambda_{\max} > \text{threshold}\cdot\max` under ``before``
        count. Returns ``(smallest ratio, largest ratio, rank correlation)``: the extreme ratios
        after/before, and the correlation of the signals' ranks (Spearman's ρ without ties).
        """
        lam_b, lam_a = self.input_lambda[before], self.input_lambda[after]
        significant = lam_b > threshold * lam_b.max()
        ratio = (lam_a / lam_b)[significant]
        ranks_b, ranks_a = (np.argsort(np.argsort(lam[significant].numpy())) for lam in (lam_b, lam_a))
        return float(ratio.min()), float(ratio.max()), float(np.corrcoef(ranks_b, ranks_a)[0, 1])


def input_map_profile(model: nn.Module, loss_fn, transforms: Mapping, test, input_data, curv_data,
                      tol: float = 1e-4) -> InputMapProfile:
    r"""What invertible input maps :math:`x \mapsto Mx + b` do to a network's curvature.

    Each map is absorbed by the first layer (:func:`flatness.reparametrize.input_transform`,
    :math:`W \mapsto WM^{-1}`), so the new network on mapped inputs computes the old function.
    The input-space curvature then changes like :math:`M^{-\top}\nabla_x^2\ell M^{-1}` and the
    parameter-space curvature changes too.

    Args:
        model: the network (not changed).
        loss_fn: the loss.
        transforms: name → :class:`flatness.reparametrize.InputAffineMap`.
        test: the ``(X, y)`` test pair on which outputs and accuracy are compared.
        input_data: the ``(X, y)`` pair of the per-signal input curvature.
        curv_data: the ``(X, y)`` pair of the parameter Hessian.
        tol: the parameter eigenvalue solver's relative tolerance.

    Returns:
        An :class:`InputMapProfile`.
    """
    (X_test, y_test), (X_in, y_in), (X_curv, y_curv) = test, input_data, curv_data
    out = InputMapProfile({}, {}, {}, {}, {})
    with torch.no_grad():
        ref_logits = model(X_test)
        ref_pred = ref_logits.argmax(1)
    for name, T in transforms.items():
        new = input_transform(model, T)
        with torch.no_grad():
            logits = new(T.apply(X_test))
        out.logit_change[name] = float((logits - ref_logits).abs().max())
        out.agreement[name] = float((logits.argmax(1) == ref_pred).float().mean())
        out.accuracy[name] = evaluate(new, (T.apply(X_test), y_test))[1]
        out.input_lambda[name] = input_hessian_top_eigenvalues(new, loss_fn, (T.apply(X_in), y_in))
        out.param_lambda[name] = top_eigenvalues(new, loss_fn, (T.apply(X_curv), y_curv), k=1,
                                                 tol=tol).lambda_max
    return out


def coordinate_curvature_1d(loss: Callable, h, theta: float, rel_step: float = 1e-4) -> float:
    r"""The curvature :math:`\tilde L''(\eta)` of :math:`\tilde L = L\circ h^{-1}` at
    :math:`\eta = h(\theta)`, by a central second difference in η.

    The step is ``rel_step`` × :math:`h'(\theta)` in η (about ``rel_step`` in θ). At a minimum of
    :math:`L`, :math:`\tilde L''(h(\theta)) = L''(\theta)/h'(\theta)^2`; in general
    :math:`\tilde L'' = (L'' - L'\,h''/h')/h'^2`.

    Args:
        loss: :math:`L`, a function of NumPy arrays.
        h: a one-dimensional map with ``forward``, ``derivative`` and ``inverse`` on float64
            tensors (e.g. :class:`flatness.reparametrize.RadialMap`).
        theta: the point θ.
        rel_step: the step relative to :math:`h'(\theta)`.

    Returns:
        The finite-difference curvature.
    """
    check_positive(rel_step, "rel_step")
    eta = float(h.forward(torch.tensor(theta)))
    step = rel_step * float(h.derivative(torch.tensor(theta)))
    if step == 0:
        raise ValueError(f"h: its derivative vanishes at theta={theta!r}; it is not invertible there")
    values = loss(h.inverse(torch.tensor([eta - step, eta, eta + step], dtype=torch.float64)).numpy())
    return (values[0] - 2 * values[1] + values[2]) / step ** 2


def log_bisect(inside: Callable[[float], bool], start: float, outside: float,
               iterations: int = 50) -> float:
    r"""Where ``inside`` changes value between ``start`` and ``outside``, by bisection in
    :math:`\ln x` (geometric midpoints); the result is the last midpoint
    :math:`\sqrt{lo\cdot hi}`.

    Args:
        inside: a predicate, assumed to change value once between the two points.
        start, outside: positive end points (either order).
        iterations: bisection steps; the bracket shrinks by :math:`2^{-\text{iterations}}` in
            :math:`\ln x`.

    Returns:
        The estimated boundary.

    >>> round(log_bisect(lambda x: x < 3.0, 1.0, 100.0), 9)
    3.0
    """
    if not (start > 0 and outside > 0):
        raise ValueError(f"start, outside: expected positive values, got {start!r}, {outside!r}")
    check_positive(iterations, "iterations", integer=True)
    lo, hi = start, outside
    side = inside(lo)
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if inside(mid) == side:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def log_box_area(inside: Callable[[float, float], bool], R: float, num_samples: int,
                 rng: np.random.Generator, floor: float = 1e-2) -> Tuple[float, float, float]:
    r"""Monte Carlo area of a set :math:`S` inside the box :math:`(0, R]^2`, sampling
    :math:`(\ln s, \ln t)` uniformly in :math:`[\ln(\text{floor}/R), \ln R]^2`.

    With side :math:`\ell = \ln R - \ln(\text{floor}/R)` and weights
    :math:`w = \mathbb 1[(s,t)\in S]\,st` (the Jacobian of :math:`(\ln s, \ln t) \mapsto (s,t)`),
    :math:`\ell^2\,\overline{w}` is unbiased for the area of :math:`S` within
    :math:`[\text{floor}/R, R]^2`, with standard error :math:`\ell^2 \hat\sigma_w / \sqrt n`.

    Args:
        inside: the indicator of :math:`S`, called as ``inside(s, t)``.
        R: the box side.
        num_samples: Monte Carlo samples (at least 2).
        rng: a NumPy generator (advanced by ``2 × num_samples`` uniforms).
        floor: the box starts at ``floor / R`` in each coordinate.

    Returns:
        ``(area, stderr, share)``: the estimate, its standard error and the share of samples in
        :math:`S`.
    """
    check_positive(R, "R")
    check_positive(floor, "floor")
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples: expected an integer ≥ 2, got {num_samples!r}")
    lo, hi = math.log(floor / R), math.log(R)
    uv = rng.uniform(lo, hi, size=(num_samples, 2))
    w = np.array([math.exp(u + v) if inside(math.exp(u), math.exp(v)) else 0.0 for u, v in uv])
    area = (hi - lo) ** 2 * w.mean()
    stderr = (hi - lo) ** 2 * w.std(ddof=1) / math.sqrt(num_samples)
    return float(area), float(stderr), float((w > 0).mean())


def hyperbolic_band_area(p_lo: float, p_hi: float, R: float) -> float:
    r"""Exact area of :math:`\{(s,t) \in (0,R]^2 : p_{lo} < st < p_{hi}\}` for
    :math:`R^2 \ge p_{hi}`:

    .. math:: (p_{hi} - p_{lo})(1 + 2\ln R) - p_{hi}\ln p_{hi} + p_{lo}\ln p_{lo}.

    (The area under :math:`st < p` in the box is :math:`p(1 + 2\ln R - \ln p)`.)

    >>> round(hyperbolic_band_area(0.5, 2.0, 4.0), 6)
    3.926015
    """
    if not 0 < p_lo < p_hi:
        raise ValueError(f"p_lo, p_hi: expected 0 < p_lo < p_hi, got {p_lo!r}, {p_hi!r}")
    if not R * R >= p_hi:
        raise ValueError(f"R: expected R² ≥ p_hi = {p_hi!r}, got {R!r}")
    return (p_hi - p_lo) * (1 + 2 * math.log(R)) - p_hi * math.log(p_hi) + p_lo * math.log(p_lo)


@dataclass
class PlaneBand:
    r"""Result of :func:`plane_band`.

    Attributes:
        loss: :math:`L^* = L(1, 1)`.
        surface: :math:`L(2^u, 2^v)` on the grid (rows: ``v``, columns: ``u``).
        p_lo, p_hi: the ends of the band along :math:`p \mapsto L(p, 1)`.
        areas, stderrs, shares: :func:`log_box_area` for each box side.
        exact_areas: :func:`hyperbolic_band_area` for each box side.
        box_sides: the box sides.
    """

    loss: float
    surface: np.ndarray
    p_lo: float
    p_hi: float
    areas: list
    stderrs: list
    shares: list
    exact_areas: list
    box_sides: list

    def table(self) -> MarkdownTable:
        """One row per box side: sampled area ± standard error, exact area, share of hits."""
        return markdown_table(
            ["box side R", "sampled area of the band", "exact area", "share of samples in the band"],
            [(f"{R:g}", f"{area:.2f} ± {se:.2f}", f"{exact:.2f}", f"{share:.2f}")
             for R, area, se, exact, share
             in zip(self.box_sides, self.areas, self.stderrs, self.exact_areas, self.shares)])


def plane_band(loss: Callable[[float, float], float], eps: float, log_grid: Sequence[float],
               box_sides: Sequence[float], num_samples: int, seed: int = 0,
               bracket: float = 1e3) -> PlaneBand:
    r"""The sublevel set :math:`\{L(s,t) < L(1,1) + \epsilon\}` on a plane of two scalings.

    When :math:`L(s, t)` depends on :math:`st` only (layer 1 scaled by :math:`s`, layer 2 by
    :math:`t`, its bias by :math:`st`, in a ReLU network), the set is the band
    :math:`p_{lo} < st < p_{hi}` around the hyperbola :math:`st = 1`. This evaluates :math:`L` on
    a :math:`\log_2` grid, finds :math:`p_{lo}, p_{hi}` by :func:`log_bisect` on
    :math:`p \mapsto L(p, 1)` (between 1 and ``1/bracket``, 1 and ``bracket``), and estimates
    the band's area in boxes :math:`(0, R]^2` by :func:`log_box_area` (one NumPy generator seeded
    with ``seed``, used box after box), next to the exact :func:`hyperbolic_band_area`.

    Args:
        loss: :math:`(s, t) \mapsto L`.
        eps: ε > 0.
        log_grid: :math:`\log_2` values of :math:`s` and :math:`t` for ``surface``.
        box_sides: the box sides :math:`R`.
        num_samples: Monte Carlo samples per box.
        seed: seeds the samples.
        bracket: the bisection brackets.

    Returns:
        A :class:`PlaneBand`.
    """
    check_positive(eps, "eps")
    L_star = loss(1.0, 1.0)
    surface = np.array([[loss(2.0 ** u, 2.0 ** v) for u in log_grid] for v in log_grid])
    inside = lambda s, t=1.0: loss(s, t) < L_star + eps  # noqa: E731
    p_lo, p_hi = log_bisect(inside, 1.0, 1.0 / bracket), log_bisect(inside, 1.0, bracket)
    rng = np.random.default_rng(seed)
    sampled = [log_box_area(inside, R, num_samples, rng) for R in box_sides]
    exact = [hyperbolic_band_area(p_lo, p_hi, R) for R in box_sides]
    return PlaneBand(L_star, surface, p_lo, p_hi, [a for a, _, _ in sampled],
                     [e for _, e, _ in sampled], [h for _, _, h in sampled], exact, list(box_sides))
