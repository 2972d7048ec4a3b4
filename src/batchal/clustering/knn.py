"""k-nearest-neighbour graph of the embeddings with faiss-cpu.

Two routes:

* ``flat``: exact brute force (BLAS) in query chunks, for small pools.
* ``ivf``: an inverted-file partition. Rows are assigned to ``nlist`` k-means
  cells (about ``2 sqrt(n)``) and stored *sorted by cell*; all queries of one
  cell are searched together against the rows of the ``nprobe`` cells nearest
  to that cell's centroid. Searching a whole cell at once turns the scan into
  one dense matrix product per cell (faiss' BLAS path), about 3x faster on this
  hardware than per-query IVF-Flat search at the same recall, and the cell
  order doubles as a locality-preserving renumbering for the HAC that follows.
  Probing by the cell's centroid rather than by each query loses a little
  recall for rows near a cell border; ``tests/test_knn.py`` asserts the recall
  against brute force.

The user's array is never modified and may be a memory map: it is read in row
chunks (normalised per chunk for cosine) and copied once, as float32, into the
cell order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .._validation import BatchalInputError, iter_chunks

#: Below this many rows the exact (flat) search is used by ``method="auto"``.
EXACT_MAX_ROWS = 20_000
#: Default number of cells probed per query cell.
DEFAULT_NPROBE = 12
#: Rows read per chunk from the (possibly memory-mapped) input.
CHUNK_ROWS = 1 << 16
METRICS = ("cosine", "euclidean", "sqeuclidean")


@dataclass
class KNNResult:
    """Directed kNN lists.

    Attributes
    ----------
    indices : int32 (n, k)
        Neighbour row ids (self excluded), nearest first; -1 pads rows that
        found fewer than ``k`` neighbours.
    distances : float32 (n, k)
        ``1 - cos`` for cosine, squared L2 for sqeuclidean, L2 for euclidean;
        +inf where ``indices`` is -1.
    method : str
        ``"flat"`` or ``"ivf"``.
    info : dict
        nlist, nprobe, timings.
    """

    indices: np.ndarray
    distances: np.ndarray
    method: str
    info: dict = field(default_factory=dict)


def _check(X, k: int, metric: str) -> int:
    if metric not in METRICS:
        raise BatchalInputError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise BatchalInputError(f"embeddings must be a non-empty 2-d array; got shape {X.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BatchalInputError(f"knn must be a positive integer; got {k!r}")
    n = X.shape[0]
    if n < 2:
        raise BatchalInputError("a kNN graph needs at least 2 rows")
    return min(int(k), n - 1)


def _prep_chunk(block: np.ndarray, metric: str, offset: int) -> np.ndarray:
    """float32 copy of a chunk of rows, unit-normalised for cosine."""
    b = np.array(block, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        norms = np.linalg.norm(b, axis=1)
        if (norms == 0).any():
            i = int(np.flatnonzero(norms == 0)[0]) + offset
            raise BatchalInputError(f"embeddings row {i} is all zeros; cosine distance is undefined")
        b /= norms[:, None]
    return b


def _faiss_metric(metric: str):
    import faiss

    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def _to_distance(D: np.ndarray, metric: str) -> np.ndarray:
    """faiss scores -> our distances, in place (float32)."""
    if metric == "cosine":
        np.subtract(1.0, D, out=D)
        np.maximum(D, 0.0, out=D)
    elif metric == "euclidean":
        np.maximum(D, 0.0, out=D)
        np.sqrt(D, out=D)
    else:
        np.maximum(D, 0.0, out=D)
    return D


def _drop_self(I: np.ndarray, D: np.ndarray, qids: np.ndarray, k: int):
    """Remove each query's own id from its k+1 results (or the last one if absent)."""
    m = I.shape[0]
    keep = I != qids[:, None]
    no_self = keep.all(axis=1)
    keep[no_self, -1] = False
    # Rows with the own id listed twice cannot happen; guard shape anyway.
    return I[keep].reshape(m, k), D[keep].reshape(m, k)


def _progress(total: int, desc: str, enabled: bool):
    from .._progress import progress  # a bar on a terminal, a line per 10% in a log

    return progress(total, desc, enabled=enabled, unit="rows")


def _knn_flat(Xp: np.ndarray, k: int, metric: str, progress: bool):
    import faiss

    n = Xp.shape[0]
    I = np.empty((n, k), dtype=np.int32)
    D = np.empty((n, k), dtype=np.float32)
    fm = _faiss_metric(metric)
    step = 4096
    with _progress(n, "kNN (exact)", progress) as bar:
        for a, b in iter_chunks(n, step):
            d_, i_ = faiss.knn(Xp[a:b], Xp, k + 1, metric=fm)
            i_, d_ = _drop_self(i_, d_, np.arange(a, b), k)
            I[a:b] = i_
            D[a:b] = d_
            bar.update(b - a)
    return I, D


def _train_cells(X, metric: str, nlist: int, rng: np.random.Generator, progress: bool):
    """k-means centroids (spherical for cosine) on a row sample."""
    import faiss

    n, d = X.shape
    n_train = min(n, max(nlist * 32, 10_000))
    rows = np.sort(rng.choice(n, size=n_train, replace=False))
    sample = _prep_chunk(np.asarray(X[rows]), metric, 0)
    km = faiss.Kmeans(
        d, nlist, niter=12, seed=int(rng.integers(2**31 - 1)), spherical=(metric == "cosine"),
        max_points_per_centroid=n_train, min_points_per_centroid=1, verbose=False,
    )
    km.train(sample)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _assign(X, C: np.ndarray, metric: str, chunk_rows: int, progress: bool) -> np.ndarray:
    import faiss

    n = X.shape[0]
    cell = np.empty(n, dtype=np.int32)
    fm = _faiss_metric(metric)
    with _progress(n, "kNN: assign cells", progress) as bar:
        for a, b in iter_chunks(n, chunk_rows):
            blk = _prep_chunk(np.asarray(X[a:b]), metric, a)
            _, i_ = faiss.knn(blk, C, 1, metric=fm)
            cell[a:b] = i_[:, 0]
            bar.update(b - a)
    return cell


def prepare_rows(X, metric: str, *, method: str = "auto", nlist: int | None = None,
                 exact_max_rows: int = EXACT_MAX_ROWS, chunk_rows: int = CHUNK_ROWS,
                 random_state=0, progress: bool = False):
    """Copy ``X`` to float32 (normalised for cosine), sorted by coarse cell when ``ivf``.

    Returns ``(Xp, order, cell_ptr, centroids, method)`` with ``Xp[i] = X[order[i]]``
    (normalised); ``cell_ptr`` delimits the cells in ``Xp`` (None for flat).
    """
    n, d = X.shape
    if method == "auto":
        method = "flat" if n <= exact_max_rows else "ivf"
    if method not in ("flat", "ivf"):
        raise BatchalInputError(f"unknown kNN method {method!r}; use auto, flat or ivf")
    if method == "flat":
        Xp = np.empty((n, d), dtype=np.float32)
        for a, b in iter_chunks(n, chunk_rows):
            Xp[a:b] = _prep_chunk(np.asarray(X[a:b]), metric, a)
        return Xp, np.arange(n, dtype=np.int64), None, None, "flat"
    rng = np.random.default_rng(random_state)
    if nlist is None:
        nlist = int(round(2 * math.sqrt(n)))
    nlist = max(1, min(int(nlist), n // 4 if n >= 8 else 1))
    C = _train_cells(X, metric, nlist, rng, progress)
    cell = _assign(X, C, metric, chunk_rows, progress)
    counts = np.bincount(cell, minlength=nlist)
    cell_ptr = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(counts, out=cell_ptr[1:])
    order = np.argsort(cell, kind="stable").astype(np.int64)
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n, dtype=np.int64)
    del cell
    Xp = np.empty((n, d), dtype=np.float32)
    for a, b in iter_chunks(n, chunk_rows):
        Xp[pos[a:b]] = _prep_chunk(np.asarray(X[a:b]), metric, a)
    return Xp, order, cell_ptr, C, "ivf"


def _knn_cells(Xp, cell_ptr, C, k: int, metric: str, nprobe: int, progress: bool):
    """Blocked IVF search: each cell's rows against its ``nprobe`` nearest cells."""
    import faiss

    n = Xp.shape[0]
    nlist = cell_ptr.shape[0] - 1
    nprobe = max(1, min(int(nprobe), nlist))
    fm = _faiss_metric(metric)
    _, probe = faiss.knn(C, C, nprobe, metric=fm)
    I = np.full((n, k), -1, dtype=np.int32)
    D = np.full((n, k), np.inf, dtype=np.float32)
    with _progress(n, "kNN (IVF)", progress) as bar:
        for c in range(nlist):
            a, b = int(cell_ptr[c]), int(cell_ptr[c + 1])
            if b == a:
                continue
            cells = probe[c]
            if c not in cells:  # a cell always searches itself
                cells = np.concatenate([[c], cells[:-1]])
            cand = np.concatenate([np.arange(cell_ptr[j], cell_ptr[j + 1]) for j in cells if j >= 0])
            kk = min(k + 1, cand.shape[0])
            d_, i_ = faiss.knn(Xp[a:b], Xp[cand], kk, metric=fm)
            valid = i_ >= 0
            gi = np.where(valid, cand[np.maximum(i_, 0)], -1)
            if kk == k + 1:
                gi, d_ = _drop_self(gi, d_, np.arange(a, b), k)
            else:  # fewer candidates than k + 1: drop self, pad
                keep = gi != np.arange(a, b)[:, None]
                for r in range(b - a):
                    g = gi[r][keep[r]]
                    dd = d_[r][keep[r]]
                    m = min(k, g.shape[0])
                    I[a + r, :m] = g[:m]
                    D[a + r, :m] = dd[:m]
                bar.update(b - a)
                continue
            I[a:b] = gi
            D[a:b] = d_
            bar.update(b - a)
    if metric == "cosine":
        D[I < 0] = -np.inf  # becomes +inf below via 1 - (-inf)
    return I, D


def knn_permuted(X, k: int = 50, *, metric: str = "cosine", method: str = "auto",
                 nprobe: int = DEFAULT_NPROBE, nlist: int | None = None,
                 exact_max_rows: int = EXACT_MAX_ROWS, chunk_rows: int = CHUNK_ROWS,
                 random_state=0, progress: bool = False):
    """kNN in the cell order (used by the graph HAC, which keeps that order for locality).

    Returns ``(Xp, order, I, D, method, info)``: rows ``Xp[i] = X[order[i]]``
    (float32, unit rows for cosine) and kNN ids ``I`` that index ``Xp``.
    """
    import time

    k = _check(X, k, metric)
    t0 = time.perf_counter()
    Xp, order, cell_ptr, C, method = prepare_rows(
        X, metric, method=method, nlist=nlist, exact_max_rows=exact_max_rows,
        chunk_rows=chunk_rows, random_state=random_state, progress=progress,
    )
    t1 = time.perf_counter()
    if method == "flat":
        I, D = _knn_flat(Xp, k, metric, progress)
        info = {"nlist": None, "nprobe": None}
    else:
        I, D = _knn_cells(Xp, cell_ptr, C, k, metric, nprobe, progress)
        info = {"nlist": int(cell_ptr.shape[0] - 1), "nprobe": int(min(nprobe, cell_ptr.shape[0] - 1))}
    _to_distance(D, metric)
    info.update({"k": k, "prepare_s": t1 - t0, "search_s": time.perf_counter() - t1})
    return Xp, order, I, D, method, info


def knn_graph(X, k: int = 50, *, metric: str = "cosine", method: str = "auto",
              nprobe: int = DEFAULT_NPROBE, nlist: int | None = None,
              exact_max_rows: int = EXACT_MAX_ROWS, chunk_rows: int = CHUNK_ROWS,
              random_state=0, progress: bool = False) -> KNNResult:
    """Directed k-nearest-neighbour lists of the rows of ``X`` (self excluded).

    Parameters
    ----------
    X : (n, d) array or memmap
        Not modified; read in chunks of ``chunk_rows``.
    k : int
        Neighbours per row (capped at ``n - 1``).
    metric : {"cosine", "euclidean", "sqeuclidean"}
    method : {"auto", "flat", "ivf"}
        ``auto``: exact below ``exact_max_rows`` rows, IVF above.
    nprobe, nlist : int
        IVF cells probed per query cell, and number of cells (default ``2 sqrt(n)``).
    progress : bool
        tqdm progress bars.

    Returns
    -------
    KNNResult with ids in the original row numbering. Symmetrise with :func:`symmetrize`.
    """
    Xp, order, I, D, method, info = knn_permuted(
        X, k, metric=metric, method=method, nprobe=nprobe, nlist=nlist,
        exact_max_rows=exact_max_rows, chunk_rows=chunk_rows, random_state=random_state,
        progress=progress,
    )
    del Xp
    n = order.shape[0]
    out_I = np.empty_like(I)
    out_D = np.empty_like(D)
    mapped = np.where(I >= 0, order[np.maximum(I, 0)], -1).astype(np.int32)
    out_I[order] = mapped
    out_D[order] = D
    return KNNResult(out_I, out_D, method, info)


def symmetrize(indices: np.ndarray, n: int | None = None):
    """Undirected adjacency (CSR) from directed kNN lists: ``u ~ v`` if either lists the other.

    Returns ``(indptr int64 (n+1,), nbrs int32)``; each row sorted, no duplicates, no self.
    """
    from ._graph_kernels import symmetrize_knn

    I = np.ascontiguousarray(indices, dtype=np.int32)
    n = I.shape[0] if n is None else int(n)
    indptr, nbrs, _ = symmetrize_knn(I, n, 1.0)
    return indptr, nbrs[: indptr[-1]].copy()


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours found by the approximate lists (row-wise sets)."""
    n, k = exact.shape
    hit = 0
    for i in range(n):
        hit += np.intersect1d(approx[i], exact[i][exact[i] >= 0], assume_unique=False).shape[0]
    return hit / float((exact >= 0).sum())
