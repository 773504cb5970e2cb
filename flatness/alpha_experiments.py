r"""The α-scale experiments of chapter 03: Dinh et al.'s :math:`T_\alpha` on trained networks.

For a ReLU network, :math:`T_\alpha` multiplies one weight layer by α and the next by
:math:`\alpha^{-1}` (:func:`flatness.symmetries.alpha_scale`): the function is unchanged, the
Hessian becomes :math:`D^{-1}HD^{-1}` (:mod:`flatness.layers`).

* :func:`alpha_scale_family` builds the α-scaled copies of a network and the evidence that they
  compute the same function;
* :func:`block_scaling_check` checks :math:`\nabla^2L(D\theta) = D^{-1}\nabla^2L(\theta)D^{-1}`
  entry by entry on dense Hessians, and :func:`alpha_scale_dense_check` does so for
  :math:`T_\alpha` (:func:`dense_check_table` tabulates it);
* :func:`sharpen_layers` rescales the first :math:`K-1` weight layers so that the Hessian has
  :math:`K-1` eigenvalues above a target (Dinh et al. 2017, Theorem 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .checks import check_positive
from .curvature import block_top_eigenvalues, top_eigenvalues
from .layers import _check_blocks, _check_powers, block_gram, layer_top_eigenvalues, scaled_block_trace
from .operators import HessianOperator, dense_hessian
from .params import flat_parameters, parameter_slices
from .symmetries import alpha_factors, alpha_scale, complete_factors, parameter_scaling, weight_layers
from .tables import MarkdownTable, markdown_table
from .training import evaluate

__all__ = ["AlphaScaleFamily", "alpha_scale_family", "BlockScalingCheck", "block_scaling_check",
           "alpha_scale_dense_check", "dense_check_table", "LayerSharpening", "sharpen_layers",
           "SubspaceIdentityCheck", "subspace_identity_check"]


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


def dense_check_table(alphas: Sequence[float], checks: Sequence[BlockScalingCheck]) -> MarkdownTable:
    """A table of :func:`alpha_scale_dense_check` results, one row per α (two blocks)."""
    return markdown_table(["α", "λ_max(θ)", "λ_max(T_αθ)", "max rel. error of D⁻¹HD⁻¹", "change of H₁₂",
                           "Tr H(T_αθ)", "α⁻²Tr H₁₁ + α²Tr H₂₂"],
                          [(f"{a:g}", f"{c.lambda_max:.4g}", f"{c.lambda_max_scaled:.4g}",
                            f"{c.identity_error:.1e}", f"{c.off_diagonal_change:.1e}",
                            f"{c.trace_scaled:.5g}", f"{c.trace_formula:.5g}")
                           for a, c in zip(alphas, checks)])


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
        block_spectra_after: parameter name → the ``k`` largest eigenvalues of its diagonal
            block after the transformation, for every weight and bias named (the weight
            blocks are what the theorem is about; a bias of layer :math:`k` is scaled by
            :math:`c_k = \prod_{j\le k}\alpha_j` and its block by :math:`c_k^{-2}`).
        bias_before, bias_after: λ_max of each bias block named in ``biases``.
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
    block_spectra_after: Dict[str, object] = None
    bias_before: list = None
    bias_after: list = None
    bias_names: list = None
    bias_factors: list = None

    def table(self) -> MarkdownTable:
        r"""λ_max of each weight block (and each bias block named in ``sharpen_layers(biases=...)``)
        before and after, and the predicted factors: :math:`\alpha_k^{-2}` for the weights of layer
        :math:`k`, :math:`c_k^{-2}` for its bias."""
        names = [f"layer {i + 1} block" for i in range(len(self.factors))] + list(self.bias_names or [])
        return markdown_table(["", *names],
                              [("λ_max before", *[f"{v:.3g}" for v in self.blocks_before + list(self.bias_before or [])]),
                               ("λ_max after", *[f"{v:.3g}" for v in self.blocks_after + list(self.bias_after or [])]),
                               ("predicted factor", *[f"{f ** -2:g}" for f in self.factors],
                                *[f"{f:g}" for f in self.bias_factors or []])])

    def summary_table(self) -> MarkdownTable:
        """The construction in one row: Gram matrix, μ, M, factors, the guaranteed bound, how many of
        the top eigenvalues lie above M before and after, and the largest output change."""
        above = lambda r: int((r.eigenvalues >= self.target).sum())  # noqa: E731
        return markdown_table(["Gram matrix C", "μ", "M", "factors", "guaranteed λ_2 ≥ μ/α²",
                               f"top-{len(self.top_after.eigenvalues)} above M (before → after)", "max abs Δ logit"],
                              [[" ".join(str(self.gram.numpy().round(3)).split()), f"{self.mu:.3f}", f"{self.target:.1f}",
                                str(self.factors), f"{self.bound:.1f}", f"{above(self.top_before)} → {above(self.top_after)}",
                                f"{self.logit_change:g}"]])


def sharpen_layers(model: nn.Module, loss_fn, data, weights: Sequence[str], k: int = 8,
                   target_factor: float = 100.0, tol: float = 1e-4, X=None,
                   biases: Sequence[str] = ()) -> LayerSharpening:
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
        biases: bias names whose blocks are also reported (``bias_before``/``bias_after`` and
            their top-``k`` spectra after); with them every weight block's top-``k`` spectrum
            after is computed too (``block_spectra_after``).

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
    spectra, b_before, b_after = None, None, None
    biases = list(biases)
    if biases:
        unknown = [b for b in biases if b not in slices]
        if unknown:
            raise ValueError(f"biases: unknown parameter names {unknown}")
        b_before = layer_top_eigenvalues(model, loss_fn, data, [slices[b] for b in biases], tol=tol, operator=H0)
        spectra = {name: block_top_eigenvalues(multi, loss_fn, data, slices[name], k=k, tol=tol, operator=H_ml)
                   for name in weights + biases}
        b_after = [float(spectra[b][0]) for b in biases]
        d = parameter_scaling(model, factors)
        b_factors = [float(d[slices[b].start]) ** -2 for b in biases]
    return LayerSharpening(C, mu, M, alpha, factors, multi, top_before, top_after, before, after,
                           mu / alpha ** 2, change, spectra, b_before, b_after, biases or None,
                           b_factors if biases else None)


@dataclass
class SubspaceIdentityCheck:
    r"""Result of :func:`subspace_identity_check`.

    Attributes:
        vector_error: :math:`\max|T_\alpha\theta + Ay - T_\alpha(\theta + T_\alpha^{-1}Ay)|`
            over the sampled :math:`y` (0 for powers of two).
        loss_error: :math:`\max|L(T_\alpha\theta + Ay) - L(\theta + T_\alpha^{-1}Ay)|`.
        losses: :math:`L(T_\alpha\theta + Ay)` at each sampled :math:`y`.
        column_norms: the norms of the columns of :math:`T_\alpha^{-1}A`, the subspace that
            the sharpness at :math:`T_\alpha\theta` probes at θ (the columns of ``A`` are unit).
    """

    vector_error: float
    loss_error: float
    losses: list
    column_norms: object

    def table(self, label: str) -> MarkdownTable:
        """The check in one row labelled ``label`` (the α)."""
        return markdown_table(["α", "max abs (T_αθ + Ay − T_α(θ + T_α⁻¹Ay))", "max abs ΔL", "losses L(T_αθ + Ay)",
                               "column norms of T_α⁻¹A"],
                              [(label, f"{self.vector_error:g}", f"{self.loss_error:g}",
                                f"{min(self.losses):.4f} … {max(self.losses):.4f}",
                                f"{self.column_norms.min():.3g} … {self.column_norms.max():.3g}")])


def subspace_identity_check(model: nn.Module, loss_fn, data, alpha: float, subspace_dim: int = 100,
                            num_points: int = 8, eps: float = 1e-3, seed: int = 0,
                            layers: Tuple[int, int] = (0, 1)) -> SubspaceIdentityCheck:
    r"""Check :math:`T_\alpha\theta + Ay = T_\alpha(\theta + T_\alpha^{-1}Ay)` and its consequence
    :math:`L(T_\alpha\theta + Ay) = L(\theta + T_\alpha^{-1}Ay)` at random points of Keskar's box.

    ``A`` is :func:`flatness.sharpness.random_subspace` (``n × subspace_dim``, orthonormal
    columns, seeded by ``seed``); the points :math:`y` are uniform in the box
    :math:`|y_i| \le \epsilon(|(A^\top T_\alpha\theta)_i| + 1)` of Keskar's sharpness at
    :math:`T_\alpha\theta`. The identity holds because :math:`T_\alpha = D` is linear; the
    losses agree because :math:`L\circ T_\alpha = L`. So the random-subspace sharpness at
    :math:`T_\alpha\theta` with ``A`` is exactly a sharpness at θ over the subspace spanned by
    :math:`D^{-1}A`, whose columns grow like α on the block that :math:`T_\alpha` divides by α.

    Args:
        model: a network accepted by :func:`flatness.symmetries.alpha_scale` (not changed).
        loss_fn, data: the loss and the ``(X, y)`` pair.
        alpha: α > 0 (powers of two make both sides equal bit for bit).
        subspace_dim, eps, seed: of the subspace and the box.
        num_points: sampled points :math:`y`.
        layers: the two weight layers scaled by α and 1/α
            (:func:`flatness.symmetries.alpha_factors`, as in :func:`alpha_scale_family`).

    Returns:
        A :class:`SubspaceIdentityCheck`.
    """
    import numpy as np

    from .params import loss_at
    from .sharpness import random_subspace

    check_positive(alpha, "alpha")
    check_positive(num_points, "num_points", integer=True)
    theta = flat_parameters(model).detach()
    d = parameter_scaling(model, alpha_factors(len(weight_layers(model)), alpha, layers),
                          dtype=theta.dtype).to(theta.device)
    A = torch.as_tensor(random_subspace(theta.numel(), subspace_dim, seed=seed), dtype=theta.dtype,
                        device=theta.device)
    scaled = d * theta
    half = eps * ((A.T @ scaled).abs() + 1)
    gen = torch.Generator().manual_seed(seed)
    v_err, l_err, losses = 0.0, 0.0, []
    for _ in range(num_points):
        y = ((torch.rand(subspace_dim, generator=gen, dtype=torch.float64) * 2 - 1).to(theta) * half)
        step = A @ y
        left, back = scaled + step, theta + step / d
        v_err = max(v_err, float((left - d * back).abs().max()))
        la = float(loss_at(model, loss_fn, data, left))
        lb = float(loss_at(model, loss_fn, data, back))
        losses.append(la)
        l_err = max(l_err, abs(la - lb))
    return SubspaceIdentityCheck(v_err, l_err, losses, np.asarray((A / d[:, None]).norm(dim=0).cpu()))
