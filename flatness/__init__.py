"""flatness: measure the flatness of minima, and test what it says about generalization.

The modules read bottom-up, each one idea:

* data and models: :mod:`~flatness.checks` (input checks, the model-mode context),
  :mod:`~flatness.data`, :mod:`~flatness.models`;
* training: :mod:`~flatness.training` (the training loop and its configuration),
  :mod:`~flatness.population` (many models trained as one batched computation),
  :mod:`~flatness.cache` (trained models on disk);
* the parameter vector and the Hessian: :mod:`~flatness.params` (one layout of a model's
  parameters as a flat vector), :mod:`~flatness.operators` (the Hessian as a linear operator),
  :mod:`~flatness.krylov` (one Lanczos iteration and what is built on it);
* measures: :mod:`~flatness.curvature` (eigenvalues, trace, norms, density),
  :mod:`~flatness.exact_trace`, :mod:`~flatness.sharpness`, :mod:`~flatness.landscape`,
  :mod:`~flatness.symmetries` (α-scale), :mod:`~flatness.reparametrize`,
  :mod:`~flatness.evidence` (Laplace evidence, Occam factor), :mod:`~flatness.noise` (SGD noise
  scale), :mod:`~flatness.stability` (edge-of-stability bound);
* the chapters' experiments: :mod:`~flatness.layers` (curvature of parameter blocks),
  :mod:`~flatness.alpha_experiments`, :mod:`~flatness.reparam_experiments`,
  :mod:`~flatness.sublevel` (volumes of sublevel sets), :mod:`~flatness.prior_sweep`,
  :mod:`~flatness.noise_sweep`, :mod:`~flatness.large_batch`;
* experiments and their reading: :mod:`~flatness.sweeps`, :mod:`~flatness.stats`,
  :mod:`~flatness.claims` (each claim of the debate as data, with its computed outcome),
  :mod:`~flatness.tables`, :mod:`~flatness.plotting`, :mod:`~flatness.figures`.

Importing flatness has no side effects: no global seeds, no plotting styles. Call
:func:`seed_everything` and :func:`flatness.plotting.use_book_style` explicitly.
"""

import random as _random

import numpy as _np
import torch as _torch

__version__ = "0.2.0"

from . import (  # noqa: E402
    adaptive,
    alpha_experiments,
    basins,
    cache,
    checks,
    claims,
    curvature,
    data,
    evidence,
    exact_trace,
    figures,
    fisher_rao,
    krylov,
    landscape,
    large_batch,
    layers,
    measures,
    metric_hessian,
    models,
    noise,
    noise_sweep,
    operators,
    pacbayes,
    paper_models,
    params,
    plotting,
    population,
    population_curvature,
    prior_sweep,
    ranking,
    relative_flatness,
    reparam_experiments,
    reparametrize,
    report,
    sharpness,
    stability,
    stats,
    sublevel,
    sweeps,
    symmetries,
    tables,
    training,
)
from .cache import load_or_train  # noqa: E402
from .curvature import (  # noqa: E402
    hessian_frobenius,
    hessian_trace,
    spectral_density,
    top_eigenvalues,
)
from .landscape import interpolate  # noqa: E402
from .operators import HessianOperator, dense_hessian  # noqa: E402
from .sharpness import keskar_sharpness  # noqa: E402
from .training import TrainConfig, evaluate, train  # noqa: E402


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators."""
    _random.seed(seed)
    _np.random.seed(seed)
    _torch.manual_seed(seed)


__all__ = ["HessianOperator", "TrainConfig", "adaptive", "alpha_experiments", "basins", "cache", "checks",
           "claims", "curvature", "data", "dense_hessian", "evaluate", "evidence", "exact_trace", "figures",
           "fisher_rao", "hessian_frobenius", "hessian_trace", "interpolate", "keskar_sharpness", "krylov",
           "landscape", "large_batch", "layers", "load_or_train", "measures", "metric_hessian", "models",
           "noise", "noise_sweep", "operators", "pacbayes", "paper_models", "params", "plotting", "population",
           "population_curvature", "prior_sweep", "ranking", "relative_flatness", "reparam_experiments",
           "reparametrize", "report", "seed_everything", "sharpness", "spectral_density", "stability", "stats",
           "sublevel", "sweeps", "symmetries", "tables", "top_eigenvalues", "train", "training"]
