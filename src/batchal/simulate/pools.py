"""Generated pools in the paper's regime: 1M+ rows, long tails, many classes, large vocabularies.

Every pool here is generated locally, deterministically under ``seed``, and
cached under :func:`~batchal.simulate.datasets.cache_dir` in a directory whose
name holds every generation parameter. Arrays are ``.npy`` files written to a
temporary directory and moved into place with one ``os.replace`` (a reader
never sees half a pool), and loaded memory-mapped (``mmap_mode="r"``): a
1M x 64 float32 pool costs page cache, not process memory.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from .._progress import progress as _progress
from .._validation import BatchalInputError
from .datasets import Dataset, cache_dir

__all__ = ["load_mnist1d_chunked", "MNIST1D_CHUNK"]

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


def _save(path: Path, arrays: dict) -> dict:
    """Write ``arrays`` as ``path/<name>.npy`` atomically and return them memory-mapped."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k, v in arrays.items():
        np.save(tmp / f"{k}.npy", np.ascontiguousarray(v))
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


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise BatchalInputError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _check_float(value, name: str, low: float, high: float = np.inf, *, open_low: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BatchalInputError(f"{name} must be a number; got {value!r}") from None
    ok = np.isfinite(v) and (v > low if open_low else v >= low) and v <= high
    if not ok:
        bound = f"> {low}" if open_low else f">= {low}"
        raise BatchalInputError(f"{name} must be {bound}" + (f" and <= {high}" if np.isfinite(high) else "")
                                + f"; got {value!r}")
    return v


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BatchalInputError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


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
    n = _check_int(n, "n", 1)
    n_test = _check_int(n_test, "n_test", 1)
    seed = _seed(seed)
    chunk = _check_int(chunk, "chunk", 10)
    workers = _check_int(workers, "workers", 1)
    path = cache_dir() / f"mnist1d_{n}_{n_test}_{seed}_c{chunk}"
    names = ("X", "y", "X_test", "y_test")
    got = _cached(path, names)
    if got is None:
        try:
            import mnist1d  # noqa: F401
        except ImportError as exc:
            raise BatchalInputError("the mnist1d dataset needs the mnist1d package: pip install 'batchal[mnist1d]'") from exc
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
