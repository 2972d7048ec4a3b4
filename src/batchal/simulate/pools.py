"""Generated pools in the paper's regime: 1M+ rows, long tails, many classes, large vocabularies.

Every pool here is generated locally, deterministically under ``seed``, and
cached under :func:`~batchal.simulate.datasets.cache_dir` in a directory whose
name holds every generation parameter. Arrays are ``.npy`` files written to a
temporary directory and moved into place with one ``os.replace`` (a reader
never sees half a pool), and loaded memory-mapped (``mmap_mode="r"``): a
1M x 64 float32 pool costs page cache, not process memory.

Names for :func:`~batchal.simulate.catalog.load_dataset` (see :data:`POOLS`):
``mnist1d-lt`` (MNIST-1D, long-tailed), ``fmnist-web`` and ``fmnist-web-lt``
(web-like copies of Fashion-MNIST on frozen features; ``-views`` after either:
the test images drawn as the pool's rows are), ``manyclass`` (32
classes of MNIST-1D-style signals), ``multilabel-vocab`` (1,000 long-tailed
labels). ``mnist1d`` above 100K rows is generated here in chunks.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .._progress import progress as _progress
from .._validation import BatchalInputError, check_count, check_number
from . import datasets as _datasets
from .datasets import Dataset, cache_dir

__all__ = ["load_mnist1d_chunked", "load_fmnist_web", "load_manyclass", "load_multilabel_vocab", "long_tail", "POOLS",
           "MNIST1D_CHUNK"]

#: rows per MNIST-1D generation chunk (about 50 s of one core each)
MNIST1D_CHUNK = 50_000
#: pools up to this size keep the one-call ``make_dataset`` generation (existing benchmarks rely on it)
MNIST1D_SINGLE_CALL_MAX = 100_000


# ----------------------------------------------------------------------------- cache helpers

def _cached(path: Path, names) -> dict | None:
    """The arrays ``names`` of the cached pool directory ``path``, memory-mapped; None when absent."""
    if not all((path / f"{k}.npy").exists() for k in names):
        return None
    return {k: np.load(path / f"{k}.npy", mmap_mode="r") for k in names}


def _save(path: Path, arrays: dict, meta: dict | None = None) -> dict:
    """Write ``arrays`` as ``path/<name>.npy`` (and ``meta`` as ``meta.json``) atomically; return them memory-mapped."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k, v in arrays.items():
        np.save(tmp / f"{k}.npy", np.ascontiguousarray(v))
    if meta is not None:
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished the same pool first: same parameters, same arrays
        shutil.rmtree(tmp, ignore_errors=True)
    return _cached(path, arrays.keys())


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Write one ``.npy`` atomically (a resumed generation trusts every file it finds)."""
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- MNIST-1D at 1M

def _mnist1d_chunk_seed(seed: int, index) -> int:
    """A 32-bit seed for chunk ``index`` (an int, or ``"test<rows>"``) of the pool generated with ``seed``."""
    tag = 1 << 20 if str(index).startswith("test") else int(index)
    return int(np.random.SeedSequence([int(seed), tag, 0x1D]).generate_state(1)[0])


def _mnist1d_generate(rows: int, chunk_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` raw (unstandardised) MNIST-1D examples, classes balanced to within one, in random order.

    The ``mnist1d`` package's ``transform`` draws from NumPy's global generator;
    the caller's global state is saved and restored around it.
    """
    from mnist1d.data import get_dataset_args, get_templates
    from mnist1d.transform import transform

    args = get_dataset_args(as_dict=False)
    templates = get_templates()
    k = len(templates["y"])
    y = np.random.default_rng(chunk_seed).permutation(np.arange(rows) % k).astype(np.int64)
    state = np.random.get_state()
    try:
        np.random.seed(chunk_seed)
        X = np.empty((rows, args.final_seq_length), dtype=np.float32)
        for i, c in enumerate(y):
            X[i] = transform(templates["x"][c], templates["t"], args)[0]
    finally:
        np.random.set_state(state)
    return X, y


def _mnist1d_chunk_file(seed: int, chunk: int, index) -> Path:
    """Chunk ``index`` (an int, or ``"test<rows>"``): its name holds everything its rows depend on."""
    d = cache_dir() / "mnist1d-chunks"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"mnist1d-raw-v1_seed{seed}_chunk{chunk}_{index}.npz"


def _mnist1d_chunk(seed: int, chunk: int, index, rows: int) -> Path:
    """Generate (or find) one cached chunk; returns its file. Runs in worker processes too."""
    path = _mnist1d_chunk_file(seed, chunk, index)
    if not path.exists():
        X, y = _mnist1d_generate(rows, _mnist1d_chunk_seed(seed, index))
        tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npz")
        np.savez(tmp, X=X, y=y)
        os.replace(tmp, path)
    return path


def load_mnist1d(n: int = 100_000, n_test: int = 10_000, seed: int = 0, progress: bool = False) -> Dataset:
    """MNIST-1D of any size: up to 100K rows the package's one generator call as before
    (:func:`batchal.simulate.datasets.load_mnist1d`), above it :func:`load_mnist1d_chunked`."""
    if n > 100_000:
        return load_mnist1d_chunked(n, n_test, seed, progress)
    return _datasets.load_mnist1d(n, n_test, seed, progress)


def load_mnist1d_chunked(n: int = 1_000_000, n_test: int = 10_000, seed: int = 0, progress: bool = False,
                         *, chunk: int = MNIST1D_CHUNK, workers: int = 1) -> Dataset:
    """MNIST-1D for pools larger than 100K, generated in cached chunks.

    The ``mnist1d`` package costs about 1 ms per example (1M rows: about 17 min
    on one core). The pool is made of chunks of ``chunk`` examples, each drawn
    with its own seed derived from ``(seed, chunk index)`` and cached as soon as
    it is done, so an interrupted generation resumes where it stopped. Pools of
    different ``n`` share their chunks: the raw rows of a smaller pool are the
    first rows of a larger one. The test split is a chunk of its own. Features
    are standardised with the pool's statistics (as :func:`load_mnist1d`).

    Parameters
    ----------
    n, n_test : int
        Pool and test rows (exact).
    seed : int
    progress : bool
        Report chunks as they complete.
    chunk : int
        Rows per chunk (part of the cache key of the chunks).
    workers : int
        Processes generating chunks at once (one chunk per process).

    Returns
    -------
    Dataset
        Named ``mnist1d``; arrays memory-mapped from
        ``cache_dir()/mnist1d_{n}_{n_test}_{seed}_c{chunk}/``.

    Notes
    -----
    Pools of at most 100K rows keep :func:`~batchal.simulate.datasets.load_mnist1d`'s
    single ``make_dataset`` call; their rows differ from the chunked ones (one
    random stream, the package's own scalar normalisation, which per-feature
    standardisation undoes). Each chunk's classes are balanced to within one row.
    """
    n = check_count(n, "n", 1)
    n_test = check_count(n_test, "n_test", 1)
    seed = check_count(seed, "seed", 0)
    chunk = check_count(chunk, "chunk", 10)
    workers = check_count(workers, "workers", 1)
    path = cache_dir() / f"mnist1d_{n}_{n_test}_{seed}_c{chunk}"
    names = ("X", "y", "X_test", "y_test")
    got = _cached(path, names)
    if got is None:
        try:
            import mnist1d  # noqa: F401
        except ImportError as exc:
            raise BatchalInputError("the mnist1d dataset needs the mnist1d package: "
                                    "pip install 'batchal[mnist1d]'") from exc
        n_chunks = -(-n // chunk)
        jobs = [(i, chunk) for i in range(n_chunks)] + [(f"test{n_test}", n_test)]
        todo = [j for j in jobs if not _mnist1d_chunk_file(seed, chunk, j[0]).exists()]
        with _progress(len(jobs), "mnist1d chunks", enabled=progress, unit="chunk") as bar:
            bar.update(len(jobs) - len(todo))
            if workers > 1 and len(todo) > 1:
                from concurrent.futures import ProcessPoolExecutor, as_completed

                with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as ex:
                    futs = [ex.submit(_mnist1d_chunk, seed, chunk, i, rows) for i, rows in todo]
                    for f in as_completed(futs):
                        f.result()
                        bar.update(1)
            else:
                for i, rows in todo:
                    _mnist1d_chunk(seed, chunk, i, rows)
                    bar.update(1)
        X = np.empty((n, 40), dtype=np.float32)
        y = np.empty(n, dtype=np.int64)
        for i in range(n_chunks):
            with np.load(_mnist1d_chunk_file(seed, chunk, i)) as z:
                lo, hi = i * chunk, min(n, (i + 1) * chunk)
                X[lo:hi], y[lo:hi] = z["X"][: hi - lo], z["y"][: hi - lo]
        with np.load(_mnist1d_chunk_file(seed, chunk, f"test{n_test}")) as z:
            Xt, yt = z["X"], z["y"]
        mu = X.mean(0, dtype=np.float64)
        sd = X.std(0, dtype=np.float64) + 1e-6
        X -= mu.astype(np.float32)
        X /= sd.astype(np.float32)
        Xt = ((Xt - mu) / sd).astype(np.float32)
        got = _save(path, {"X": X, "y": y, "X_test": Xt, "y_test": yt})
    return Dataset("mnist1d", got["X"], got["y"], got["X_test"], got["y_test"])


# ----------------------------------------------------------------------------- the web-like Fashion-MNIST pool

#: cache folder prefix of the web-like pools; v2: embedded with one BLAS thread (v1's bytes depended on the count)
WEB_KEY = "fmnist-web-v2"


def _key(prefix: str, params: dict) -> str:
    """A cache directory name holding every generation parameter (``g`` format keeps floats short)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, (tuple, list)):
            return "x".join(map(fmt, v))
        return str(v)

    return prefix + "_" + "_".join(f"{k}{fmt(v)}" for k, v in params.items())


def _multiplicities(n_src: int, size: int, a: float, rng) -> np.ndarray:
    """Copies per source image: Zipf(``a``) draws, capped so that they sum to exactly ``size``.

    The cap is the largest one whose capped sum stays within ``size``; the few
    rows left go one each to sources drawn above the cap (no multiplicity
    exceeds cap + 1). When even the uncapped draws fall short (light tails, a
    large ``size``) the rest is spread in proportion to the draws, keeping
    their shape. Every source keeps at least one row.
    """
    z = np.minimum(rng.zipf(a, size=n_src), np.iinfo(np.int64).max // (4 * n_src + 4)).astype(np.int64)
    if z.sum() >= size:
        lo, hi = 1, int(z.max())
        while lo < hi:  # the largest cap with sum(min(z, cap)) <= size
            mid = (lo + hi + 1) // 2
            if np.minimum(z, mid).sum() <= size:
                lo = mid
            else:
                hi = mid - 1
        m = np.minimum(z, lo)
        rest = size - int(m.sum())
        if rest:
            above = np.flatnonzero(z > lo)
            m[rng.choice(above, rest, replace=False)] += 1
        return m
    extra = rng.multinomial(size - int(z.sum()), z / z.sum())
    return z + extra


def _augment(imgs: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Affine-warp each (h, w) image by its row of ``params`` (dy, dx, angle in degrees, scale), bilinear.

    One ``map_coordinates`` call per block: the batch axis is sampled at integer
    coordinates, so the interpolation never mixes two images.
    """
    from scipy.ndimage import map_coordinates

    b, h, w = imgs.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    th = np.deg2rad(params[:, 2])[:, None, None]
    sc = params[:, 3][:, None, None]
    ii, jj = np.meshgrid(np.arange(h, dtype=np.float64) - cy, np.arange(w, dtype=np.float64) - cx, indexing="ij")
    # output pixel p takes the input at R(-theta) (p - t) / s: the inverse of scale, rotate, shift
    u = ii[None] - params[:, 0][:, None, None]
    v = jj[None] - params[:, 1][:, None, None]
    src_y = (np.cos(th) * u + np.sin(th) * v) / sc + cy
    src_x = (-np.sin(th) * u + np.cos(th) * v) / sc + cx
    bb = np.broadcast_to(np.arange(b, dtype=np.float64)[:, None, None], (b, h, w))
    return map_coordinates(imgs, np.stack([bb, src_y, src_x]), order=1, mode="constant", cval=0.0,
                           output=np.float32)


def _feature_net(X, y, hidden: tuple, seed: int, max_iter: int, path: Path) -> list:
    """Weights of the frozen feature network (an sklearn MLP trained once on the feature part), cached."""
    f = path / "net.npz"
    if f.exists():
        with np.load(f) as z:
            k = len(z.files) // 2
            return [(z[f"W{i}"], z[f"b{i}"]) for i in range(k)]
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from threadpoolctl import threadpool_limits

    # one BLAS thread: the mini-batches are small (threads mostly wait, many times slower on a
    # busy machine) and the weights then do not depend on the machine's thread count
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        net = MLPClassifier(hidden_layer_sizes=hidden, max_iter=max_iter, random_state=seed).fit(X, y)
    layers = [(np.asarray(W, np.float32), np.asarray(b, np.float32))
              for W, b in zip(net.coefs_[:-1], net.intercepts_[:-1])]
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f"net.tmp-{os.getpid()}.npz"
    np.savez(tmp, **{f"W{i}": W for i, (W, _) in enumerate(layers)},
             **{f"b{i}": b for i, (_, b) in enumerate(layers)})
    os.replace(tmp, f)
    return layers


def _embed(layers, X: np.ndarray) -> np.ndarray:
    """The last hidden layer (ReLU) of the feature network, by hand from its weights.

    With one BLAS thread: OpenBLAS's float32 products split their sums by thread, so with two threads
    1.2% of a block's entries differed in the last bits from one thread's, and the pool (its clusters,
    every score read on it) with them: a pool must not depend on the thread count of the machine that
    made it. (Another CPU's kernels may still round differently; the simulator's merges check the
    whole-pool reference for that.)
    """
    from threadpoolctl import threadpool_limits

    h = np.asarray(X, dtype=np.float32)
    with threadpool_limits(1):
        for W, b in layers:
            h = np.maximum(h @ W + b, 0.0)
    return h


#: Fashion-MNIST superclasses for the feature network's coarse task: tops (t-shirt, pullover, coat,
#: shirt), bottoms and dresses (trouser, dress), footwear (sandal, sneaker, ankle boot), bags
FMNIST_COARSE = (0, 1, 0, 1, 0, 2, 0, 2, 3, 2)


def _fashion_mnist() -> dict:
    """Fashion-MNIST's uint8 pixels and labels (``X``, ``y``, ``X_test``, ``y_test``), decoded once.

    The idx files are gzip-compressed (seconds to decode); their pixels are
    cached as ``.npy`` files and memory-mapped. ``X / 255`` in float32 is
    exactly :func:`~batchal.simulate.datasets.load_fashion_mnist`'s ``X``.
    """
    from .datasets import FASHION_MNIST_DIR, _read_idx, load_fashion_mnist

    path = cache_dir() / "fashion-mnist-u8"
    got = _cached(path, ("X", "y", "X_test", "y_test"))
    if got is None:
        files = {k: FASHION_MNIST_DIR / f"{k}-idx{3 if 'images' in k else 1}-ubyte.gz" for k in
                 ("train-images", "train-labels", "t10k-images", "t10k-labels")}
        if not all(f.exists() for f in files.values()):
            load_fashion_mnist()  # raises the error that says how to install it
        got = _save(path, {"X": _read_idx(files["train-images"]).reshape(-1, 784),
                           "y": _read_idx(files["train-labels"]).astype(np.int64),
                           "X_test": _read_idx(files["t10k-images"]).reshape(-1, 784),
                           "y_test": _read_idx(files["t10k-labels"]).astype(np.int64)})
    return got


def _pixels(u8: np.ndarray) -> np.ndarray:
    """uint8 pixels as load_fashion_mnist gives them: float32 in [0, 1]."""
    return np.asarray(u8).astype(np.float32) / 255.0


def _tail_keep(counts: np.ndarray, a: float, ranks: np.ndarray) -> np.ndarray:
    """Rows to keep per class for frequencies proportional to 1/rank^a; the rank-1 class keeps all, each >= 1."""
    top = counts[np.argmin(ranks)]
    return np.clip(np.round(top / ranks.astype(np.float64) ** a), 1, counts).astype(np.int64)


def _class_ranks(n_classes: int, seed: int) -> np.ndarray:
    """Rank (1 = most frequent) of each class in a long tail: a seeded permutation."""
    return np.random.default_rng([int(seed), 0x7A11]).permutation(n_classes) + 1


def _tail_rows(y: np.ndarray, a: float, ranks: np.ndarray, rng) -> np.ndarray:
    """Sorted rows of ``y`` kept for the long tail (a uniform random subset within each class)."""
    counts = np.bincount(y, minlength=ranks.shape[0])
    keep = _tail_keep(counts, a, ranks)
    rows = [rng.choice(np.flatnonzero(y == c), keep[c], replace=False) for c in range(ranks.shape[0]) if counts[c]]
    return np.sort(np.concatenate(rows))


def _multiplicity_stats(mult: np.ndarray) -> dict:
    """Multiplicity statistics, as :func:`~batchal.simulate.redundancy.make_redundant` records them."""
    vals, cnt = np.unique(mult, return_counts=True)
    return {
        "original_rows": int(mult.shape[0]),
        "pool_rows": int(mult.sum()),
        "mean_multiplicity": float(mult.mean()),
        "median_multiplicity": float(np.median(mult)),
        "max_multiplicity": int(mult.max()),
        "share_rows_single": float(mult[mult == 1].sum() / mult.sum()),
        "share_rows_in_groups_of_10_plus": float(mult[mult >= 10].sum() / mult.sum()),
        "multiplicity_counts": {int(k): int(v) for k, v in zip(vals, cnt)},
    }


def load_fmnist_web(size: int = 1_000_000, *, a: float = 1.5, augmented: float = 0.5, feature_size: int = 5000,
                    hidden: int = 256, coarse: bool = False, n_sources: int | None = None,
                    tail: float | None = None,
                    tail_seed: int | None = None, seed: int = 0, progress: bool = False,
                    block: int = 8192, test: str = "clean") -> Dataset:
    """A web-like pool of ``size`` rows from Fashion-MNIST: heavy-tailed copies, frozen features.

    The 60K training images are split (stratified, seeded) into a *feature part*
    of ``feature_size`` images and a *source part* (the rest). A small network
    (scikit-learn MLP, one hidden layer of ``hidden`` ReLU units) is trained once
    on the feature part only; every pool row is its hidden-layer embedding of
    an image, never seen by that network: the frozen-features setting with a
    linear head on top. Each source image is expanded into ``m ~ Zipf(a)``
    rows, the cap chosen so the pool has exactly ``size`` rows (re-uploads
    and crops). A source's first row is the image itself; each further copy is
    *near-exact* (a re-encode: pixel noise of sd 0.01, quantised to 1/255) or,
    with probability ``augmented``, *augmented* (shift up to 2 pixels, rotation
    up to 10 degrees, scale 0.9-1.1, pixel noise of sd 0.03). The test split is
    Fashion-MNIST's 10K test images through the same network: each image as
    it is (``test="clean"``), or each drawn as one pool row is (``test="views"``:
    the original, a near-exact or an augmented copy, with the pool's shares of
    the three kinds), so that the test split and the pool's rows come from one
    process, as a test set sampled from the same web source would.

    A linear head's curve on frozen features flattens once its ``hidden x 10``
    weights are well estimated, so the embedding is wide: logistic regression on
    the (uncopied) source images rose by 0.6 points from 10K to 55K labels with
    64 units, and from 6K to 55K by 1.7 with 128 and 2.8 with 256 (a coarse
    4-class feature task: 3.0, from a lower start). On the default 1M pool it
    reaches 0.836 at 10K random rows, 0.852 at 100K and 0.853 at 300K: a rise
    of under two points, the most a linear head on 10 classes showed here.

    Parameters
    ----------
    size : int
        Pool rows (exact).
    a : float
        Zipf exponent of the copies per source image (> 1; smaller = heavier tail).
    augmented : float
        Share of the copies that are augmented, in [0, 1]; the rest are near-exact.
    feature_size : int
        Images the feature network is trained on (removed from the sources).
    hidden : int
        Embedding dimension (hidden units of the feature network); the
        default 1M pool is 1 GB of float32.
    coarse : bool
        Train the feature network on four superclasses (:data:`FMNIST_COARSE`)
        instead of the ten classes: a weaker embedding for the ten.
    n_sources : int or None
        Use a stratified random subset of this many source images (fewer
        sources, more copies each); None: the whole source part.
    tail : float or None
        Long tail: keep source images per class in proportion to 1/rank^tail
        (ranks by a seeded permutation; the top class keeps all its sources),
        then expand the copies to ``size`` rows. The test split gets the same
        class proportions. None: balanced.
    tail_seed : int or None
        Seeds the class ranks and the kept sources of the tail (None: ``seed``).
    seed : int
    progress : bool
    block : int
        Rows generated and embedded at once (memory; part of the cache key).
    test : {"clean", "views"}
        The test images as they are, or each drawn as a pool row is (above). The
        pool's rows do not depend on it; the views are cached beside them.

    Returns
    -------
    Dataset
        ``fmnist-web`` (``fmnist-web-lt`` with ``tail``; a suffix ``-views`` with
        ``test="views"``): X float32 (size, hidden),
        memory-mapped; ``source`` the Fashion-MNIST training index of each row;
        ``redundancy`` the parameters, multiplicity statistics and the rows of
        each kind (original, near-exact, augmented).
    """
    size = check_count(size, "size", 1)
    a = check_number(a, "a", 1.0, open_low=True)
    augmented = check_number(augmented, "augmented", 0.0, 1.0)
    feature_size = check_count(feature_size, "feature_size", 20)
    if feature_size > 50_000:
        raise BatchalInputError(f"feature_size must be <= 50000 (the rest are the sources); got {feature_size}")
    hidden = check_count(hidden, "hidden", 1)
    if tail is not None:
        tail = check_number(tail, "tail", 0.0, open_low=True)
    seed = check_count(seed, "seed", 0)
    tail_seed = seed if tail_seed is None else check_count(tail_seed, "tail_seed", 0)
    if n_sources is not None:
        n_sources = check_count(n_sources, "n_sources", 10)
        if n_sources > 60_000 - feature_size:
            raise BatchalInputError(f"n_sources must be <= {60_000 - feature_size} (60K minus feature_size); "
                                    f"got {n_sources}")
    block = check_count(block, "block", 1)
    if test not in ("clean", "views"):
        raise BatchalInputError(f"test must be 'clean' or 'views'; got {test!r}")
    net_key = {"f": feature_size, "h": hidden, "c": int(bool(coarse)), "s": seed}
    params = {"n": size, "a": a, "aug": augmented, **net_key, "ns": "all" if n_sources is None else n_sources,
              "t": "none" if tail is None else tail,
              "ts": tail_seed, "b": block}
    path = cache_dir() / _key(WEB_KEY, params)
    name = "fmnist-web" if tail is None else "fmnist-web-lt"
    names = ("X", "y", "source", "X_test", "y_test")
    got = _cached(path, names)
    if got is None or not (path / "meta.json").exists():
        got = _make_fmnist_web(path, _fashion_mnist(), size, a, augmented, feature_size, hidden, bool(coarse),
                               n_sources, tail, tail_seed, seed, progress, block, net_key, params)
    meta = json.loads((path / "meta.json").read_text())
    X_test = got["X_test"]
    if test == "views":
        name += "-views"
        meta = {**meta, "test": "Each test image is drawn as a pool row is: as it is, a near-exact or an "
                                "augmented copy, in the pool's shares of the three kinds."}
        X_test = _web_test_views(path, meta, feature_size, hidden, bool(coarse), n_sources, tail, tail_seed, seed,
                                 net_key)
    return Dataset(name, got["X"], got["y"], X_test, got["y_test"], source=got["source"], redundancy=meta)


def _web_split(fm, feature_size, n_sources, tail, tail_seed, seed):
    """The feature part, the source images and the kept test images of a web-like pool (seeded)."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(fm["y"])
    feat, src = train_test_split(np.arange(y.shape[0]), train_size=feature_size, stratify=y, random_state=seed)
    feat, src = np.sort(feat), np.sort(src)
    if n_sources is not None and n_sources < src.shape[0]:
        src = np.sort(train_test_split(src, train_size=n_sources, stratify=y[src], random_state=seed)[0])
    keep_t = np.arange(np.asarray(fm["y_test"]).shape[0])
    if tail is not None:  # the tail is drawn over the source images, before any copy is made
        ranks = _class_ranks(10, tail_seed)
        trng = np.random.default_rng([tail_seed, 0x7A11, 1])
        src = src[_tail_rows(y[src], tail, ranks, trng)]
        keep_t = _tail_rows(np.asarray(fm["y_test"]), tail, ranks, trng)
    return feat, src, keep_t


def _web_views(imgs: np.ndarray, kind: np.ndarray, aug: np.ndarray, rng) -> np.ndarray:
    """Copies of the (b, 784) pixel rows ``imgs`` by ``kind`` (0 as is, 1 near-exact, 2 augmented by ``aug``)."""
    imgs = imgs.copy()
    near = np.flatnonzero(kind == 1)
    if near.size:
        noisy = imgs[near] + rng.normal(0, 0.01, (near.size, imgs.shape[1])).astype(np.float32)
        imgs[near] = np.clip(np.round(noisy * 255) / 255, 0, 1)
    ag = np.flatnonzero(kind == 2)
    if ag.size:
        warped = _augment(imgs[ag].reshape(-1, 28, 28), aug[ag]).reshape(ag.size, -1)
        warped += rng.normal(0, 0.03, warped.shape).astype(np.float32)
        imgs[ag] = np.clip(warped, 0, 1)
    return imgs


def _augment_params(n: int, rng) -> np.ndarray:
    """Per row (dy, dx, angle, scale): shifts up to 2 pixels, rotations up to 10 degrees, scale 0.9-1.1."""
    return np.column_stack([rng.uniform(-2, 2, n), rng.uniform(-2, 2, n), rng.uniform(-10, 10, n),
                            rng.uniform(0.9, 1.1, n)])


def _web_test_views(path, meta, feature_size, hidden, coarse, n_sources, tail, tail_seed, seed, net_key):
    """The test split drawn as pool rows are (kinds in the pool's shares), cached beside the pool."""
    f = path / "X_test_views.npy"
    if not f.exists():
        fm = _fashion_mnist()
        _, _, keep_t = _web_split(fm, feature_size, n_sources, tail, tail_seed, seed)
        layers = _feature_net(None, None, None, seed, 0, cache_dir() / _key("fmnist-web-net-v1", net_key))
        shares = np.array([meta["rows_original"], meta["rows_near_exact"], meta["rows_augmented"]], float)
        rng = np.random.default_rng([seed, 0x7E57])
        kind = rng.choice(3, size=keep_t.shape[0], p=shares / shares.sum()).astype(np.int8)
        imgs = _web_views(_pixels(fm["X_test"][keep_t]), kind, _augment_params(keep_t.shape[0], rng), rng)
        _save_npy(path / "kind_test_views.npy", kind)
        _save_npy(f, _embed(layers, imgs))
    return np.load(f, mmap_mode="r")


def _make_fmnist_web(path, fm, size, a, augmented, feature_size, hidden, coarse, n_sources, tail, tail_seed, seed,
                     progress, block, net_key, params) -> dict:
    X, y = fm["X"], np.asarray(fm["y"])
    feat, src, keep_t = _web_split(fm, feature_size, n_sources, tail, tail_seed, seed)
    target = np.asarray(FMNIST_COARSE)[y[feat]] if coarse else y[feat]
    net_path = cache_dir() / _key("fmnist-web-net-v1", net_key)
    layers = _feature_net(_pixels(X[feat]), target, (hidden,), seed, 200, net_path)
    rng = np.random.default_rng([seed, 0xFEB])
    Xt, yt = _pixels(fm["X_test"])[keep_t], np.asarray(fm["y_test"])[keep_t]
    if size < src.shape[0]:  # fewer rows than sources: a random subset of the sources, once each
        src = np.sort(rng.choice(src, size, replace=False))
    mult = _multiplicities(src.shape[0], size, a, rng)
    source = np.repeat(src, mult)
    first = np.ones(size, dtype=bool)
    first[1:] = source[1:] != source[:-1]
    kind = np.where(first, 0, 1 + (rng.random(size) < augmented)).astype(np.int8)  # 0 original, 1 near, 2 aug
    perm = rng.permutation(size)
    source, kind = source[perm], kind[perm]
    aug = _augment_params(size, rng)
    out = np.empty((size, hidden), dtype=np.float32)
    n_blocks = -(-size // block)
    with _progress(size, f"{'fmnist-web' if tail is None else 'fmnist-web-lt'}: copies", enabled=progress,
                   unit="row") as bar:
        for k in range(n_blocks):
            lo, hi = k * block, min(size, (k + 1) * block)
            brng = np.random.default_rng([seed, 0xB10C, k])  # per block: the result does not depend on the order
            out[lo:hi] = _embed(layers, _web_views(_pixels(X[source[lo:hi]]), kind[lo:hi], aug[lo:hi], brng))
            bar.update(hi - lo)
    meta = {"spec": f"web:a={a:g},augmented={augmented:g}" + ("" if tail is None else f",tail={tail:g}"),
            "params": params, **_multiplicity_stats(mult),
            "rows_original": int((kind == 0).sum()), "rows_near_exact": int((kind == 1).sum()),
            "rows_augmented": int((kind == 2).sum())}
    return _save(path, {"X": out, "y": y[source], "source": source, "kind": kind,
                        "X_test": _embed(layers, Xt), "y_test": yt}, meta)


# ----------------------------------------------------------------------------- many classes: MNIST-1D-style signals

def _manyclass_templates(n_classes: int, template_seed: int) -> np.ndarray:
    """``n_classes`` random smooth 12-point templates, whitened as MNIST-1D's digits (start at 0, scale 1/6)."""
    rng = np.random.default_rng([template_seed, 0x7E3])
    x = np.cumsum(rng.normal(size=(n_classes, 12)), axis=1)
    x = (x + np.roll(x, 1, axis=1) + np.roll(x, -1, axis=1)) / 3  # smooth, as hand-drawn strokes
    x -= x.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    x -= x[:, :1]
    return x / 6.0


def _manyclass_rows(templates: np.ndarray, y: np.ndarray, rng, length: int, shift: int) -> np.ndarray:
    """MNIST-1D's transform (pad, dilate, scale, translate, correlated + iid noise, shear, subsample), vectorised."""
    from scipy.ndimage import gaussian_filter1d

    n, t = y.shape[0], templates.shape[1]
    wide = t + 60  # template_len + the largest padding, as mnist1d
    padded = np.zeros((n, t + 61), dtype=np.float64)
    padded[:, :t] = templates[y] + 1e-8
    p = rng.integers(36, 61, n)  # padding
    pos = np.arange(wide)[None, :] * ((t + p - 1) / (wide - 1))[:, None]  # dilate the padded signal to `wide`
    i0 = np.floor(pos).astype(np.int64)
    f = pos - i0
    rows = np.arange(n)[:, None]
    x = padded[rows, i0] * (1 - f) + padded[rows, i0 + 1] * f
    x *= 1 + 0.4 * (rng.random(n) - 0.5)[:, None]  # scale
    k = rng.integers(0, shift, n)  # translate (circularly)
    x = x[rows, (np.arange(wide)[None, :] - k[:, None]) % wide]
    corr = gaussian_filter1d(0.25 * rng.standard_normal((n, wide)), 2, axis=1)
    x = np.where(x != 0, x, corr) + 0.02 * rng.standard_normal((n, wide))
    x -= (0.75 * (rng.random(n) - 0.5))[:, None] * np.linspace(-0.5, 0.5, wide)[None, :]  # shear
    pos = np.linspace(0, wide - 1, length)  # subsample
    i0 = np.minimum(np.floor(pos).astype(np.int64), wide - 2)
    f = pos - i0
    return (x[:, i0] * (1 - f) + x[:, i0 + 1] * f).astype(np.float32)


def load_manyclass(size: int = 1_000_000, *, n_classes: int = 32, length: int = 40, shift: int = 8,
                   n_test: int = 20_000, seed: int = 0, template_seed: int = 0, progress: bool = False) -> Dataset:
    """A many-class pool: MNIST-1D-style 1-D signals of ``n_classes`` random templates.

    Each class is a random smooth template put through MNIST-1D's transforms
    (Greydanus 2020: random padding and dilation, scale, circular translation,
    correlated background noise, iid noise, shear, subsampling to ``length``),
    re-implemented vectorised (about 1M rows a minute instead of 17). The
    translation (up to ``shift`` of 72 positions; MNIST-1D's 48 leaves a linear
    model near chance) makes the classes far from linearly separable: the
    curve of a linear model and of an MLP still rises at 10% of a 1M pool.
    Classes are balanced over pool and test together (to within one row);
    features standardised with pool statistics. On the default 1M pool
    logistic regression reaches 0.242 at 10K random rows, 0.257 at 100K and
    0.264 at 300K (chance: 0.031); a 256-256 ReLU MLP (Adam, 3M examples seen,
    best of 20 validation checks) 0.582, 0.876 and 0.898.

    Parameters
    ----------
    size, n_test : int
        Pool and test rows (exact).
    n_classes : int
        Number of classes (templates), >= 2.
    length : int
        Signal length (features), >= 8.
    shift : int
        Largest circular translation, in [1, 72].
    seed : int
        Draws the rows.
    template_seed : int
        Draws the class templates (the task); kept apart from ``seed`` so that
        seeds replay the same task.
    progress : bool

    Returns
    -------
    Dataset
        ``manyclass``, memory-mapped from the cache.
    """
    size = check_count(size, "size", 1)
    n_test = check_count(n_test, "n_test", 1)
    n_classes = check_count(n_classes, "n_classes", 2)
    length = check_count(length, "length", 8)
    shift = check_count(shift, "shift", 1)
    if shift > 72:
        raise BatchalInputError(f"shift must be <= 72 (the dilated signal's length); got {shift}")
    seed = check_count(seed, "seed", 0)
    template_seed = check_count(template_seed, "template_seed", 0)
    path = cache_dir() / _key("manyclass-v1", {"n": size, "t": n_test, "c": n_classes, "l": length, "sh": shift,
                                               "s": seed, "ts": template_seed})
    names = ("X", "y", "X_test", "y_test")
    got = _cached(path, names)
    if got is None:
        templates = _manyclass_templates(n_classes, template_seed)
        total = size + n_test
        rng = np.random.default_rng([seed, 0x3C])
        y = rng.permutation(np.arange(total) % n_classes).astype(np.int64)
        X = np.empty((total, length), dtype=np.float32)
        step = 100_000
        with _progress(total, "manyclass rows", enabled=progress, unit="row") as bar:
            for k, lo in enumerate(range(0, total, step)):
                hi = min(total, lo + step)
                X[lo:hi] = _manyclass_rows(templates, y[lo:hi], np.random.default_rng([seed, 0x3C, k]), length,
                                           shift)
                bar.update(hi - lo)
        mu = X[:size].mean(0, dtype=np.float64)
        sd = X[:size].std(0, dtype=np.float64) + 1e-6
        X -= mu.astype(np.float32)
        X /= sd.astype(np.float32)
        got = _save(path, {"X": X[:size], "y": y[:size], "X_test": X[size:], "y_test": y[size:]})
    return Dataset("manyclass", got["X"], got["y"], got["X_test"], got["y_test"])


# ----------------------------------------------------------------------------- multi-label, large vocabulary

def _multilabel_rows(n: int, concepts: np.ndarray, p: np.ndarray, max_labels: int, noise: float,
                     label_noise: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """``n`` items: 1..max_labels concepts each (P(k) ~ 1/k, concepts ~ p), features = their sum + noise."""
    n_classes, d = concepts.shape
    w = 1.0 / np.arange(1, max_labels + 1)
    k = rng.choice(np.arange(1, max_labels + 1), n, p=w / w.sum())
    draws = rng.choice(n_classes, (n, max_labels), p=p)  # with replacement: a repeat is one label
    used = np.arange(max_labels)[None, :] < k[:, None]
    Y = np.zeros((n, n_classes), dtype=np.int8)
    r, j = np.nonzero(used)
    Y[r, draws[r, j]] = 1
    from threadpoolctl import threadpool_limits

    # OpenBLAS's float32 product rounds by how it splits the work between threads (0.19% of the entries
    # differed by one unit in the last place between one and two threads), so the pool would depend on
    # the thread count of the machine that made it; pinned to two, the split every recorded run's pool
    # was made with (the fewer threads a machine has, the more they share a core; the result stays)
    with threadpool_limits(2):
        X = Y.astype(np.float32) @ concepts
    X = (X + noise * rng.standard_normal((n, d))).astype(np.float32)
    if label_noise > 0:  # tags as annotators give them: some missed, some spurious
        rr, cc = np.nonzero(Y)
        miss = rng.random(rr.shape[0]) < label_noise
        Y[rr[miss], cc[miss]] = 0
        extra = np.flatnonzero(rng.random(n) < label_noise)
        Y[extra, rng.choice(n_classes, extra.shape[0], p=p)] = 1
    return X, Y


def load_multilabel_vocab(size: int = 200_000, *, n_classes: int = 1000, a: float = 1.0, dim: int = 64,
                          max_labels: int = 5, noise: float = 0.25, label_noise: float = 0.05,
                          n_test: int = 20_000, seed: int = 0, progress: bool = False) -> Dataset:
    """A multi-label pool with a large, long-tailed vocabulary (latent concepts, as web image tags).

    Each class is a latent concept, a random unit vector in ``dim`` dimensions;
    an item holds 1 to ``max_labels`` concepts (P(k) proportional to 1/k), each
    drawn with probability proportional to 1/rank^a (ranks by a seeded
    permutation of the classes); its features are the sum of its concept
    vectors plus Gaussian noise. With probability ``label_noise`` each true
    label is missing from ``y`` (at the defaults about 2% of the items are left
    with no label) and an item gets one spurious label. Every class
    appears in the pool at least once (a class the draws missed is given to a
    random item, features included).

    The default size is 200K, not 1M: ``y`` is a dense (size, n_classes) int8
    matrix (200 MB at the defaults) and the simulator's multi-label model fits
    one binary model per class.

    Parameters
    ----------
    size, n_test : int
        Pool and test rows (exact).
    n_classes : int
        Vocabulary size, >= 2.
    a : float
        Zipf exponent of the label frequencies (>= 0; 0 = uniform).
    dim : int
        Feature dimension.
    max_labels : int
        Most concepts per item.
    noise : float
        Feature noise standard deviation per dimension (a concept vector has
        norm 1). At 0.25 a linear head's mAP still rises from 10% of the
        default pool to all of it (ridge: 0.07 at 1%, 0.27 at 10%, 0.42 whole).
    label_noise : float
        In [0, 1): the rate of missed labels and of items with a spurious one.
    seed : int
    progress : bool

    Returns
    -------
    Dataset
        ``multilabel-vocab``: X float32 (size, dim), y int8 (size, n_classes),
        memory-mapped.
    """
    size = check_count(size, "size", 1)
    n_test = check_count(n_test, "n_test", 1)
    n_classes = check_count(n_classes, "n_classes", 2)
    if n_classes > size:
        raise BatchalInputError(f"n_classes ({n_classes}) must be <= size ({size}): every class needs a pool row")
    a = check_number(a, "a", 0.0)
    dim = check_count(dim, "dim", 1)
    max_labels = check_count(max_labels, "max_labels", 1)
    noise = check_number(noise, "noise", 0.0)
    label_noise = check_number(label_noise, "label_noise", 0.0, 1.0)
    if label_noise >= 1:
        raise BatchalInputError(f"label_noise must be < 1; got {label_noise}")
    seed = check_count(seed, "seed", 0)
    params = {"n": size, "t": n_test, "c": n_classes, "a": a, "d": dim, "k": max_labels, "noise": noise,
              "ln": label_noise, "s": seed}
    path = cache_dir() / _key("multilabel-vocab-v1", params)
    names = ("X", "y", "X_test", "y_test")
    got = _cached(path, names)
    if got is None:
        rng = np.random.default_rng([seed, 0x3A6])
        concepts = rng.standard_normal((n_classes, dim)).astype(np.float32)
        concepts /= np.linalg.norm(concepts, axis=1, keepdims=True)
        ranks = rng.permutation(n_classes) + 1
        p = 1.0 / ranks ** a
        p /= p.sum()
        total = size + n_test
        X = np.empty((total, dim), dtype=np.float32)
        Y = np.empty((total, n_classes), dtype=np.int8)
        step = 50_000
        with _progress(total, "multilabel-vocab rows", enabled=progress, unit="row") as bar:
            for k, lo in enumerate(range(0, total, step)):
                hi = min(total, lo + step)
                X[lo:hi], Y[lo:hi] = _multilabel_rows(hi - lo, concepts, p, max_labels, noise, label_noise,
                                                      np.random.default_rng([seed, 0x3A6, k]))
                bar.update(hi - lo)
        absent = np.flatnonzero(Y[:size].sum(0, dtype=np.int64) == 0)
        if absent.size:  # rare classes the draws missed: each joins a distinct random pool item
            rows = rng.choice(size, absent.size, replace=False)
            Y[rows, absent] = 1
            X[rows] += concepts[absent]
        got = _save(path, {"X": X[:size], "y": Y[:size], "X_test": X[size:], "y_test": Y[size:]})
    return Dataset("multilabel-vocab", got["X"], got["y"], got["X_test"], got["y_test"])


# ----------------------------------------------------------------------------- long tails of any pool

def long_tail(dataset: Dataset, a: float = 1.0, seed: int = 0) -> Dataset:
    """A long-tailed version of ``dataset``: class frequencies proportional to 1/rank^a.

    Class ranks are a seeded permutation; the rank-1 class keeps all its rows,
    the class of rank r about 1/r^a of that many (at least one). Rows kept are
    a uniform random subset within each class. Copies follow their source: in a
    pool with ``source`` whole groups of copies are kept or dropped (the counts
    per class are then counts of sources); the web pool
    (:func:`load_fmnist_web`) is regenerated with its source images tailed and
    expanded back to its full size. The test split gets the same class
    proportions (its rank-1 class whole), so its accuracy weighs classes as the
    pool does; report balanced accuracy and the rarest classes' recall beside it.

    Parameters
    ----------
    dataset : Dataset
        A multi-class dataset.
    a : float
        Tail exponent, > 0 (1: Zipf).
    seed : int
        Seeds the ranks and the rows kept.

    Returns
    -------
    Dataset
        Named ``<name>-lt``; ``redundancy`` (when present) gains ``long_tail``.
    """
    import dataclasses

    a = check_number(a, "a", 0.0, open_low=True)
    seed = check_count(seed, "seed", 0)
    if dataset.multilabel:
        raise BatchalInputError("dataset: long_tail needs a multi-class dataset (1-d y); "
                                "load_multilabel_vocab has long-tailed labels already")
    red = dataset.redundancy or {}
    if str(red.get("spec", "")).startswith("web:") and "params" in red:
        q = red["params"]
        return load_fmnist_web(q["n"], a=q["a"], augmented=q["aug"], feature_size=q["f"], hidden=q["h"],
                               coarse=bool(q["c"]), n_sources=None if q["ns"] == "all" else q["ns"],
                               tail=a, tail_seed=seed, seed=q["s"], block=q["b"],
                               test="views" if "test" in red else "clean")
    y = np.asarray(dataset.y)
    ranks = _class_ranks(dataset.n_classes, seed)
    rng = np.random.default_rng([seed, 0x7A11, 2])
    if dataset.source is not None:
        src, first = np.unique(dataset.source, return_index=True)
        kept = src[_tail_rows(y[first], a, ranks, rng)]
        rows = np.flatnonzero(np.isin(dataset.source, kept))
    else:
        rows = _tail_rows(y, a, ranks, rng)
    test = _tail_rows(np.asarray(dataset.y_test), a, ranks, rng)
    info = {"a": a, "seed": seed, "class_ranks": ranks.tolist(),
            "pool_class_counts": np.bincount(y[rows], minlength=ranks.shape[0]).tolist()}
    return dataclasses.replace(
        dataset, name=f"{dataset.name}-lt", X=np.asarray(dataset.X[rows]), y=y[rows],
        X_test=np.asarray(dataset.X_test[test]), y_test=np.asarray(dataset.y_test)[test],
        source=None if dataset.source is None else np.asarray(dataset.source)[rows],
        redundancy=None if dataset.redundancy is None else {**dataset.redundancy, "long_tail": info})


#: names :func:`~batchal.simulate.catalog.load_dataset` accepts for these pools, with their default sizes
POOLS = {
    "mnist1d-lt": 1_000_000,  # the balanced MNIST-1D pool before the tail (a=1): 292,897 rows kept
    "fmnist-web": 1_000_000,
    "fmnist-web-lt": 1_000_000,
    "fmnist-web-views": 1_000_000,  # the same pools, the test images drawn as pool rows are
    "fmnist-web-lt-views": 1_000_000,
    "manyclass": 1_000_000,
    "multilabel-vocab": 200_000,
}


def load_pool(name: str, size: int | None = None, seed: int = 0, progress: bool = False) -> Dataset:
    """Load one of :data:`POOLS` by name; ``size`` None takes its default size."""
    n = POOLS[name] if size is None else size
    if name == "mnist1d-lt":
        if n < 20:
            raise BatchalInputError(f"--size {n}: too small a pool for mnist1d-lt")
        return long_tail(load_mnist1d(n=n, seed=seed, progress=progress), 1.0, seed)
    if name.startswith("fmnist-web"):
        return load_fmnist_web(n, tail=1.0 if "-lt" in name else None, seed=seed, progress=progress,
                               test="views" if name.endswith("-views") else "clean")
    if name == "manyclass":
        return load_manyclass(n, seed=seed, progress=progress)
    return load_multilabel_vocab(n, seed=seed, progress=progress)
