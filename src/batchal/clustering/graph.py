"""Graph-restricted exact average-linkage HAC for large pools.

The k-nearest-neighbour graph decides only *which* clusters may merge (those
joined by at least one edge). The linkage of two adjacent clusters is their
true average distance over all cross pairs, kept exactly from per-cluster
statistics (size, vector sum, sum of squared norms), never the mean of the kNN
edge weights between them (that is a different clustering: ARI 0.01-0.23
against exact average linkage). Merging runs in rounds of reciprocal nearest
neighbours (RAC): on a complete graph this is exactly scipy's average-linkage
tree; on a kNN graph it is the exact average-linkage tree of that graph.

Metrics
-------
``cosine``: rows are unit-normalised; linkage = mean cosine distance
(``1 - S_A.S_B / (|A||B|)``), identical to scipy's ``average`` + ``cosine``.
``sqeuclidean``: mean squared euclidean distance over cross pairs.
``euclidean``: the **root of the mean squared** euclidean distance (RMS), i.e.
the sqeuclidean tree with heights square-rooted. This is *not* scipy's mean
euclidean distance (which has no sufficient-statistics form); the tree is the
same as for sqeuclidean.

Forest. Clusters left in different connected components of the kNN graph are
joined afterwards by the same exact linkage over a graph of the components
(complete when there are few, a kNN graph of their means otherwise), so the
output is always a full tree with finite heights and every cut is meaningful.

Memory, step by step (n rows, d dimensions, k neighbours, E = entries of the
symmetric graph, about 1.45 n k on the benchmark mixture):

* kNN (:mod:`.knn`): the rows as float32 in cell order (4 n d), the directed
  lists written straight into the first n k entries of one int32 *arena*, and,
  while searching, the running top-k keys (4 n k, freed after). A read-only
  memory-mapped input's pages are released as they are read, so the input does
  not count in the resident set.
* symmetrise: in place in the arena (:func:`._graph_kernels.symmetrize_inplace`):
  a counting pass, then the rows are moved to their final offsets and the
  reverse edges filled in; besides the arena only 24 bytes per row (plus 8 per
  thread) and one byte per directed edge. The arena is allocated for the worst
  case (2 n k) but pages never written are never resident: 4 E bytes are.
* merge: the same arena as the merge lists (grown to at most ``MERGE_SLACK`` x E,
  compacted when full), the vector sums (the float32 rows themselves, 4 n d, or
  float64 for small pools), and about 170 bytes per row of per-cluster state and
  tree, 64 of them each slot's certified ranking of its best entries (see
  ``_graph_kernels.rac``). No linkage is stored per list entry: a merged
  cluster's are computed from the sums and pushed to its neighbours.

Precision. Linkages are float64 dot products of the stored sums. With float64
sums (``n d 8 <= 512 MiB``) the tree is the one float64 arithmetic gives. With
float32 sums (larger pools) each sum carries a relative rounding error of about
1e-7 times the cluster size, so two linkages closer than that may be ordered
differently: on 20,000 rows of the benchmark mixture float32 and float64 sums
gave heights within 1.5e-7 and ARI 1.0 at mean cluster sizes 4, 10 and 50 (a
few merge orders differ). The tree does not depend on anything else for a given
graph: the earlier float32 linkage cache (one value per list entry) is gone, and
with float64 sums the trees are identical to those it gave (checked on the 20K
benchmark sets).

Heights. On a kNN graph the tree can have (rare) inversions: a merge lower
than one of its children, because a pair that was not adjacent can become
adjacent after a merge. Heights are raised to their children's maximum (what
scipy's ``fcluster`` does implicitly) and rows are sorted by height, so the
output is a valid monotone scipy linkage matrix; the number raised is reported.
"""
from __future__ import annotations

import time

import numpy as np

from .._validation import BatchalInputError, iter_chunks
from . import _graph_kernels as K
from .knn import DEFAULT_NPROBE, EXACT_MAX_ROWS, knn_graph, knn_permuted
from .knn import _check as _check_knn

#: Statistics are kept in float64 up to this many bytes (n * d * 8), float32 above.
STATS_F64_MAX_BYTES = 512 << 20
#: Components are joined over a complete graph up to this many, a kNN graph above.
COMPLETE_JOIN_MAX = 3000
#: Capacity of the merge lists' arena, as a multiple of the symmetric graph's entries
#: (each compaction costs about one pass over the live lists: 1.6 s at 10M rows).
MERGE_SLACK = 1.05


def _metric_code(metric: str) -> int:
    if metric == "cosine":
        return K.COSINE
    if metric in ("sqeuclidean", "euclidean"):
        return K.SQEUCLIDEAN
    raise BatchalInputError(f"unknown metric {metric!r}; use cosine, euclidean or sqeuclidean")


def _finish_tree(Z: np.ndarray, n: int, order: np.ndarray, metric: str):
    """Monotone heights, rows sorted by height, leaf ids back in the caller's numbering."""
    if metric == "euclidean":
        np.sqrt(np.maximum(Z[:, 2], 0.0), out=Z[:, 2])
    elif metric == "sqeuclidean" or metric == "cosine":
        np.maximum(Z[:, 2], 0.0, out=Z[:, 2])  # float rounding can give -1e-17
    raised = int(K.monotone_heights(Z, n))
    # Parents come after their children in merge order and have heights >= theirs
    # now, so a stable sort by height keeps every child before its parent.
    rank = np.argsort(Z[:, 2], kind="stable")
    new_row = np.empty(n - 1, dtype=np.int64)
    new_row[rank] = np.arange(n - 1)
    Z = Z[rank]
    ids = Z[:, :2].astype(np.int64)
    leaf = ids < n
    ids[leaf] = order[ids[leaf]]
    ids[~leaf] = n + new_row[ids[~leaf] - n]
    Z[:, 0] = ids.min(axis=1)
    Z[:, 1] = ids.max(axis=1)
    return Z, raised


def _copy_knn(I: np.ndarray, order: np.ndarray, out) -> None:
    """Directed lists in the cell order (ids into it) -> ``out`` in row order with row ids."""
    for a, b in iter_chunks(I.shape[0]):
        blk = np.asarray(I[a:b], dtype=np.int64)
        out[order[a:b]] = np.where(blk >= 0, order[np.maximum(blk, 0)], -1).astype(np.int32)
    if hasattr(out, "flush"):
        out.flush()


def graph_linkage(
    X,
    *,
    metric: str = "cosine",
    knn: int = 50,
    progress: bool = False,
    random_state=0,
    nprobe: int | str = DEFAULT_NPROBE,
    knn_method: str = "auto",
    exact_max_rows: int = EXACT_MAX_ROWS,
    stats_dtype: str = "auto",
    knn_out=None,
):
    """Average-linkage merge tree of ``X`` restricted to its kNN graph.

    Parameters
    ----------
    X : (n, d) float array or memmap
        Not modified.
    metric : {"cosine", "euclidean", "sqeuclidean"}
    knn : int
        Neighbours per row before symmetrisation.
    progress : bool
        Progress bars for the kNN search.
    random_state : int
        Seed of the coarse k-means (IVF cells).
    nprobe, knn_method, exact_max_rows
        See :func:`batchal.clustering.knn.knn_graph`.
    stats_dtype : {"auto", "float64", "float32"}
        Storage of the per-cluster vector sums (dot products always accumulate in
        float64). ``auto``: float64 while ``n * d * 8 <= 512 MiB``.
    knn_out : callable, optional
        ``knn_out(n, k)`` -> writable int32 (n, k) array that receives the directed
        kNN lists in the original row numbering (``-1``: none), written in row
        chunks before the lists' buffer is symmetrised in place.

    Returns
    -------
    Z : float64 (n - 1, 4)
        scipy linkage matrix, monotone heights, one tree.
    timings : dict
        Seconds per step (``knn``, ``merge``, ...) and diagnostics.
    """
    code = _metric_code(metric)
    n, d = X.shape
    timings: dict = {}
    steps: list = []  # (name, start, end) in time.perf_counter() seconds, for per-step memory reports
    timings["steps"] = steps
    if n == 1:
        return np.zeros((0, 4)), {"knn": 0.0, "merge": 0.0, "steps": steps}
    k_eff = _check_knn(X, knn, metric)
    # One int32 arena holds the directed kNN lists (its first n k entries), is
    # symmetrised in place and then serves as the merge lists' arena. It is sized
    # for the worst case (2 n k, no mutual edges), but pages never written are
    # never resident, so only what the graph needs costs memory.
    arena = np.empty(max(2 * n * k_eff, 1), dtype=np.int32)
    t0 = time.perf_counter()
    Xp, order, I, _, kmethod, info = knn_permuted(
        X, knn, metric=metric, method=knn_method, nprobe=nprobe,
        exact_max_rows=exact_max_rows, random_state=random_state, progress=progress,
        out_indices=arena, return_distances=False,
    )
    t1 = time.perf_counter()
    steps.append(("knn_prepare", t0, t0 + info["prepare_s"]))
    steps.append(("knn_search", t0 + info["prepare_s"], t1))
    timings["knn"] = t1 - t0
    timings["knn_prepare"] = info["prepare_s"]
    timings["knn_search"] = info["search_s"]
    timings["knn_method"] = kmethod
    timings["knn_k"] = info["k"]
    for key in ("nlist", "nprobe", "nprobe_estimated_recall", "train_s", "assign_s", "copy_s"):
        if info.get(key) is not None:
            timings["knn_" + key] = info[key]

    k = I.shape[1]
    if knn_out is not None:
        _copy_knn(I, order, knn_out(n, k))
    del I
    indptr = K.symmetrize_inplace(arena, n, k, n)
    nbr = arena
    del arena
    t2 = time.perf_counter()
    steps.append(("symmetrize", t1, t2))
    timings["symmetrize"] = t2 - t1
    timings["edges"] = int(indptr[-1] // 2)

    if stats_dtype == "auto":
        stats_dtype = "float64" if n * d * 8 <= STATS_F64_MAX_BYTES else "float32"
    if stats_dtype not in ("float64", "float32"):
        raise BatchalInputError(f"stats_dtype must be auto, float64 or float32; got {stats_dtype!r}")
    if stats_dtype == "float64":
        # Re-read the rows in float64 (normalised in float64 for cosine) so that
        # small pools reproduce scipy's float64 heights, not float32 roundings.
        del Xp
        S = np.empty((n, d), dtype=np.float64)
        for a, b in iter_chunks(n):
            rows = order[a:b]
            srt = np.argsort(rows)
            blk = np.empty((b - a, d), dtype=np.float64)
            blk[srt] = np.asarray(X[rows[srt]], dtype=np.float64)
            if code == K.COSINE:
                blk /= np.linalg.norm(blk, axis=1)[:, None]
            S[a:b] = blk
    else:
        S = Xp  # the float32 copy becomes the statistics (row i = sum of cluster i)
    size = np.ones(n, dtype=np.float64)
    if code == K.COSINE:
        sq = np.ones(1, dtype=np.float64)  # unit rows: never read (see _graph_kernels._link)
    else:
        sq = np.empty(n, dtype=np.float64)
        for a, b in iter_chunks(n):
            blk = S[a:b].astype(np.float64)
            sq[a:b] = np.einsum("ij,ij->i", blk, blk)
    end = int(indptr[-1])
    # list offsets and lengths in int32 while the arena stays below 2^31 entries: live lists
    # hold at most E entries, plus the pair being appended (under 2 E); the join of components
    # loads at most 64 entries per root (a symmetrised 32-NN graph of their means), or 9M for
    # a complete join of up to COMPLETE_JOIN_MAX roots
    pos_dt = np.int32 if 2 * max(end, 64 * n, COMPLETE_JOIN_MAX**2) + n + 1 < 2**31 else np.int64
    start = indptr[:-1].astype(pos_dt)
    length = np.diff(indptr).astype(pos_dt)
    del indptr
    # The merge lists grow by appending a merged pair's two lists at the end of
    # the arena; when the end is reached the live lists are compacted. A slack of
    # MERGE_SLACK x the edges keeps compactions rare; the arena's pages beyond
    # that are never touched.
    cap = min(nbr.shape[0], int(end * MERGE_SLACK) + n + 1)
    if cap < end + 1:
        grown = np.empty(int(end * MERGE_SLACK) + n + 1, dtype=np.int32)
        grown[:end] = nbr[:end]
        nbr = grown
        cap = nbr.shape[0]
    nbr = nbr[:cap]
    # parent and stamp side by side: a list visit reads both for every entry, one cache line
    ps = np.empty((n, 2), dtype=np.int32)
    parent = ps[:, 0]
    parent[:] = np.arange(n, dtype=np.int32)
    stamp = ps[:, 1]
    stamp[:] = -1
    alive = np.ones(n, dtype=np.uint8)
    node_id = np.arange(n, dtype=np.int32 if 2 * n < 2**31 else np.int64)
    built = np.full(n, -1, dtype=np.int32)
    Z = np.empty((n - 1, 4), dtype=np.float64)
    dirty = np.flatnonzero(length > 0).astype(np.int32)
    t2b = time.perf_counter()
    timings["stats"] = t2b - t2
    phases: dict = {}
    nbr, end, zc, it, rounds, ncomp = K.rac(
        S, size, sq, parent, alive, node_id, stamp, built, start, length, nbr, end,
        dirty, Z, 0, n, code, 0, phases,
    )
    timings["merge_phases"] = {key: (round(v, 2) if key.endswith("_s") else int(v)) for key, v in phases.items()}
    t3 = time.perf_counter()
    steps.append(("merge", t2, t3))
    timings["merge"] = t3 - t2
    timings["rounds"] = int(rounds)
    timings["compactions"] = int(ncomp)

    # Join what the graph left apart (components) with the same exact linkage.
    roots = np.flatnonzero(alive).astype(np.int32)
    timings["components"] = int(roots.shape[0])
    passes = 0
    while roots.shape[0] > 1:
        passes += 1
        nbr, off = join_lists(roots, S, size, metric, random_state, nbr, start, length, built)
        nbr, end, zc, it, r2, _ = K.rac(
            S, size, sq, parent, alive, node_id, stamp, built, start, length, nbr, off,
            roots, Z, zc, n, code, it,
        )
        rounds += r2
        roots = np.flatnonzero(alive).astype(np.int32)
    if zc != n - 1:  # cannot happen: every pass merges at least one pair
        raise RuntimeError(f"graph HAC produced {zc} merges for {n} rows")
    timings["join_components"] = time.perf_counter() - t3
    timings["join_passes"] = passes
    steps.append(("join_components", t3, time.perf_counter()))
    del nbr, S, size, sq, parent, alive, node_id, stamp, ps, built, start, length
    t4 = time.perf_counter()
    Z, raised = _finish_tree(Z, n, order, metric)
    steps.append(("finish_tree", t4, time.perf_counter()))
    timings["inversions"] = raised
    timings["total"] = time.perf_counter() - t0
    return Z, timings


def join_lists(roots, S, size, metric, random_state, nbr, start, length, built):
    """Adjacency that joins the clusters a kNN graph left apart, loaded into the merge arena.

    All pairs when there are at most ``COMPLETE_JOIN_MAX`` roots, else a kNN graph
    of the cluster means; shared by the local and the Ray graph HAC so both join
    components the same way. Returns ``(nbr, end)`` (the arena may grow).
    """
    m = roots.shape[0]
    if m <= COMPLETE_JOIN_MAX:
        lists = [np.delete(roots, i) for i in range(m)]
    else:
        reps = S[roots].astype(np.float32) / size[roots, None].astype(np.float32)
        res = knn_graph(reps, min(m - 1, 32), metric=metric, random_state=random_state)
        ptr, adj = _sym(res.indices, m)
        lists = [roots[adj[ptr[i]:ptr[i + 1]]] for i in range(m)]
    total = sum(len(x) for x in lists)
    if total > nbr.shape[0]:
        nbr = np.empty(total, dtype=np.int32)
    length[:] = 0
    off = 0
    for r, lst in zip(roots, lists):
        start[r] = off
        length[r] = len(lst)
        nbr[off:off + len(lst)] = lst
        off += len(lst)
    built[roots] = -1
    return nbr, off


def _sym(indices, m):
    indptr, nbr, _ = K.symmetrize_knn(np.ascontiguousarray(indices, dtype=np.int32), m, 1.0)
    return indptr, nbr[: indptr[-1]]
