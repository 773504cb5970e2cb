r"""The reparametrization experiments of chapter 04: same function, other curvature.

* :func:`scale_parameters` and :func:`scaled_parameters_loss` rescale named parameters (a copy of
  the network, or the loss at the rescaled point);
* :func:`compare_functions` checks that networks compute a reference's function;
* :func:`scale_invariance_check` checks :math:`\nabla^2L(cw) = c^{-2}\nabla^2L(w)` for a layer
  followed by batch normalization;
* :func:`input_map_profile` measures what an invertible input map, absorbed by the first layer,
  does to the curvature;
* :func:`coordinate_curvature_1d` is the curvature of a one-dimensional loss in another
  coordinate, by central differences.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .checks import check_positive
from .curvature import input_hessian_top_eigenvalues, top_eigenvalues
from .params import ParameterLayout, loss_at, with_flat_parameters
from .reparametrize import input_transform
from .stats import loglog_fit
from .symmetries import parameter_hessian
from .tables import MarkdownTable, markdown_table
from .training import evaluate

__all__ = ["scale_parameters", "scaled_parameters_loss", "FunctionComparison", "compare_functions",
           "ScaleInvarianceCheck", "scale_invariance_check", "InputMapProfile",
           "input_map_profile", "coordinate_curvature_1d"]


def _scaled_vector(model: nn.Module, factors: Mapping[str, float]) -> Tensor:
    """The flat parameter vector of ``model`` with each named parameter's slice multiplied by its
    factor (:class:`flatness.params.ParameterLayout` order)."""
    layout = ParameterLayout(model)
    unknown = [k for k in factors if k not in layout.slices]
    if unknown:
        raise ValueError(f"factors: unknown parameter names {unknown}; expected names from "
                         f"{list(layout.names)}")
    vector = layout.to_vector(model, "model")
    for name, c in factors.items():
        vector[layout.slices[name]] *= c
    return vector


def scale_parameters(model: nn.Module, factors: Mapping[str, float]) -> nn.Module:
    r"""A copy of ``model`` with each named parameter multiplied by its factor,
    :math:`\theta_k \mapsto c_k\theta_k`.

    Args:
        model: the network (not changed).
        factors: parameter name → factor :math:`c_k`.

    Returns:
        The rescaled copy (:func:`flatness.params.with_flat_parameters`).

    Raises:
        ValueError: an unknown parameter name.
    """
    return with_flat_parameters(model, _scaled_vector(model, factors))


def scaled_parameters_loss(model: nn.Module, loss_fn, data, factors: Mapping[str, float]) -> float:
    r"""The loss :math:`L(\theta')` of ``model`` at :math:`\theta'_k = c_k\theta_k` (each named
    parameter multiplied by its factor), by :func:`flatness.params.loss_at`: functionally, in
    eval mode, the model untouched.

    Args:
        model: the network.
        loss_fn: the loss.
        data: an ``(X, y)`` pair (or anything :func:`~flatness.params.loss_at` accepts).
        factors: parameter name → factor :math:`c_k`.

    Returns:
        The loss, a float.

    Raises:
        ValueError: an unknown parameter name.
    """
    return loss_at(model, loss_fn, data, _scaled_vector(model, factors))


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
    _scaled_vector(model, {name: 1.0})  # checks the name
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
