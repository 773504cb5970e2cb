"""flatlib: measure the flatness of minima, and test what it says about generalization.

Importing flatlib has no side effects: no global seeds, no plotting styles. Call
:func:`seed_everything` and :func:`flatlib.plotting.use_book_style` explicitly.
"""

from __future__ import annotations

import random

__version__ = "0.1.0"

from . import (batchsize, bayes, curvature, data, landscape, models, noise, plotting, sharpness,  # noqa: E402
               training, transforms)
from .curvature import (HessianOperator, dense_hessian, hessian_frobenius,  # noqa: E402
                        hessian_trace, spectral_density, top_eigenvalues)
from .landscape import interpolate  # noqa: E402
from .sharpness import keskar_sharpness  # noqa: E402
from .training import TrainConfig, evaluate, load_or_train, train  # noqa: E402


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


__all__ = ["HessianOperator", "TrainConfig", "batchsize", "bayes", "curvature", "data", "dense_hessian", "evaluate",
           "hessian_frobenius", "hessian_trace", "interpolate", "keskar_sharpness", "landscape",
           "load_or_train", "models", "noise", "plotting", "seed_everything", "sharpness", "spectral_density",
           "top_eigenvalues", "train", "training", "transforms"]
