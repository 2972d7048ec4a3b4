"""Labeled datasets for simulated active learning.

Every loader returns a :class:`Dataset` with a pool (``X``, ``y``) and a
held-out test split. ``y`` is a 1-d int array of classes, or an (n, C) 0/1
array for multi-label data.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._validation import BatchalInputError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("digits", "fashion-mnist", "mnist1d", "blobs", "multilabel")


@dataclass
class Dataset:
    """A pool with labels and a test split."""

    name: str
    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    #: (height, width) when each row is an image (augmentations may shift it); None for plain vectors
    image_shape: tuple | None = None
    #: per pool row, the row of the original pool it copies (set by make_redundant)
    source: np.ndarray | None = None
    #: how the pool was made redundant, and its multiplicities (set by make_redundant)
    redundancy: dict | None = None

    @property
    def multilabel(self) -> bool:
        return self.y.ndim == 2

    @property
    def n_classes(self) -> int:
        return int(self.y.shape[1]) if self.multilabel else int(max(self.y.max(), self.y_test.max()) + 1)

    def describe(self) -> str:
        kind = "multi-label" if self.multilabel else "multi-class"
        return (
            f"{self.name}: pool {self.X.shape[0]:,} x {self.X.shape[1]}, test {self.X_test.shape[0]:,}, "
            f"{self.n_classes} classes ({kind})"
        )


def cache_dir() -> Path:
    """Where generated data is cached (``$BATCHAL_CACHE`` or ``~/.cache/batchal``)."""
    d = Path(os.environ.get("BATCHAL_CACHE", Path.home() / ".cache" / "batchal"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _split(name, X, y, test_size, seed) -> Dataset:
    from sklearn.model_selection import train_test_split

    strat = y if y.ndim == 1 else None
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=strat)
    return Dataset(name, np.ascontiguousarray(Xtr, dtype=np.float32), ytr, np.ascontiguousarray(Xte, dtype=np.float32), yte)


def check_labels(X, y, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape[0] != X.shape[0]:
        raise BatchalInputError(f"{where}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    if y.ndim == 1:
        if not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
            raise BatchalInputError(f"{where}: y must hold integer class labels")
        if y.min() < 0:
            raise BatchalInputError(f"{where}: class labels must be >= 0")
        return y.astype(np.int64)
    if y.ndim == 2:
        if not np.isin(y, (0, 1)).all():
            raise BatchalInputError(f"{where}: a 2-d y is multi-label and must hold only 0 and 1")
        return y.astype(np.int8)
    raise BatchalInputError(f"{where}: y must be 1-d (classes) or 2-d (multi-label); got shape {y.shape}")


def load_npz(path, *, test_size: float = 0.2, seed: int = 0) -> Dataset:
    """A user file with arrays ``X``, ``y`` and optionally ``X_test``, ``y_test``."""
    p = Path(path)
    if not p.exists():
        raise BatchalInputError(f"--data: no such file {p}")
    with np.load(p, allow_pickle=False) as z:
        missing = [k for k in ("X", "y") if k not in z.files]
        if missing:
            raise BatchalInputError(f"--data {p.name} lacks array(s) {missing}; it holds {z.files}")
        X = np.asarray(z["X"], dtype=np.float32)
        if X.ndim != 2:
            raise BatchalInputError(f"--data: X must be 2-d (n, d); got shape {X.shape}")
        y = check_labels(X, z["y"], "--data")
        if not np.isfinite(X).all():
            raise BatchalInputError("--data: X contains NaN or infinite values")
        if ("X_test" in z.files) != ("y_test" in z.files):
            raise BatchalInputError("--data: give both X_test and y_test, or neither")
        if "X_test" in z.files:
            Xt = np.asarray(z["X_test"], dtype=np.float32)
            if Xt.ndim != 2 or Xt.shape[1] != X.shape[1]:
                raise BatchalInputError(f"--data: X_test has shape {Xt.shape}; expected (m, {X.shape[1]})")
            yt = check_labels(Xt, z["y_test"], "--data (test)")
            if yt.ndim != y.ndim:
                raise BatchalInputError("--data: y and y_test disagree on multi-class vs multi-label")
            return Dataset(p.stem, X, y, Xt, yt)
    return _split(p.stem, X, y, test_size, seed)


def load_digits(seed: int = 0) -> Dataset:
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    ds = _split("digits", d.data / 16.0, d.target, 0.25, seed)
    ds.image_shape = (8, 8)
    return ds


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(root: Path = FASHION_MNIST_DIR) -> Dataset:
    """Fashion-MNIST (60K pool, 10K test) from the Debian package's idx files, pixels in [0, 1]."""
    files = {k: root / f"{k}-idx{3 if 'images' in k else 1}-ubyte.gz" for k in
             ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        raise BatchalInputError(
            f"Fashion-MNIST not found ({missing[0]} is missing); install it with "
            "`apt-get install -y dataset-fashion-mnist` (puts the idx files under /usr/share/datasets/fashion-mnist/)"
        )
    X = _read_idx(files["train-images"]).reshape(-1, 784).astype(np.float32) / 255.0
    Xt = _read_idx(files["t10k-images"]).reshape(-1, 784).astype(np.float32) / 255.0
    return Dataset("fashion-mnist", X, _read_idx(files["train-labels"]).astype(np.int64),
                   Xt, _read_idx(files["t10k-labels"]).astype(np.int64), image_shape=(28, 28))


def load_mnist1d(n: int = 100_000, n_test: int = 10_000, seed: int = 0, progress: bool = False) -> Dataset:
    """MNIST-1D (Greydanus, 2020) generated offline with the ``mnist1d`` package and cached.

    Generation costs about 1 ms per example, so the arrays are cached as
    ``mnist1d_{n}_{n_test}_{seed}.npz`` under :func:`cache_dir`.
    """
    path = cache_dir() / f"mnist1d_{n}_{n_test}_{seed}.npz"
    if path.exists():
        with np.load(path) as z:
            return Dataset("mnist1d", z["X"], z["y"], z["X_test"], z["y_test"])
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise BatchalInputError("the mnist1d dataset needs the mnist1d package: pip install 'batchal[mnist1d]'") from exc
    args = get_dataset_args(as_dict=False)
    args.num_samples = n + n_test
    args.train_split = n / (n + n_test)
    args.seed = seed
    data = make_dataset(args)
    X = np.asarray(data["x"], dtype=np.float32)
    Xt = np.asarray(data["x_test"], dtype=np.float32)
    mu, sd = X.mean(0), X.std(0) + 1e-6
    ds = Dataset("mnist1d", (X - mu) / sd, np.asarray(data["y"], dtype=np.int64), (Xt - mu) / sd,
                 np.asarray(data["y_test"], dtype=np.int64))
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, X=ds.X, y=ds.y, X_test=ds.X_test, y_test=ds.y_test)
    os.replace(tmp, path)
    return ds


def load_blobs(n: int = 20_000, n_features: int = 32, n_classes: int = 10, seed: int = 0) -> Dataset:
    """Synthetic Gaussian mixture: several blobs per class, overlapping, for speed and sanity runs."""
    rng = np.random.default_rng(seed)
    n_blobs = n_classes * 4
    centers = rng.normal(scale=2.5, size=(n_blobs, n_features))
    owner = np.arange(n_blobs) % n_classes
    m = n + n // 4
    b = rng.integers(0, n_blobs, m)
    X = centers[b] + rng.normal(size=(m, n_features))
    y = owner[b]
    return _split("blobs", X, y, n // 4 / m, seed)


def load_multilabel(n: int = 6_000, n_features: int = 20, n_classes: int = 8, seed: int = 0) -> Dataset:
    """A generated multi-label problem (scikit-learn's ``make_multilabel_classification``)."""
    from sklearn.datasets import make_multilabel_classification

    X, Y = make_multilabel_classification(n_samples=n, n_features=n_features, n_classes=n_classes,
                                          n_labels=2, random_state=seed)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    return _split("multilabel", X, Y.astype(np.int8), 0.25, seed)


def subsample_pool(ds: Dataset, size: int | None, seed: int = 0) -> Dataset:
    """A stratified random subset of ``size`` pool rows (test split unchanged); ``None`` keeps all."""
    if size is None or size >= ds.X.shape[0]:
        return ds
    if size < 2 * ds.n_classes:
        raise BatchalInputError(f"--size {size} is too small for {ds.n_classes} classes")
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(ds.X.shape[0]), train_size=int(size), random_state=seed,
                              stratify=ds.y if ds.y.ndim == 1 else None)
    idx = np.sort(idx)
    import dataclasses

    return dataclasses.replace(ds, name=f"{ds.name}-{size // 1000}k" if size >= 1000 else f"{ds.name}-{size}",
                               X=ds.X[idx], y=ds.y[idx])


def load_dataset(name: str, *, size: int | None = None, seed: int = 0, progress: bool = False) -> Dataset:
    """Load a built-in dataset by name (``digits``, ``fashion-mnist``, ``mnist1d``, ``blobs``, ``multilabel``).

    ``size`` sets the pool size of generated datasets (mnist1d, blobs, multilabel)
    and draws a stratified random subset of that many pool rows from the fixed
    ones (digits, fashion-mnist); the test split is kept whole.
    """
    if name == "digits":
        return subsample_pool(load_digits(seed), size, seed)
    if name == "fashion-mnist":
        return subsample_pool(load_fashion_mnist(), size, seed)
    if name == "mnist1d":
        return load_mnist1d(n=size or 100_000, seed=seed, progress=progress)
    if name == "blobs":
        return load_blobs(n=size or 20_000, seed=seed)
    if name == "multilabel":
        return load_multilabel(n=size or 6_000, seed=seed)
    raise BatchalInputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or pass --data FILE.npz")
