r"""The step-size bound on sharpness behind the edge of stability.

Gradient descent with step :math:`\eta` and heavy-ball momentum :math:`\beta` on a quadratic
with curvature :math:`\lambda` is stable only while :math:`\eta\lambda < 2(1+\beta)`
(Cohen et al. 2021): training drives :math:`\lambda_{\max}` up to that threshold and holds it
there, so a large-batch run's final sharpness is set by its step size.
"""

from __future__ import annotations

from .checks import check_positive

__all__ = ["stability_threshold"]


def stability_threshold(lr: float, momentum: float = 0.0) -> float:
    r"""The largest sharpness at which (heavy-ball) gradient descent is stable.

    On a quadratic with curvature :math:`\lambda`, gradient descent with step :math:`\eta` and
    heavy-ball momentum :math:`\beta` (PyTorch's SGD) converges if and only if

    .. math:: \lambda < \frac{2 + 2\beta}{\eta},

    which is :math:`2/\eta` without momentum. Full-batch training drives :math:`\lambda_{\max}`
    of the loss up to this value and keeps it there: the edge of stability (Cohen et al. 2021).

    Args:
        lr: the learning rate :math:`\eta`.
        momentum: the momentum :math:`\beta \in [0, 1)`.

    Returns:
        :math:`(2 + 2\beta)/\eta`.

    Raises:
        ValueError: ``lr`` not positive or ``momentum`` outside ``[0, 1)``.

    >>> stability_threshold(0.5)
    4.0
    >>> round(stability_threshold(0.1, momentum=0.9), 9)
    38.0
    """
    check_positive(lr, "lr")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
    return (2.0 + 2.0 * momentum) / lr
