"""Tests of flatness.checks: mean reduction, labels for every loss, numbers, models and data."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatness import checks, landscape, training
from flatness.checks import check_labels, check_positive, check_reduction
from flatness.curvature import top_eigenvalues
from flatness.evidence import GaussianNLLLoss
from flatness.models import mlp
from flatness.operators import HessianOperator


def _logits(N=33, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, C, generator=g), torch.randint(0, C, (N,), generator=g)


SUM_LOSSES = [functools.partial(F.cross_entropy, reduction="sum"),
              lambda out, y: F.cross_entropy(out, y) * len(y)]


@pytest.mark.parametrize("loss_fn", SUM_LOSSES, ids=["partial", "lambda"])
def test_sum_reduced_callable_is_refused(loss_fn, tiny):
    """Issue 10 #3: a sum-reduced function passed every check and multiplied λ_max by N."""
    out, y = _logits()
    with pytest.raises(ValueError, match="loss_fn: .* is not a mean over samples"):
        check_reduction(loss_fn, (out, y))
    model, _, data = tiny
    with pytest.raises(ValueError, match="not a mean over samples"):
        top_eigenvalues(model, loss_fn, data)
    with pytest.raises(ValueError, match="not a mean over samples"):
        HessianOperator(model, loss_fn, data)


@pytest.mark.parametrize("loss_fn", [
    nn.CrossEntropyLoss(), F.cross_entropy, nn.CrossEntropyLoss(label_smoothing=0.2),
    nn.CrossEntropyLoss(weight=torch.tensor([0.5, 1.0, 2.0, 3.0])),
    nn.CrossEntropyLoss(weight=torch.tensor([0.5, 1.0, 2.0, 3.0]), label_smoothing=0.1),
    nn.CrossEntropyLoss(ignore_index=2), lambda out, y: F.cross_entropy(out, y),
])
def test_mean_reduced_losses_pass_the_probe(loss_fn):
    """A mean of per-sample losses satisfies L = (w₁L₁ + w₂L₂)/(w₁ + w₂) to rounding (the
    weights count non-ignored labels, or sum their class weights, as torch's mean does)."""
    out, y = _logits()
    y = y.clone()
    y[:4] = -100  # ignored by default
    if getattr(loss_fn, "ignore_index", -100) == 2:
        y[:4] = 1
    check_labels(out, y, loss_fn)
    check_reduction(loss_fn, (out.double(), y))


def test_sum_modules_are_refused_by_every_evaluation(tiny):
    """Modules with reduction='sum' were accepted by evaluate, interpolate and loss_surface."""
    model, _, data = tiny
    loss = nn.CrossEntropyLoss(reduction="sum")
    with pytest.raises(ValueError, match="reduction='sum'"):
        training.evaluate(model, data, loss)
    with pytest.raises(ValueError, match="reduction='sum'"):
        landscape.interpolate(model, model, [0.0, 1.0], data, loss)
    with pytest.raises(ValueError, match="not a mean over samples"):
        training.evaluate(model, data, SUM_LOSSES[0])


def test_a_single_sample_or_a_sum_of_zeros_cannot_be_probed():
    out, y = _logits(N=1)
    check_reduction(SUM_LOSSES[0], (out, y))  # one sample: sum = mean
    check_reduction(nn.MSELoss(reduction="mean"), (torch.zeros(4, 2), torch.zeros(4, 2)))


def test_class_labels_out_of_range():
    """Issue 10 #5: a label of −7 next to an ignored −100 passed and ended in an IndexError."""
    out, y = _logits()
    y = y.clone()
    y[0], y[1] = -100, -7
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\).*from -7"):
        check_labels(out, y, nn.CrossEntropyLoss())
    y[1] = 4
    with pytest.raises(ValueError, match="labels must lie"):
        check_labels(out, y, nn.NLLLoss())
    y[1] = 0
    check_labels(out, y, nn.CrossEntropyLoss())  # the exact ignore_index is allowed
    with pytest.raises(ValueError, match="ignore_index"):
        check_labels(out, y, nn.CrossEntropyLoss(), likelihood=True)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        check_labels(out, y[:, None], nn.CrossEntropyLoss())


def test_binary_and_regression_targets():
    out = torch.randn(6)
    with pytest.raises(ValueError, match=r"targets in \[0, 1\]"):
        check_labels(out, torch.tensor([0.0, 1, 2, 0, 1, 0]), nn.BCEWithLogitsLoss())
    soft = torch.tensor([0.0, 1, 0.5, 0, 1, 0])
    check_labels(out, soft, nn.BCEWithLogitsLoss())  # soft targets are a valid BCE
    with pytest.raises(ValueError, match="must be 0 or 1"):
        check_labels(out, soft, nn.BCEWithLogitsLoss(), likelihood=True)
    with pytest.raises(ValueError, match="shape"):
        check_labels(out[:, None], soft, nn.BCEWithLogitsLoss())
    with pytest.raises(ValueError, match="shape"):  # (N, 1) against (N,) would broadcast to N×N
        check_labels(out, soft[:, None], nn.MSELoss())
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_labels(out, torch.tensor([0.0, 1, float("nan"), 0, 1, 0]), GaussianNLLLoss(1.0))


@pytest.mark.parametrize("value", [np.float32(1e-3), np.float64(0.5), np.int64(3), 2, 0.1])
def test_numpy_scalars_are_positive_numbers(value):
    """Issue 10 #11: np.float32(1e-3) was 'expected a positive number'."""
    assert check_positive(value, "eps") == value


@pytest.mark.parametrize("value", [True, 0, -1.0, float("nan"), float("inf"), "1", None])
def test_not_positive_numbers(value):
    with pytest.raises(ValueError, match="eps"):
        check_positive(value, "eps")


def test_integers():
    assert check_positive(np.int64(5), "k", integer=True) == 5
    for bad in (np.float32(5), 5.0, True, np.bool_(True), 0):
        with pytest.raises(ValueError, match="k: expected a positive integer"):
            check_positive(bad, "k", integer=True)


def test_check_model_and_data():
    net = mlp(3, (4,), 2)
    assert checks.check_model(net) is net
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got NoneType"):
        checks.check_model(None)
    with pytest.raises(ValueError, match="meta device"):
        checks.check_model(mlp(3, (4,), 2).to("meta"))
    with pytest.raises(ValueError, match="meta device"):
        with checks.evaluation(mlp(3, (4,), 2).to("meta")):
            pass
    checks.check_data_matches_model(net, torch.randn(5, 3))
    with pytest.raises(TypeError, match="X has dtype torch.float64"):
        checks.check_data_matches_model(net, torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="X has dtype torch.int64"):
        checks.check_data_matches_model(net, torch.ones(5, 3, dtype=torch.int64))
    embed = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 2))
    checks.check_data_matches_model(embed, torch.ones(5, dtype=torch.int64))


def test_a_bare_tensor_or_a_one_tensor_sequence_is_not_data():
    from flatness.checks import materialize

    X = torch.randn(5, 3)
    for data in (X, (X,), [X]):
        with pytest.raises(TypeError, match=r"data: expected an \(X, y\) pair"):
            materialize(data)
    with pytest.raises(TypeError, match="each batch must be an"):
        materialize([X, X, X])


def test_train_mode_message_is_grammatical():
    from flatness.checks import evaluation

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5))
    with pytest.raises(ValueError, match=r"module 1 \(Dropout\) is in train mode, which makes"):
        with evaluation(net):
            pass
