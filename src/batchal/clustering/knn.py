"""k-nearest-neighbour graph of the embeddings with faiss-cpu (k-means) and BLAS.

Two routes:

* ``flat``: exact brute force (BLAS) in query chunks, for small pools.
* ``ivf``: an inverted-file partition, searched in dense blocks.
  Rows are assigned *exactly* to the nearest of ``nlist`` k-means cells
  (``2 sqrt(n)``; one BLAS product of a block of rows against all centroids),
  and the same product gives each row its ``nprobe - 1`` next-nearest cells:
  its probes. Rows are stored sorted by cell. The search is batched by cell so
  that every distance is part of a dense matrix product: each cell against
  itself, then, per probe rank, the rows grouped by the cell they probe against
  that cell. Blocks are folded into per-row top-k lists by numba kernels
  (``_knn_kernels``): in a cell's own block each row starts at a lower bound of
  its k-th best; a probed cell's block goes straight into the rows' running
  lists, each row starting at its current k-th best (most rows gain nothing);
  both skip blocks of 16 columns whose maximum is below the row's threshold.
  Groups run in threads with single-threaded BLAS.
  ``nprobe="auto"`` (default) measures, in the same pass as the assignment, the
  exact k nearest neighbours of 500 random rows and so the recall@k that 1, 2,
  ... 16 probes give, and takes the fewest reaching 0.985 (:func:`choose_nprobe`); where none
  does, the exact search up to ``EXACT_FALLBACK_MAX_ROWS`` rows, else at most
  ``AUTO_FALLBACK_MAX_NPROBE`` probes. BENCHMARKS.md (*kNN: what was measured*, *Data
  families*) gives the recall/time trade-offs behind these choices;
  ``tests/test_knn.py`` asserts the recall against brute force. The cell order
  doubles as a locality-preserving renumbering for the HAC that follows.

The user's array is never modified and may be a memory map: it is read in row
chunks (normalised per chunk for cosine) and copied once, as float32, into the
cell order; a read-only map's pages are released after each chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .._validation import BatchalInputError, check_count, iter_chunks

#: Below this many rows the exact (flat) search is used by ``method="auto"``.
EXACT_MAX_ROWS = 20_000
#: Default number of IVF cells each row scans (its own nearest cells): "auto" measures it
#: during the cell assignment (:func:`choose_nprobe`): the fewest whose measured recall@k
#: reaches AUTO_TARGET_RECALL (the issue's 0.98, plus a margin for the sampling error).
DEFAULT_NPROBE = "auto"
AUTO_TARGET_RECALL = 0.985
AUTO_MAX_NPROBE = 16
#: When no nprobe up to AUTO_MAX_NPROBE reaches the target (heavily overlapping cells), stop
#: at the first probe that adds less than this much recall (each probe costs about 1/p of the search).
AUTO_MIN_GAIN = 0.02
#: Random rows whose exact k nearest neighbours are found during the cell assignment.
AUTO_QUERIES = 500
#: When no probe count up to AUTO_MAX_NPROBE reaches the target (the cells capture little of
#: the neighbourhoods: noise in high dimension, large clusters of full-rank noise, or cells
#: much coarser than the clusters), at most this many probes: each further probe costs as much
#: as the first ones and leaves the lists far from exact (1M x 128, 20 overlapping components:
#: 16 probes, chosen by the gain rule alone, took 109 s of search for recall 0.55; 4 give 0.21
#: at a quarter of that). The benchmark's 10M x 64 curve stops at 4 by the gain rule too.
AUTO_FALLBACK_MAX_NPROBE = 4
#: ... unless the exact search is affordable: up to this many rows it replaces the IVF search
#: (its cost grows as n^2: 50,000 x 128 is 3.2e11 multiply-adds, seconds on 2 cores).
EXACT_FALLBACK_MAX_ROWS = 50_000
#: Queries per product when folding rows into their top-k (fixed: the bits must not depend on threads).
QUERY_GROUP = 256
#: IVF cells per sqrt(n) rows.
NLIST_PER_SQRT_N = 2.0
#: Candidate buffer per query in the search, in multiples of k.
BUFFER_PER_K = 4
#: k-means training rows per cell, and iterations.
TRAIN_PER_CELL = 32
KMEANS_ITERS = 12
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
    check_count(k, "knn", 1)
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


def _out_indices(out, n: int, k: int) -> np.ndarray:
    if out is None:
        return np.empty((n, k), dtype=np.int32)
    if out.dtype != np.int32 or out.ndim != 1 or out.shape[0] < n * k:
        raise ValueError("out_indices must be a 1-d int32 buffer of at least n * k entries")
    return out[: n * k].reshape(n, k)


def _knn_flat(Xp: np.ndarray, k: int, metric: str, progress: bool, out=None):
    import faiss

    n = Xp.shape[0]
    I = _out_indices(out, n, k)
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


def _kmeans(sample: np.ndarray, k: int, metric: str, seed: int, niter: int) -> np.ndarray:
    import faiss

    k = max(1, min(int(k), sample.shape[0]))
    km = faiss.Kmeans(
        sample.shape[1], k, niter=niter, seed=seed, spherical=(metric == "cosine"),
        max_points_per_centroid=sample.shape[0], min_points_per_centroid=1, verbose=False,
    )
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _sample_rows(X, metric: str, n_train: int, rng) -> np.ndarray:
    n = X.shape[0]
    rows = np.sort(rng.choice(n, size=min(n, n_train), replace=False))
    out = np.empty((rows.shape[0], X.shape[1]), dtype=np.float32)
    for a, b in iter_chunks(rows.shape[0], CHUNK_ROWS):
        out[a:b] = _prep_chunk(np.asarray(X[rows[a:b]]), metric, 0)
    _release_pages(X)
    return out


def _train_cells(X, metric: str, nlist: int, rng: np.random.Generator, progress: bool):
    """k-means centroids (spherical for cosine) on a row sample of TRAIN_PER_CELL rows per cell."""
    n, d = X.shape
    n_train = min(n, max(nlist * TRAIN_PER_CELL, 10_000))
    sample = _sample_rows(X, metric, n_train, rng)
    return _kmeans(sample, nlist, metric, int(rng.integers(2**31 - 1)), KMEANS_ITERS)


def _release_pages(X, a: int = 0, b: int | None = None) -> None:
    """Drop the process's mapping of rows ``a:b`` of a read-only memory map.

    The pages stay in the page cache (re-read from there on the next touch); they
    just stop counting in this process's resident set, so reading a large
    memory-mapped pool does not add the pool's size to the peak RSS. A no-op for
    anything that is not a read-only ``np.memmap`` of a file.
    """
    import mmap

    if not isinstance(X, np.memmap) or getattr(X, "mode", None) != "r" or not hasattr(mmap, "MADV_DONTNEED"):
        return
    base = X
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    mm = base if isinstance(base, mmap.mmap) else getattr(X, "_mmap", None)
    if not isinstance(mm, mmap.mmap) or not X.flags.c_contiguous:
        return
    try:
        start_addr = np.frombuffer(mm, dtype=np.uint8).ctypes.data
    except (TypeError, ValueError):
        return
    b = X.shape[0] if b is None else b
    row = X.strides[0]
    lo = X.ctypes.data - start_addr + a * row
    hi = X.ctypes.data - start_addr + b * row
    page = mmap.PAGESIZE
    lo = (lo + page - 1) // page * page  # whole pages inside the range only
    hi = min(hi // page * page, len(mm))
    if hi > lo:
        try:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):
            pass


def _assign(X, C: np.ndarray, metric: str, chunk_rows: int, progress: bool, nprobe: int = 1, *,
            prepared: bool = False, queries=None, row0: int = 0, valid=None):
    """Nearest cell of every row, and its next ``nprobe - 1`` nearest cells (its probes).

    Exact: one BLAS product of a block of rows against all centroids, then the
    top cells per row. Exactness matters on the benchmark mixture: a two-level
    assignment (coarse groups, then cells) put 10-20% of the rows in a cell other
    than their nearest and recall@50 fell to 0.79, and probing the cells nearest
    to a cell's *centroid* rather than to the query capped recall near 0.984 (in
    64-128 dimensions with thousands of random cluster directions, centroids
    say little about each other).

    ``prepared``: the rows are already float32, C-contiguous and (cosine) unit
    rows, as :func:`_prep_chunk` returns them (the Ray engine's shards); used as they are.
    ``queries``: a :class:`_QueryTopK` whose exact top-k over the rows is
    accumulated in the same pass (the rows are read once for both); the rows
    are numbered from ``row0``, and only rows ``valid = (lo, hi)`` (default all)
    are folded in: the Ray engine pads a shard's part of a chunk with zero rows
    so that every product has the local shape, and so the local bits.
    Returns ``(cell int32 (n,), probes (n, nprobe - 1) or None)``; probes are
    int16 when there are fewer than 32,768 cells (half the memory).
    """
    n = X.shape[0]
    nc = C.shape[0]
    p = max(1, min(int(nprobe), nc))
    cell = np.empty(n, dtype=np.int32)
    pdt = np.int16 if nc < 32768 else np.int32
    probes = np.empty((n, p - 1), dtype=pdt) if p > 1 else None
    l2 = metric != "cosine"
    half = (0.5 * np.einsum("ij,ij->i", C, C)).astype(np.float32) if l2 else np.zeros(1, np.float32)
    from ._knn_kernels import top_cells

    pr = probes if probes is not None else np.empty((n, 0), dtype=pdt)
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    nt = _n_threads()
    step = max(256, min(4096, (16 << 20) // (4 * max(1, nc))))  # <= 16 MB of scores per thread

    def part(args):
        blk, off, s0, s1 = args
        top_cells(blk[s0:s1] @ C.T, half, l2, cell, pr, off + s0)

    # threads over row blocks, BLAS single-threaded in each: steadier than BLAS's own
    # threads on a shared machine, and the selection runs in the same threads
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(nt) as ex, \
            _progress(n, "kNN: assign cells", progress) as bar:
        for a, b in iter_chunks(n, chunk_rows):
            blk = np.asarray(X[a:b]) if prepared else _prep_chunk(np.asarray(X[a:b]), metric, a)
            _release_pages(X, a, b)
            list(ex.map(part, [(blk, a, s0, min(b - a, s0 + step)) for s0 in range(0, b - a, step)]))
            if queries is not None:
                lo, hi = (0, n) if valid is None else valid
                if min(b, hi) > max(a, lo):
                    queries.fold(blk, row0 + a, ex, nt, (max(a, lo) - a, min(b, hi) - a))
            bar.update(b - a)
    return cell, probes


class _QueryTopK:
    """Exact top-k of a few query rows over all rows, folded in chunk by chunk (for ``nprobe="auto"``).

    ``Q`` (q, d) prepared rows with ids ``qids`` (skipped as their own neighbour).
    Keys as in the search (larger is nearer); ids are row numbers of the input.
    """

    def __init__(self, Q: np.ndarray, qids: np.ndarray, k: int, metric: str):
        self.Q = np.ascontiguousarray(Q, dtype=np.float32)
        self.qids = np.asarray(qids, dtype=np.int64)
        self.k = int(k)
        self.l2 = metric != "cosine"
        nq = self.Q.shape[0]
        cap = BUFFER_PER_K * self.k
        self.Bk = np.empty((nq, cap), dtype=np.float32)
        self.Bi = np.empty((nq, cap), dtype=np.int32)
        self.cnt = np.zeros(nq, dtype=np.int64)
        self.thr = np.full(nq, -np.inf, dtype=np.float32)

    def fold(self, blk: np.ndarray, off: int, ex=None, nt: int = 1, cols=None):
        """Fold rows ``off .. off + len(blk) - 1`` (prepared) into every query's buffer.

        Only the rows ``cols = (lo, hi)`` of ``blk`` (default all) are candidates.
        The products have fixed shapes (groups of QUERY_GROUP queries x runs of
        8,192 rows from the block's start) whatever the threads, so the keys' bits,
        and so the top-k, are the same wherever a block is folded (local or Ray).
        """
        from ._knn_kernels import heap_update

        lo, hi = (0, blk.shape[0]) if cols is None else cols
        h = (0.5 * np.einsum("ij,ij->i", blk, blk)).astype(np.float32) if self.l2 else None
        nothing = np.zeros(1, dtype=np.float32)
        nq = self.Q.shape[0]
        groups = [np.arange(g, min(nq, g + QUERY_GROUP)) for g in range(0, nq, QUERY_GROUP)]

        def part(g):  # each task owns a group of queries: no shared buffer rows
            Qg = self.Q[g]
            for a in range(0, blk.shape[0], 8192):  # <= 8192 columns: a few MB of scores
                b = min(blk.shape[0], a + 8192)
                ca, cb = max(a, lo), min(b, hi)
                if cb <= ca:
                    continue
                sc = Qg @ blk[a:b].T
                if h is not None:
                    sc -= h[None, a:b]
                heap_update(sc[:, ca - a:cb - a], g, self.qids[g], off + ca, nothing, False, self.Bk, self.Bi,
                            self.cnt, self.thr, self.k)

        if ex is None or nt <= 1:
            for g in groups:
                part(g)
        else:
            list(ex.map(part, groups))

    def result(self):
        """``(ids int32 (q, k), keys float32 (q, k))``, nearest first; -1 / -inf pad."""
        from ._knn_kernels import buf_finish

        nq = self.Q.shape[0]
        I = np.empty((nq, self.k), dtype=np.int32)
        K = np.empty((nq, self.k), dtype=np.float32)
        buf_finish(self.Bk, self.Bi, self.cnt, self.k, np.arange(nq, dtype=np.int64), I, K)
        return I, K


def probe_recall(true_ids: np.ndarray, qcells: np.ndarray, nbr_cells: np.ndarray) -> np.ndarray:
    """Recall@k of the IVF search with 1, 2, ... probes, from the exact neighbours of sample rows.

    ``qcells`` (q, P): each query's own cell then its probes, in order; ``nbr_cells``
    (q, k): the cell of each exact neighbour (``true_ids`` -1 = none). A neighbour is
    found with p probes exactly when its cell is among the query's first p cells,
    so entry ``p - 1`` of the result is the recall with p probes (p = 1 .. P).
    """
    q, P = qcells.shape
    valid = true_ids >= 0
    rank = np.full(true_ids.shape, P, dtype=np.int64)
    for r in range(P - 1, -1, -1):  # the first (nearest) matching rank wins
        rank[nbr_cells == qcells[:, r:r + 1]] = r
    total = max(1, int(valid.sum()))
    return np.array([float(((rank < p) & valid).sum()) / total for p in range(1, P + 1)])


def choose_nprobe(rec: np.ndarray, target: float = AUTO_TARGET_RECALL, min_gain: float = AUTO_MIN_GAIN,
                  fallback_max: int = AUTO_FALLBACK_MAX_NPROBE) -> int:
    """The fewest probes whose measured recall reaches ``target``; if none does, the first
    probe count after which one more probe adds less than ``min_gain`` recall, and at most
    ``fallback_max`` (see AUTO_FALLBACK_MAX_NPROBE)."""
    for p in range(1, rec.shape[0] + 1):
        if rec[p - 1] >= target:
            return p
    for p in range(1, min(rec.shape[0], fallback_max)):
        if rec[p] - rec[p - 1] < min_gain:
            return p
    return int(min(rec.shape[0], fallback_max))


def _check_nprobe(nprobe) -> None:
    if nprobe == "auto":
        return
    check_count(nprobe, "nprobe", 1, note="or 'auto'")


def sample_queries(X, metric: str, rng, n_queries: int = AUTO_QUERIES):
    """``(rows, ids)``: ``n_queries`` random rows of ``X`` (prepared) for measuring the probes' recall."""
    n = X.shape[0]
    ids = np.sort(rng.choice(n, size=min(n, n_queries), replace=False)).astype(np.int64)
    Q = _prep_chunk(np.asarray(X[ids]), metric, 0)
    _release_pages(X)
    return Q, ids


def default_nlist(n: int) -> int:
    """Number of IVF cells for ``n`` rows (measured in BENCHMARKS.md, *kNN recall*)."""
    return int(round(NLIST_PER_SQRT_N * math.sqrt(n)))


def prepare_rows(X, metric: str, *, method: str = "auto", nlist: int | None = None,
                 exact_max_rows: int = EXACT_MAX_ROWS, chunk_rows: int = CHUNK_ROWS,
                 random_state=0, progress: bool = False):
    """Copy ``X`` to float32 (normalised for cosine), sorted by coarse cell when ``ivf``.

    Returns ``(Xp, order, cell_ptr, centroids, method)`` with ``Xp[i] = X[order[i]]``
    (normalised); ``cell_ptr`` delimits the cells in ``Xp`` (None for flat).
    """
    return _prepare(X, metric, method=method, nlist=nlist, exact_max_rows=exact_max_rows,
                    chunk_rows=chunk_rows, random_state=random_state, progress=progress)[:5]


def _prepare(X, metric: str, *, method: str = "auto", nlist: int | None = None,
             exact_max_rows: int = EXACT_MAX_ROWS, chunk_rows: int = CHUNK_ROWS,
             random_state=0, progress: bool = False, nprobe=1, k: int = 50):
    """:func:`prepare_rows`, plus a dict with each row's further probes (``Xp`` order) and timings.
    A read-only memory map's pages are released as they are read (see
    :func:`_release_pages`), so the input does not count in the peak RSS.
    """
    import time

    n, d = X.shape
    if method == "auto":
        method = "flat" if n <= exact_max_rows else "ivf"
    if method not in ("flat", "ivf"):
        raise BatchalInputError(f"unknown kNN method {method!r}; use auto, flat or ivf")
    if method == "flat":
        Xp = np.empty((n, d), dtype=np.float32)
        for a, b in iter_chunks(n, chunk_rows):
            Xp[a:b] = _prep_chunk(np.asarray(X[a:b]), metric, a)
            _release_pages(X, a, b)
        return Xp, np.arange(n, dtype=np.int64), None, None, "flat", {}
    rng = np.random.default_rng(random_state)
    if nlist is None:
        nlist = default_nlist(n)
    nlist = max(1, min(int(nlist), n // 4 if n >= 8 else 1))
    _check_nprobe(nprobe)
    t0 = time.perf_counter()
    C = _train_cells(X, metric, nlist, rng, progress)
    t1 = time.perf_counter()
    extra = {}
    queries = None
    if nprobe == "auto":
        queries = _QueryTopK(*sample_queries(X, metric, rng), k, metric)
        nprobe = AUTO_MAX_NPROBE
    cell, probes = _assign(X, C, metric, chunk_rows, progress, nprobe, queries=queries)
    if queries is not None:
        true_ids, _ = queries.result()
        qcells = np.concatenate([cell[queries.qids, None], probes[queries.qids]], axis=1) if probes is not None \
            else cell[queries.qids, None]
        rec = probe_recall(true_ids, qcells, np.where(true_ids >= 0, cell[np.maximum(true_ids, 0)], -1))
        nprobe = choose_nprobe(rec)
        extra.update(nprobe_recall=[round(float(r), 4) for r in rec], nprobe_estimated_recall=float(rec[nprobe - 1]),
                     nprobe_queries=int(queries.qids.shape[0]))
        if rec[nprobe - 1] < AUTO_TARGET_RECALL and n <= EXACT_FALLBACK_MAX_ROWS:
            # the cells cannot reach the target, and the exact search costs little here
            del cell, probes
            extra["fallback"] = f"flat: {nprobe} probes of {C.shape[0]} cells reach recall {rec[nprobe - 1]:.3f}"
            return _prepare(X, metric, method="flat", chunk_rows=chunk_rows)[:5] + (extra,)
        if probes is not None:
            probes = np.ascontiguousarray(probes[:, :nprobe - 1]) if nprobe > 1 else None
    extra["nprobe"] = int(min(nprobe, C.shape[0]))
    t2 = time.perf_counter()
    nlist = C.shape[0]
    counts = np.bincount(cell, minlength=nlist)
    cell_ptr = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(counts, out=cell_ptr[1:])
    order = np.argsort(cell, kind="stable").astype(np.int64)
    del cell
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n, dtype=np.int64)
    Xp = np.empty((n, d), dtype=np.float32)

    def copy(ab):  # numpy releases the GIL in the read, normalisation and scatter
        a, b = ab
        Xp[pos[a:b]] = _prep_chunk(np.asarray(X[a:b]), metric, a)
        _release_pages(X, a, b)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(_n_threads()) as ex:
        list(ex.map(copy, iter_chunks(n, chunk_rows)))
    pos = None  # the closure is done with it
    if probes is not None:
        probes = probes[order]
    extra.update({"probes": probes, "train_s": t1 - t0, "assign_s": t2 - t1, "copy_s": time.perf_counter() - t2})
    return Xp, order, cell_ptr, C, "ivf", extra


def _knn_cells(Xp, cell_ptr, probes, k: int, metric: str, progress: bool, out=None,
               want_d: bool = True, n_threads: int | None = None):
    """Blocked IVF search: every row scans its own cell and its ``probes`` (its next nearest cells).

    Batched by cell, so every distance is part of a dense BLAS product:
    pass 0 multiplies each cell by itself; pass r (r = 1 .. nprobe - 1) groups
    the rows by their r-th probe and multiplies each group by that cell. Each
    block is folded into its rows' running top-k (numba, ``_knn_kernels``).
    Within a pass every row is in exactly one group, so groups run in parallel
    threads (BLAS single-threaded inside) without locks.
    Returns ``(I, D)``; D (distances) only with ``want_d``.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from . import _knn_kernels as KK

    n, d = Xp.shape
    nlist = cell_ptr.shape[0] - 1
    l2 = metric != "cosine"
    half = np.zeros(1, dtype=np.float32)
    if l2:
        half = np.empty(n, dtype=np.float32)
        for a, b in iter_chunks(n, CHUNK_ROWS):
            half[a:b] = 0.5 * np.einsum("ij,ij->i", Xp[a:b], Xp[a:b])
    I = _out_indices(out, n, k)
    Kk = np.empty((n, k), dtype=np.float32)  # keys of the current best k (larger = nearer)
    cap = BUFFER_PER_K * k
    sizes = np.diff(cell_ptr)

    def own_cell(c):
        return own_cell_block(Xp, int(cell_ptr[c]), int(cell_ptr[c + 1]), half, l2, k, I, Kk, npass == 1)

    def probe_group(args):
        j, rows, last = args
        ja, jb = int(cell_ptr[j]), int(cell_ptr[j + 1])
        KK.probe_fold(Xp[rows] @ Xp[ja:jb].T, rows, ja, half, l2, I, Kk, cap, last)
        return rows.shape[0]

    nt = n_threads or _n_threads()
    npass = 1 + (probes.shape[1] if probes is not None else 0)

    def run(fn, items, bar):
        if nt <= 1:
            for it in items:
                bar.update(fn(it))
        else:
            with ThreadPoolExecutor(nt) as ex:
                for done in ex.map(fn, items, chunksize=4):
                    bar.update(done)

    with threadpool_limits(1, user_api="blas"), _progress(n * npass, "kNN (IVF)", progress) as bar:
        # biggest cells first, so the threads finish together
        run(own_cell, np.argsort(-sizes, kind="stable").tolist(), bar)
        for r in range(npass - 1):
            pr = probes[:, r]
            o = np.argsort(pr, kind="stable")
            bounds = np.searchsorted(pr[o], np.arange(nlist + 1))
            last = r == npass - 2  # only the last pass orders the lists
            groups = [(j, o[bounds[j]:bounds[j + 1]], last) for j in range(nlist) if bounds[j + 1] > bounds[j]]
            groups.sort(key=lambda g: -g[1].shape[0] * sizes[g[0]])
            run(probe_group, groups, bar)
            del o, groups
    D = None
    if want_d:
        D = Kk
        if metric == "cosine":
            np.subtract(1.0, D, out=D)
        else:
            np.multiply(D, -2.0, out=D)
            D += 2.0 * half[:, None]
        np.maximum(D, 0.0, out=D)
        if metric == "euclidean":
            np.sqrt(D, out=D)
        D[I < 0] = np.inf
    return I, D


def own_cell_block(X, a: int, b: int, half, l2: bool, k: int, I, K, order: bool = True) -> int:
    """Rows ``a:b`` (one cell) searched against themselves into their best k (``I``, keys ``K``).

    One product ``X[a:b] @ X[a:b].T``: the local and the Ray search both call
    this, so the bits of every key are the same. Returns the number of rows.
    """
    from . import _knn_kernels as KK

    m = b - a
    if m == 0:
        return 0
    rows = np.arange(a, b, dtype=np.int64)
    cap = BUFFER_PER_K * k
    Bk = np.empty((m, cap), dtype=np.float32)
    Bi = np.empty((m, cap), dtype=np.int32)
    cnt = np.zeros(m, dtype=np.int64)
    thr = np.full(m, -np.inf, dtype=np.float32)
    KK.own_cell_update(X[a:b] @ X[a:b].T, a, half, l2, Bk, Bi, cnt, thr, k)
    KK.buf_finish(Bk, Bi, cnt, k, rows, I, K, order)
    return m


def _n_threads() -> int:
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def knn_permuted(X, k: int = 50, *, metric: str = "cosine", method: str = "auto",
                 nprobe: int | str = DEFAULT_NPROBE, nlist: int | None = None,
                 exact_max_rows: int = EXACT_MAX_ROWS, chunk_rows: int = CHUNK_ROWS,
                 random_state=0, progress: bool = False, out_indices=None,
                 return_distances: bool = True):
    """kNN in the cell order (used by the graph HAC, which keeps that order for locality).

    Returns ``(Xp, order, I, D, method, info)``: rows ``Xp[i] = X[order[i]]``
    (float32, unit rows for cosine) and kNN ids ``I`` that index ``Xp``.
    ``out_indices``: an int32 buffer whose first ``n k`` entries receive ``I``.
    ``return_distances=False``: ``D`` is None.
    """
    import time

    k = _check(X, k, metric)
    t0 = time.perf_counter()
    Xp, order, cell_ptr, C, method, extra = _prepare(
        X, metric, method=method, nlist=nlist, exact_max_rows=exact_max_rows,
        chunk_rows=chunk_rows, random_state=random_state, progress=progress, nprobe=nprobe, k=k,
    )
    t1 = time.perf_counter()
    if method == "flat":
        I, D = _knn_flat(Xp, k, metric, progress, out_indices)
        info = {"nlist": None, "nprobe": None}
        info.update(extra)
    else:
        probes = extra.pop("probes")
        I, D = _knn_cells(Xp, cell_ptr, probes, k, metric, progress, out_indices,
                          want_d=return_distances)
        del probes
        info = {"nlist": int(cell_ptr.shape[0] - 1)}
        info.update(extra)
    if method == "flat":
        if return_distances:
            _to_distance(D, metric)
        else:
            D = None
    info.update({"k": k, "prepare_s": t1 - t0, "search_s": time.perf_counter() - t1})
    return Xp, order, I, D, method, info


def knn_graph(X, k: int = 50, *, metric: str = "cosine", method: str = "auto",
              nprobe: int | str = DEFAULT_NPROBE, nlist: int | None = None,
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
    nprobe : int or "auto"
        IVF cells each row scans (its own nearest cells). ``"auto"`` (default)
        measures the recall@k of 1 .. 16 probes on 500 random rows (their
        exact neighbours found while the rows are assigned to cells) and takes
        the fewest reaching 0.985. If none does: the exact search when there are
        at most ``EXACT_FALLBACK_MAX_ROWS`` rows (``method`` is then ``"flat"``
        and ``info["fallback"]`` says why), else it stops where one more probe
        adds less than 2 points, at 4 probes at most (:func:`choose_nprobe`).
        ``info`` reports the measured curve (``nprobe_recall``).
    nlist : int
        Number of cells (default ``2 sqrt(n)``).
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
