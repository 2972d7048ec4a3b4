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
    #: the name of each class code when the labels were given as strings (``--data``)
    class_names: tuple | None = None

    @property
    def multilabel(self) -> bool:
        return self.y.ndim == 2

    @property
    def n_classes(self) -> int:
        return int(self.y.shape[1]) if self.multilabel else int(max(self.y.max(), self.y_test.max()) + 1)

    def describe(self) -> str:
        kind = "multi-label" if self.multilabel else "multi-class"
        if self.class_names is not None:
            shown = ", ".join(map(str, self.class_names[:8])) + (", ..." if len(self.class_names) > 8 else "")
            kind += f": {shown}"
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
    """Labels for the rows of ``X``: 1-d non-negative integer classes, or a 2-d 0/1 multi-label matrix."""
    y = np.asarray(y)
    if y.shape[:1] != X.shape[:1]:
        raise BatchalInputError(f"{where}: X has {X.shape[0]} rows but y has {y.shape[0] if y.ndim else 0}")
    if y.dtype.kind not in "biuf":
        raise BatchalInputError(f"{where}: y must hold class labels (numbers or strings); got dtype {y.dtype}")
    if y.ndim == 1:
        if not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
            raise BatchalInputError(f"{where}: y must hold integer class labels (or strings)")
        if y.size and y.min() < 0:
            raise BatchalInputError(f"{where}: class labels must be >= 0")
        return y.astype(np.int64)
    if y.ndim == 2:
        if not np.isin(y, (0, 1)).all():
            raise BatchalInputError(f"{where}: a 2-d y is multi-label and must hold only 0 and 1")
        return y.astype(np.int8)
    raise BatchalInputError(f"{where}: y must be 1-d (classes) or 2-d (multi-label); got shape {y.shape}")


def _read_npz(p: Path, name: str) -> dict:
    """Every array of an .npz, refusing what is not one with a message naming ``name`` and the file."""
    import zipfile

    if p.is_dir():
        raise BatchalInputError(f"{name}: {p} is a directory, not an .npz file")
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as fh:
            head = fh.read(6)
        kind = ("a single .npy array" if head == b"\x93NUMPY" else
                "a damaged or truncated .npz archive" if head[:4] == b"PK\x03\x04" else "not an .npz archive")
        raise BatchalInputError(f"{name}: {p} is {kind}; make one with numpy.savez(path, X=X, y=y)")
    arrays = {}
    try:
        with np.load(p, allow_pickle=False) as z:
            for key in z.files:
                try:
                    arrays[key] = z[key]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise BatchalInputError(f"{name}: {key} in {p} holds Python objects; store numbers "
                                                "(or strings for labels)") from None
                    raise
    except BatchalInputError:
        raise
    except Exception as exc:  # a damaged archive: zipfile, zlib and numpy each have their own errors
        raise BatchalInputError(f"{name}: cannot read {p}: {exc}") from None
    return arrays


def _features(a, key: str, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise BatchalInputError(f"{name}: {key} must hold numbers; got dtype {a.dtype}")
    if a.ndim != 2:
        raise BatchalInputError(f"{name}: {key} must be 2-d (n, d); got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise BatchalInputError(f"{name}: {key} is empty (shape {a.shape})")
    with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf, refused below by name
        X = np.asarray(a, dtype=np.float32)
    if not np.isfinite(X).all():
        row = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        if np.isfinite(np.asarray(a[row], dtype=np.float64)).all():
            raise BatchalInputError(f"{name}: {key} holds values beyond float32's range (|x| > 3.4e38; first at "
                                    f"row {row}): rescale the features")
        raise BatchalInputError(f"{name}: {key} contains NaN or infinite values (first at row {row})")
    return X


def _encode(y, yt, name: str):
    """String labels as codes 0..K-1 (sorted names); numbers unchanged. Returns ``(y, yt, names)``."""
    text = [a is not None and np.asarray(a).dtype.kind in "US" for a in (y, yt)]
    if not any(text):
        return y, yt, None
    if yt is not None and text[0] != text[1]:
        raise BatchalInputError(f"{name}: y and y_test must both be strings or both numbers")
    y = np.asarray(y)
    if y.ndim != 1:
        raise BatchalInputError(f"{name}: string labels must be 1-d (one class per row); got shape {y.shape}")
    names, codes = np.unique(y if yt is None else np.concatenate([y, np.asarray(yt).ravel()]), return_inverse=True)
    yt_codes = None if yt is None else codes[y.shape[0]:].reshape(np.shape(yt))
    return codes[: y.shape[0]], yt_codes, tuple(names.tolist())


def _label_name(c, names) -> str:
    return repr(names[c]) if names is not None else str(c)


def load_npz(path, *, test_size: float = 0.2, seed: int = 0, name: str = "--data") -> Dataset:
    """A user file with arrays ``X``, ``y`` and optionally ``X_test``, ``y_test``.

    ``X`` holds numbers; ``y`` holds integer classes, strings (mapped to codes in
    sorted order, the names kept in ``Dataset.class_names``) or a 0/1 multi-label
    matrix. Without a test split, ``test_size`` of the rows is held out, stratified
    by class. Every problem is a :class:`BatchalInputError` naming ``name``, raised
    before any work.
    """
    p = Path(path)
    if not p.exists():
        raise BatchalInputError(f"{name}: no such file {p}")
    z = _read_npz(p, name)
    missing = [k for k in ("X", "y") if k not in z]
    if missing:
        raise BatchalInputError(f"{name} {p.name} lacks array(s) {missing}; it holds {sorted(z)}")
    if ("X_test" in z) != ("y_test" in z):
        raise BatchalInputError(f"{name}: give both X_test and y_test, or neither")
    X = _features(z["X"], "X", name)
    y, yt, names = _encode(z["y"], z.get("y_test"), name)
    y = check_labels(X, y, name)
    if "X_test" in z:
        Xt = _features(z["X_test"], "X_test", name)
        if Xt.shape[1] != X.shape[1]:
            raise BatchalInputError(f"{name}: X_test has shape {Xt.shape}; expected (m, {X.shape[1]})")
        yt = check_labels(Xt, yt, f"{name} (test)")
        if yt.ndim != y.ndim or (y.ndim == 2 and yt.shape[1] != y.shape[1]):
            raise BatchalInputError(f"{name}: y {y.shape} and y_test {yt.shape} disagree on the classes")
        _check_classes(y, yt, names, name)
        return Dataset(p.stem, X, y, Xt, yt, class_names=names)
    _check_classes(y, None, names, name)
    if y.ndim == 1:
        counts = np.bincount(y)
        present = np.flatnonzero(counts)
        n_test = int(np.ceil(test_size * y.shape[0]))
        if counts[present].min() < 2:
            c = int(present[np.argmin(counts[present])])
            raise BatchalInputError(f"{name}: class {_label_name(c, names)} has a single example; holding out a "
                                    "stratified test split needs at least 2 of each class (or give X_test, y_test)")
        if n_test < present.shape[0] or y.shape[0] - n_test < present.shape[0]:
            raise BatchalInputError(f"{name}: {y.shape[0]} rows are too few to hold out {100 * test_size:.0f}% as "
                                    f"a test split with each of the {present.shape[0]} classes on both sides; "
                                    "give more rows or X_test and y_test")
    try:
        ds = _split(p.stem, X, y, test_size, seed)
    except ValueError as exc:  # scikit-learn's split refuses what the checks above did not foresee
        raise BatchalInputError(f"{name}: cannot split {p} into a pool and a test split: {exc}") from None
    ds.class_names = names
    return ds


def _check_classes(y, yt, names, name: str) -> None:
    """The pool must show at least two classes, and every class the test split asks about."""
    if y.ndim == 2:
        return
    seen = np.unique(y)
    if seen.shape[0] < 2:
        raise BatchalInputError(f"{name}: y has a single class ({_label_name(int(seen[0]), names)}); "
                                "a classifier needs at least two")
    if yt is not None:
        absent = np.setdiff1d(np.unique(yt), seen)
        if absent.size:
            shown = ", ".join(_label_name(int(c), names) for c in absent[:5])
            raise BatchalInputError(f"{name}: y_test holds class(es) {shown} that the pool y never shows; "
                                    "no strategy could learn them")


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
    ``mnist1d_{n}_{n_test}_{seed}.npz`` under :func:`cache_dir`. One call of the
    package's generator: for pools above 100K rows,
    :func:`batchal.simulate.pools.load_mnist1d` generates in resumable cached chunks.
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
