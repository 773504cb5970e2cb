"""Datasets that need no network, and loaders for the real ones when a reader has one.

* :func:`mnist1d` generates MNIST-1D (Greydanus 2020) locally with the
  ``mnist1d`` package's ``make_dataset`` (its download path is never used).
* :func:`digits` wraps scikit-learn's 8×8 digits.
* :func:`torchvision_dataset` reads MNIST, FashionMNIST or CIFAR-10 from a local ``root``
  in the datasets' own file formats, with torchvision's readers; it never downloads.

Every function returns a :class:`Split` of float32 inputs and int64 labels, with deterministic
splits and subsets controlled by explicit seeds.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .checks import check_positive, check_tensor_pair

__all__ = ["Split", "subset", "mnist1d", "digits", "TORCHVISION_DATASETS", "torchvision_dataset",
           "from_spec", "two_class_split", "random_relu_features", "wrong_labels", "first_items",
           "attack_split"]


@dataclass(frozen=True)
class Split:
    """A train/test split of tensors.

    Attributes:
        X_train, y_train, X_test, y_test: inputs (float32) and integer labels (int64).
        num_classes: number of classes.
    """

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def train(self) -> Tuple[Tensor, Tensor]:
        """The ``(X, y)`` training pair."""
        return self.X_train, self.y_train

    @property
    def test(self) -> Tuple[Tensor, Tensor]:
        """The ``(X, y)`` test pair."""
        return self.X_test, self.y_test

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.X_train.shape[1:])

    def to(self, device) -> "Split":
        """The same split with every tensor on ``device``."""
        return Split(self.X_train.to(device), self.y_train.to(device), self.X_test.to(device),
                     self.y_test.to(device), self.num_classes)

    def __repr__(self) -> str:
        return (f"Split(train={tuple(self.X_train.shape)}, test={tuple(self.X_test.shape)}, "
                f"num_classes={self.num_classes})")


def subset(data: Tuple[Tensor, Tensor], n: int, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """A deterministic random subset of ``n`` samples of an ``(X, y)`` pair.

    >>> X, y = torch.arange(10.).reshape(10, 1), torch.arange(10)
    >>> Xs, ys = subset((X, y), 3, seed=1)
    >>> Xs.shape, bool((Xs[:, 0].long() == ys).all())
    (torch.Size([3, 1]), True)
    """
    X, y = check_tensor_pair(data)
    if not isinstance(n, int) or not 0 < n <= X.shape[0]:
        raise ValueError(f"n: expected an integer in [1, {X.shape[0]}], got {n!r}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(X.shape[0], generator=g)[:n].sort().values
    return X[idx], y[idx]


def _limit(split: Split, n_train: int | None, n_test: int | None, seed: int) -> Split:
    train, test = split.train, split.test
    if n_train is not None:
        train = subset(train, n_train, seed)
    if n_test is not None:
        test = subset(test, n_test, seed + 1)
    return Split(*train, *test, split.num_classes)


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(num_samples: int, seed: int):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    args.train_split = 1.0  # we split ourselves
    # make_dataset seeds the global `random` and NumPy generators: keep the caller's state.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return d["x"].astype(np.float32), d["y"].astype(np.int64)


def mnist1d(num_samples: int = 5000, train_fraction: float = 0.8, seed: int = 42,
            n_train: int | None = None, n_test: int | None = None,
            channels: bool = False) -> Split:
    """MNIST-1D, generated locally: 10 classes of 40-sample 1-D signals.

    With the defaults this is the reference dataset of the ``mnist1d`` package
    (4,000 training and 1,000 test signals).

    Args:
        num_samples: total number of signals generated (split into train and test).
        train_fraction: the share of ``num_samples`` used for training.
        seed: the generator's seed.
        n_train, n_test: optional deterministic subsets of each part.
        channels: return inputs of shape ``(N, 1, 40)`` (for 1-D convolutions) instead of
            ``(N, 40)``.

    Returns:
        A :class:`Split`.

    Raises:
        ValueError: ``num_samples`` too small or ``train_fraction`` outside (0, 1).
    """
    if not isinstance(num_samples, int) or num_samples < 20:
        raise ValueError(f"num_samples: expected an integer ≥ 20, got {num_samples!r}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction: expected a number in (0, 1), got {train_fraction!r}")
    x, y = _mnist1d_arrays(num_samples, seed)
    X, Y = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    if channels:
        X = X.unsqueeze(1)
    cut = int(round(len(Y) * train_fraction))
    split = Split(X[:cut], Y[:cut], X[cut:], Y[cut:], 10)
    return _limit(split, n_train, n_test, seed)


def digits(classes: Sequence[int] | None = None, test_fraction: float = 0.25, seed: int = 0,
           n_train: int | None = None, n_test: int | None = None,
           standardize: bool = True, images: bool = False) -> Split:
    """scikit-learn's 8×8 handwritten digits (1,797 images, 64 features), stratified split.

    Args:
        classes: keep only these digits, relabelled ``0..len(classes)-1`` in the given order
            (for example ``(0, 1)`` for a binary task). ``None`` keeps all ten.
        test_fraction: the share held out for testing.
        seed: the split's seed.
        n_train, n_test: optional deterministic subsets.
        standardize: scale features to zero mean and unit variance (statistics of the
            training part only).
        images: return inputs of shape ``(N, 1, 8, 8)`` (for 2-D convolutions) instead of
            ``(N, 64)``; the same numbers.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    if classes is not None:
        classes = list(classes)
        if len(classes) < 2 or len(set(classes)) != len(classes) or not set(classes) <= set(range(10)):
            raise ValueError(f"classes: expected at least two distinct digits in 0..9, got {classes}")
        keep = np.isin(y, classes)
        X, y = X[keep], np.array([classes.index(v) for v in y[keep]])
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_fraction, random_state=seed,
                                          stratify=y)
    if standardize:
        mu, sd = Xtr.mean(0), Xtr.std(0)
        sd[sd == 0] = 1.0
        Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    t = lambda a, dt: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
    split = Split(t(Xtr, torch.float32), t(ytr, torch.int64), t(Xte, torch.float32),
                  t(yte, torch.int64), len(np.unique(y)))
    if images:
        split = Split(split.X_train.reshape(-1, 1, 8, 8), split.y_train,
                      split.X_test.reshape(-1, 1, 8, 8), split.y_test, split.num_classes)
    return _limit(split, n_train, n_test, seed)


TORCHVISION_DATASETS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "cifar10": "CIFAR10"}

#: The files of each part, relative to ``root``, in torchvision's layout.
_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def _dataset_key(name) -> str:
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in TORCHVISION_DATASETS:
        raise ValueError(f"name: expected one of {sorted(TORCHVISION_DATASETS)}, got {name!r}")
    return key


def _part_files(key: str, root: Path, part: str) -> list:
    if key == "cifar10":
        return [root / "cifar-10-batches-py" / f for f in _CIFAR_FILES[part]]
    return [root / TORCHVISION_DATASETS[key] / "raw" / f for f in _MNIST_FILES[part]]


def _read_part(key: str, root: Path, part: str, verify: bool = True) -> Tuple[Tensor, Tensor]:
    """One part (``"train"`` or ``"test"``) as uint8 images ``(N, C, H, W)`` and int64 labels,
    read from the datasets' own files (IDX for the MNIST family, pickled batches for CIFAR-10)."""
    import torchvision  # noqa: F401  (the readers and checksums below are torchvision's)
    from torchvision.datasets.utils import check_integrity

    files = _part_files(key, root, part)
    if key == "cifar10":
        import pickle

        from torchvision.datasets import CIFAR10

        sums = dict(CIFAR10.train_list + CIFAR10.test_list)
        images, labels = [], []
        for path in files:
            if verify and not check_integrity(str(path), sums[path.name]):
                raise ValueError(f"root: {path} does not match the CIFAR-10 checksum; the file is "
                                 "damaged or not CIFAR-10's")
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch["labels"] if "labels" in batch else batch["fine_labels"])
        X = torch.from_numpy(np.concatenate(images))
        y = torch.as_tensor(labels, dtype=torch.int64)
    else:
        from torchvision.datasets.mnist import read_image_file, read_label_file

        X = read_image_file(str(files[0])).unsqueeze(1)
        y = read_label_file(str(files[1])).to(torch.int64)
    if len(X) != len(y):
        raise ValueError(f"root: the {part} images and labels under {root} differ in number "
                         f"({len(X)} vs {len(y)})")
    return X, y


def torchvision_dataset(name: str, root: str | Path, n_train: int | None = None,
                        n_test: int | None = None, seed: int = 0, flatten: bool = False,
                        normalize: bool = False, test_fraction: float | None = None,
                        verify: bool = True) -> Split:
    r"""MNIST, FashionMNIST or CIFAR-10 from files a reader already has, as float32 tensors.

    The files must lie under ``root`` in torchvision's layout, uncompressed:
    ``root/MNIST/raw/train-images-idx3-ubyte`` (and ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``; ``FashionMNIST`` likewise), or
    ``root/cifar-10-batches-py/data_batch_1`` … ``data_batch_5`` and ``test_batch``. They are read
    with torchvision's IDX readers and checksums; nothing is ever downloaded (fetch the files
    once with ``torchvision.datasets.MNIST(root, download=True)`` where a network exists).

    A reader who has only the training files passes ``test_fraction``: a seeded, stratified
    share of the training part is held out as the test part.

    Args:
        name: ``"mnist"``, ``"fashionmnist"`` or ``"cifar10"`` (case, dashes and underscores
            ignored).
        root: the folder holding the dataset.
        n_train, n_test: optional deterministic subsets (taken after the split).
        seed: the subsets' and the held-out split's seed.
        flatten: return ``(N, features)`` instead of ``(N, C, H, W)``.
        normalize: subtract each channel's mean and divide by its standard deviation, both
            computed on the training part only (otherwise pixels are scaled to [0, 1]).
        test_fraction: hold this share of the training files out as the test part instead of
            reading the test files.
        verify: check CIFAR-10 files against their published MD5 sums (the MNIST family's
            IDX headers are checked by torchvision's reader).

    Returns:
        A :class:`Split` with 10 classes.

    Raises:
        ValueError: an unknown name, a bad ``test_fraction``, files that fail their checksum.
        FileNotFoundError: files of a needed part are missing; the message lists them.
    """
    key = _dataset_key(name)
    root = Path(root)
    if test_fraction is not None and not (isinstance(test_fraction, (int, float))
                                          and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction: expected None or a number in (0, 1), got {test_fraction!r}")
    needed = ("train",) if test_fraction is not None else ("train", "test")
    missing = [p for part in needed for p in _part_files(key, root, part) if not p.exists()]
    if missing:
        hint = ("" if test_fraction is not None or any(
            not p.exists() for p in _part_files(key, root, "train"))
            else "; with the training files alone, pass test_fraction to hold out a test part")
        raise FileNotFoundError(
            f"root: missing {TORCHVISION_DATASETS[key]} files: " + ", ".join(map(str, missing))
            + hint + " (the book never downloads; see running.md)")
    Xtr, ytr = _read_part(key, root, "train", verify)
    if test_fraction is None:
        Xte, yte = _read_part(key, root, "test", verify)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        test_idx = []
        for c in torch.unique(ytr):  # stratified: the same share of every class
            idx = torch.nonzero(ytr == c).squeeze(1)
            idx = idx[torch.randperm(len(idx), generator=gen)]
            test_idx.append(idx[:max(1, int(round(test_fraction * len(idx))))])
        test_idx = torch.cat(test_idx).sort().values
        keep = torch.ones(len(ytr), dtype=torch.bool)
        keep[test_idx] = False
        Xtr, ytr, Xte, yte = Xtr[keep], ytr[keep], Xtr[test_idx], ytr[test_idx]
    Xtr, Xte = Xtr.float() / 255.0, Xte.float() / 255.0
    if normalize:
        mean = Xtr.mean(dim=(0, 2, 3), keepdim=True)
        std = Xtr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-12)
        Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std
    if flatten:
        Xtr, Xte = Xtr.reshape(len(Xtr), -1), Xte.reshape(len(Xte), -1)
    split = Split(Xtr.contiguous(), ytr, Xte.contiguous(), yte, 10)
    return _limit(split, n_train, n_test, seed)


def from_spec(spec: dict) -> Split:
    """Build a dataset from a JSON-able description such as ``{"name": "mnist1d", "seed": 42}``.

    Names: ``"mnist1d"`` (:func:`mnist1d`), ``"digits"`` (:func:`digits`), and ``"mnist"``,
    ``"fashionmnist"``, ``"cifar10"`` with a ``"root"`` (:func:`torchvision_dataset`); the other
    keys are the maker's keyword arguments. This is how :mod:`flatness.cache` keys its files: the
    description, not the tensors, enters the hash (a torchvision dataset's ``root`` is part of
    it).

    >>> from_spec({"name": "mnist1d", "n_train": 100, "n_test": 50})
    Split(train=(100, 40), test=(50, 40), num_classes=10)
    """
    if not isinstance(spec, dict):
        raise TypeError(f"spec: expected a dict, got {type(spec).__name__}")
    spec = dict(spec)
    name = spec.pop("name", None)
    if name in ("first", "attack"):
        if not isinstance(spec.get("base"), dict):
            raise ValueError(f"spec: a {name!r} dataset needs a 'base' data spec (a dict), "
                             f"got {spec.get('base')!r}")
        base = from_spec(spec.pop("base"))
        return first_items(base, **spec) if name == "first" else attack_split(base, **spec)
    makers = {"mnist1d": mnist1d, "digits": digits}
    if isinstance(name, str) and name.lower().replace("-", "").replace("_", "") in TORCHVISION_DATASETS:
        return torchvision_dataset(name, **spec)
    if name not in makers:
        raise ValueError(f"spec: 'name' must be one of {sorted(makers) + sorted(TORCHVISION_DATASETS)}, "
                         f"got {name!r}")
    return makers[name](**spec)


def two_class_split(split: Split, classes: Sequence[int] = (0, 1), random_labels: bool = False,
                    seed: int = 0) -> Split:
    r"""Keep two classes of a :class:`~flatness.data.Split`, relabelled 0 and 1 (as floats, for
    ``nn.BCEWithLogitsLoss``).

    Args:
        split: a multi-class split (for example :func:`flatness.data.mnist1d`).
        classes: the two labels kept; the first becomes 0, the second 1.
        random_labels: replace the training and the test labels by independent fair coin flips
            (seeded), as in Smith & Le's (2018) random-label experiment: the inputs then carry
            no information about the labels, a test accuracy of 50 % and a test cross-entropy
            of :math:`\ln 2` are the best any model can expect.
        seed: the coin flips' seed.

    >>> s = Split(torch.zeros(6, 2), torch.tensor([0, 1, 2, 1, 0, 2]), torch.zeros(3, 2),
    ...           torch.tensor([2, 1, 0]), 3)
    >>> b = two_class_split(s, (2, 1))
    >>> b.y_train.tolist(), b.y_test.tolist(), b.num_classes
    ([1.0, 0.0, 1.0, 0.0], [0.0, 1.0], 2)
    """
    if not isinstance(split, Split):
        raise TypeError(f"split: expected a flatness.data.Split, got {type(split).__name__}")
    classes = [int(c) for c in classes]
    if len(classes) != 2 or classes[0] == classes[1] or not all(0 <= c < split.num_classes
                                                                for c in classes):
        raise ValueError(f"classes: expected two distinct labels in [0, {split.num_classes}), "
                         f"got {list(classes)}")

    def pick(X, y):
        keep = (y == classes[0]) | (y == classes[1])
        return X[keep], (y[keep] == classes[1]).to(torch.float32)

    Xtr, ytr = pick(*split.train)
    Xte, yte = pick(*split.test)
    if random_labels:
        gen = torch.Generator().manual_seed(int(seed))
        ytr = torch.randint(0, 2, ytr.shape, generator=gen).to(torch.float32)
        yte = torch.randint(0, 2, yte.shape, generator=gen).to(torch.float32)
    return Split(Xtr, ytr, Xte, yte, 2)


def random_relu_features(split: Split, width: int, seed: int = 0) -> Split:
    r"""Map the inputs through a fixed random ReLU layer, :math:`z = \max(0, W x + b)`,
    :math:`W_{ij}, b_i \sim \mathcal N(0, 1/d)`, then standardize each feature with the
    training part's statistics.

    A linear model on ``width`` such features has ``width + 1`` parameters, enough to memorize
    the random labels of up to about ``2 (width + 1)`` training points (Cover 1965).

    Args:
        split: the data; inputs are flattened.
        width: the number of features.
        seed: seeds the random layer.

    >>> s = Split(torch.randn(5, 3), torch.zeros(5), torch.randn(2, 3), torch.zeros(2), 2)
    >>> random_relu_features(s, 8).input_shape
    (8,)
    """
    if not isinstance(split, Split):
        raise TypeError(f"split: expected a flatness.data.Split, got {type(split).__name__}")
    check_positive(width, "width", integer=True)
    Xtr = split.X_train.reshape(len(split.X_train), -1).to(torch.float64)
    Xte = split.X_test.reshape(len(split.X_test), -1).to(torch.float64)
    d = Xtr.shape[1]
    gen = torch.Generator().manual_seed(int(seed))
    W = torch.randn(d, width, generator=gen, dtype=torch.float64) / math.sqrt(d)
    b = torch.randn(width, generator=gen, dtype=torch.float64) / math.sqrt(d)
    Ztr, Zte = torch.relu(Xtr @ W + b), torch.relu(Xte @ W + b)
    mu, sd = Ztr.mean(0), Ztr.std(0)
    sd[sd == 0] = 1.0
    return Split(((Ztr - mu) / sd).float(), split.y_train, ((Zte - mu) / sd).float(),
                 split.y_test, split.num_classes)


def wrong_labels(y: Tensor, num_classes: int, seed: int = 0) -> Tensor:
    r"""Labels that are always wrong: :math:`y' = (y + r) \bmod C` with :math:`r` uniform on
    :math:`\{1, \dots, C-1\}`, so :math:`y'` is uniform on the :math:`C-1` wrong classes and never
    equals :math:`y` (Wu, Zhu & E 2017's attack labels).

    Args:
        y: integer labels ``(N,)`` in ``[0, num_classes)``.
        num_classes: :math:`C \ge 2`.
        seed: seeds the draw (a CPU ``torch.Generator``; the same labels on every device).

    Returns:
        int64 labels on ``y``'s device.

    Raises:
        TypeError: ``y`` not an integer tensor.
        ValueError: ``num_classes`` < 2, labels out of range.

    >>> y = torch.tensor([0, 1, 2, 2])
    >>> bool((wrong_labels(y, 3) != y).all())
    True
    """
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dtype == torch.bool or y.ndim != 1:
        raise TypeError(f"y: expected a 1-D tensor of integer labels, got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes: expected an integer ≥ 2, got {num_classes!r}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"y: labels must lie in [0, {num_classes}), found "
                         f"{int(y.min())}..{int(y.max())}")
    g = torch.Generator().manual_seed(int(seed))
    shift = torch.randint(1, num_classes, (len(y),), generator=g)
    return ((y.cpu().long() + shift) % num_classes).to(y.device)


def first_items(split: Split, n: int) -> Split:
    """The first ``n`` training items of ``split`` (in its own order) and its whole test part.

    With Wu, Zhu & E's design — the first items of the training set as the training set S, the
    rest for the attack set (:func:`attack_split`) — S and T never share an item. Spec
    ``{"name": "first", "base": <data spec>, "n": n}``.

    Raises:
        ValueError: ``n`` not in ``[1, N_train]``.
    """
    N = split.X_train.shape[0]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= N:
        raise ValueError(f"n: expected an integer in [1, {N}], got {n!r}")
    return Split(split.X_train[:n], split.y_train[:n], split.X_test, split.y_test,
                 split.num_classes)


def attack_split(split: Split, n_s: int, size: int, num_classes: int | None = None,
                 seed: int = 0) -> Split:
    """An attack set T (Wu, Zhu & E 2017, §5.1) as the training part of a :class:`Split`.

    T is ``size`` items drawn without replacement (a permutation seeded by ``seed``) from the
    training items *after* the first ``n_s`` — those are the training set S of
    :func:`first_items` — with labels from :func:`wrong_labels` (``seed`` again), so no attack
    label is right. The test part is the base's. Spec ``{"name": "attack", "base": <data spec>,
    "n_s": n_S, "size": |T|, "num_classes": C, "seed": s}`` (``num_classes`` defaults to the
    base's); it is what :class:`~flatness.training.TrainConfig`'s ``attack`` takes.

    Raises:
        ValueError: ``n_s`` or ``size`` out of range (``n_s + size`` must not exceed the training
            items), ``num_classes`` smaller than the labels need.
    """
    N = split.X_train.shape[0]
    if not isinstance(n_s, int) or isinstance(n_s, bool) or not 0 <= n_s < N:
        raise ValueError(f"n_s: expected an integer in [0, {N - 1}], got {n_s!r}")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= N - n_s:
        raise ValueError(f"size: expected an integer in [1, {N - n_s}] (the training items after "
                         f"the first n_s={n_s}), got {size!r}")
    C = split.num_classes if num_classes is None else num_classes
    g = torch.Generator().manual_seed(int(seed))
    idx = n_s + torch.randperm(N - n_s, generator=g)[:size].sort().values
    X, y = split.X_train[idx], split.y_train[idx]
    return Split(X, wrong_labels(y, C, seed), split.X_test, split.y_test, split.num_classes)
