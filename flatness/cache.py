r"""Trained models on disk: train once, load ever after.

:func:`load_or_train` returns the trained model of a :class:`~flatness.training.TrainConfig`,
training it only if no valid cache file exists. Files are keyed by a hash of the full
configuration, written atomically (a temporary file renamed into place) and read with
``torch.load(..., weights_only=True)``; a corrupt or truncated file is retrained. The folder is
``$FLATNESS_CACHE`` or ``~/.cache/flatness``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from . import data as data_module
from .curvature import SharpnessTracker
from .training import TrainConfig, build_model, train

__all__ = ["cache_dir", "cache_path", "load_or_train"]


def cache_dir() -> Path:
    """The cache folder: ``$FLATNESS_CACHE`` if set, else ``~/.cache/flatness``."""
    env = os.environ.get("FLATNESS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "flatness"


def cache_path(config: TrainConfig, directory: Optional[Path] = None) -> Path:
    return Path(directory or cache_dir()) / f"{config.key()}.pt"


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _safe_load(path: Path, config: TrainConfig):
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["config"] != config.to_json():
            raise ValueError("the stored configuration differs")
        return blob
    except Exception as err:  # truncated, corrupt or foreign file: retrain
        warnings.warn(f"cache file {path.name} could not be used ({type(err).__name__}: {err}); "
                      "retraining", RuntimeWarning, stacklevel=3)
        return None


def load_or_train(config: TrainConfig, directory: Optional[Path] = None,
                  progress: Optional[bool] = None, retrain: bool = False
                  ) -> Tuple[nn.Module, dict]:
    """Return the trained model of ``config`` and its history, training only if not cached.

    Args:
        config: the full description of the run.
        directory: the cache folder (default :func:`cache_dir`).
        progress: show progress bars.
        retrain: ignore an existing cache file.

    Returns:
        ``(model, history)``; the model is in eval mode.
    """
    path = cache_path(config, directory)
    model = build_model(config)
    blob = None if retrain else _safe_load(path, config)
    if blob is None:
        if config.init is not None:
            start, _ = load_or_train(config.init, directory, progress)
            model.load_state_dict(start.state_dict())
        split = data_module.from_spec(config.data)
        options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                   if f.name not in ("model", "data", "init", "init_seed")}
        options["milestones"] = tuple(options["milestones"])
        every = options.pop("track_sharpness_every")
        callbacks = [SharpnessTracker(split.train, every)] if every else []
        history = train(model, split.train, test_data=split.test, progress=progress,
                        callbacks=callbacks, **options)
        blob = {"config": config.to_json(), "state_dict": model.state_dict(), "history": history}
        _atomic_save(blob, path)
    else:
        model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, copy.deepcopy(blob["history"])
