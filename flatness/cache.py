r"""Trained models on disk: train once, load ever after.

:func:`load_or_train` returns the trained model of a :class:`~flatness.training.TrainConfig`,
training it only if no valid cache file exists. Files are keyed by a hash of the full
configuration, written atomically (a temporary file renamed into place) and read with
``torch.load(..., weights_only=True)``. Each file stores a SHA-256 checksum of its state dict
(every tensor's name, dtype, shape and bytes, in sorted order) and of its history; a file that is
truncated, corrupt (a flipped byte included), written by another configuration, or whose state
dict no longer fits the model is retrained, with a ``RuntimeWarning``. Temporary files left by a
killed writer are removed once their writer is dead or they are an hour old. The folder is
``$FLATNESS_CACHE`` or ``~/.cache/flatness``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from . import data as data_module
from .curvature import SharpnessTracker
from .population import _batchable, _member_options, population_groups, train_population
from .training import TrainConfig, _progress_enabled, _tqdm, build_model, train

__all__ = ["cache_dir", "cache_path", "load_or_train", "load_or_train_many", "store", "state_checksum",
           "clean_stale_temporaries"]


def cache_dir() -> Path:
    """The cache folder: ``$FLATNESS_CACHE`` if set, else ``~/.cache/flatness``."""
    env = os.environ.get("FLATNESS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "flatness"


def cache_path(config: TrainConfig, directory: Optional[Path] = None) -> Path:
    return Path(directory or cache_dir()) / f"{config.key()}.pt"


#: Temporary files older than this (seconds) are stale whoever wrote them.
STALE_AFTER = 3600.0

_TMP_NAME = re.compile(r"^[0-9a-f]{20}\.pt(?:\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.)?.*\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's process) or unknown: keep the file
    return True


def clean_stale_temporaries(directory: Path, max_age: float = STALE_AFTER) -> list:
    """Remove the temporary files of cache writes that did not finish.

    A temporary file ``<key>.pt.<host>.<pid>.<random>.tmp`` is stale when its writer, a
    process on this host, no longer runs, or when it is older than ``max_age`` seconds (a
    writer on another host, or a file without a writer in its name).

    Returns:
        The paths removed.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    now, host = time.time(), _host()
    for path in directory.glob("*.tmp"):
        match = _TMP_NAME.match(path.name)
        if not match:
            continue
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        pid = match.group("pid")
        dead = (pid is not None and match.group("host") == host and int(pid) != os.getpid()
                and not _pid_alive(int(pid)))
        if dead or age > max_age:
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def state_checksum(state_dict: Mapping[str, torch.Tensor], history=None) -> str:
    """SHA-256 of a state dict — every tensor's name, dtype, shape and bytes, by sorted name —
    and of the JSON of ``history``."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(history, sort_keys=True, default=repr).encode())
    return digest.hexdigest()


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{_host()}.{os.getpid()}.",
                               suffix=".tmp")
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


def _warn_retrain(path: Path, err: BaseException) -> None:
    warnings.warn(f"cache file {path.name} could not be used ({type(err).__name__}: {err}); "
                  "retraining", RuntimeWarning, stacklevel=4)


def _safe_load(path: Path, config: TrainConfig):
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or not {"config", "state_dict", "history",
                                               "checksum"} <= set(blob):
            raise ValueError("not a flatness cache file of this version")
        if blob["config"] != config.to_json():
            raise ValueError("the stored configuration differs")
        if state_checksum(blob["state_dict"], blob["history"]) != blob["checksum"]:
            raise ValueError("the checksum of its contents does not match (the file is corrupt)")
        return blob
    except Exception as err:  # truncated, corrupt or foreign file: retrain
        _warn_retrain(path, err)
        return None


def store(config: TrainConfig, model: nn.Module, history: dict,
          directory: Optional[Path] = None) -> Path:
    """Write a trained ``model`` and its ``history`` to the cache under ``config``'s key.

    The file holds the configuration, the state dict (on the CPU), the history and their
    checksum; it is written atomically. :func:`load_or_train` finds it afterwards.

    Returns:
        The file's path.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {"config": config.to_json(), "state_dict": state, "history": history,
            "checksum": state_checksum(state, history)}
    path = cache_path(config, directory)
    _atomic_save(blob, path)
    return path


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
        ``(model, history)``; the model is in eval mode. A configuration's ``attack`` spec is
        built with :func:`flatness.data.from_spec` and its training split passed to
        :func:`~flatness.training.train` as ``attack_data``. The history of a file written
        before ``stop_reason`` existed gets it filled in (``"target_acc"``, ``"epochs"`` or
        ``"max_epochs"``).
    """
    path = cache_path(config, directory)
    clean_stale_temporaries(path.parent)
    device = torch.device(config.device)
    model = build_model(config).to(device)
    blob = None if retrain else _safe_load(path, config)
    if blob is not None:
        try:
            model.load_state_dict(blob["state_dict"])
        except Exception as err:  # the model definition changed under the same key
            _warn_retrain(path, err)
            blob, model = None, build_model(config).to(device)  # a failed load may have copied some
    if blob is None:
        if config.init is not None:
            start, _ = load_or_train(config.init, directory, progress)
            model.load_state_dict(start.state_dict())
        split = data_module.from_spec(config.data).to(device)
        options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                   if f.name not in ("model", "data", "init", "init_seed", "device", "attack")}
        options["milestones"] = tuple(options["milestones"])
        if config.attack is not None:  # the attack set T is the spec's training split
            options["attack_data"] = data_module.from_spec(config.attack).to(device).train
        every = options.pop("track_sharpness_every")
        callbacks = [SharpnessTracker(split.train, every)] if every else []
        history = train(model, split.train, test_data=split.test, progress=progress,
                        callbacks=callbacks, **options)
        store(config, model, history, directory)
        blob = {"history": history}
    model.eval()
    history = copy.deepcopy(blob["history"])
    if isinstance(history, dict) and "stop_reason" not in history:  # written before it existed
        history["stop_reason"] = ("target_acc" if history.get("reached_target") else
                                  "epochs" if config.epochs is not None else "max_epochs")
    return model, history


def load_or_train_many(configs: Sequence[TrainConfig], progress: Optional[bool] = None,
                       directory: Optional[Path] = None) -> Tuple[List[nn.Module], List[dict]]:
    """The trained models of many configurations, training the uncached ones as populations.

    Configurations already in the cache are loaded (through
    :func:`load_or_train`, which also retrains a corrupt file). The others are
    grouped by :func:`population_groups` and each group is trained by
    :func:`train_population` from :func:`flatness.training.build_model`'s initialization;
    every member is written to the cache under its own configuration's key as soon as it
    stops, in the file format of :func:`~flatness.cache.load_or_train`, which finds it later.
    Configurations with an attack set train with it (:func:`flatness.data.from_spec` of
    ``attack``, its training split). Configurations with a warm start or sharpness tracking
    are trained one by one by :func:`~flatness.cache.load_or_train`. A configuration given
    twice is trained once.

    Args:
        configs: the configurations.
        progress: show one tqdm bar (stderr) of the members still training.
        directory: the cache folder (default :func:`flatness.cache.cache_dir`).

    Returns:
        ``(models, histories)`` in the order of ``configs``; the models are in eval mode.

    Raises:
        TypeError: ``configs`` not a sequence of :class:`~flatness.training.TrainConfig`.
        ValueError: an empty ``configs``, and every error of :func:`train_population`.
    """
    if isinstance(configs, TrainConfig) or not isinstance(configs, Sequence):
        raise TypeError(f"configs: expected a sequence of TrainConfig, got "
                        f"{type(configs).__name__}")
    if not configs:
        raise ValueError("configs: the population is empty; give at least one configuration")
    configs = list(configs)
    groups = population_groups(configs)
    unique: Dict[str, int] = {}
    for i, c in enumerate(configs):
        unique.setdefault(c.key(), i)
    todo = [i for i in unique.values()
            if _batchable(configs[i]) and not cache_path(configs[i], directory).exists()]
    todo_set = set(todo)
    show = _progress_enabled(progress)
    bar = _tqdm(total=len(todo), desc="population", disable=not show or not todo)
    try:
        for group in groups:
            members = [i for i in group if i in todo_set]
            if not members:
                continue
            device = torch.device(getattr(configs[members[0]], "device", "cpu"))
            split = data_module.from_spec(configs[members[0]].data)
            if device.type != "cpu":
                split = split.to(device)
            models = [build_model(configs[i]).to(device) for i in members]
            opts = [_member_options(configs[i], f"configs[{i}]") for i in members]
            attack = getattr(configs[members[0]], "attack", None)  # shared by the group
            if attack is not None:
                T = data_module.from_spec(attack).train
                T = tuple(t.to(device) for t in T)
                for o in opts:
                    o["attack_data"] = T

            def done(k: int, history: dict, members=members, models=models) -> None:
                bar.set_postfix(training=len(todo_set) - bar.n)
                store(configs[members[k]], models[k], history, directory)

            train_population(models, split.train, test_data=split.test, options=opts,
                             on_member_done=done, bar=bar)
    finally:
        bar.close()
    out_models, out_hists = [], []
    for c in configs:
        m, h = load_or_train(c, directory, progress)
        out_models.append(m)
        out_hists.append(h)
    return out_models, out_hists
