"""Near-duplicate groups from the clustering's kNN graph.

Web pools hold copies: re-uploads, crops, bursts (SemDeDup removed about half of
LAION-440M with minimal loss). A label bought for one copy serves them all. The
groups here are the connected components of the pool's kNN graph
(:func:`batchal.clustering.knn.knn_graph`, the graph the clustering builds: exact
below 20,000 rows, IVF above) restricted to the edges within a distance
``threshold``. A group is transitive: ``a ~ b`` and ``b ~ c`` put ``a`` and ``c``
together even when they are farther apart than the threshold, as a burst of
near-identical frames should be. Pairs only the kNN lists miss (a row with more
than ``knn`` copies within the threshold still reaches them through its
neighbours) are the approximation; the tests measure the pairs' precision and
recall against brute force.

Memory: the (n, knn) neighbour lists and O(n) for the components; never n x n.
"""
from __future__ import annotations

import numpy as np

from ._validation import BatchalInputError

__all__ = ["near_duplicate_groups", "groups_from_knn", "edge_distances", "write_groups", "groups_table",
           "check_dedup_args", "default_threshold", "DEDUP_METRICS", "DEFAULT_COSINE_THRESHOLD"]

DEDUP_METRICS = ("cosine", "euclidean")

#: The default cosine-distance threshold: copies of one item (near-exact re-uploads, bursts) measured at
#: 1e-4 to 3e-3 on every benchmark pool, distinct items within 0.01 of each other for under 1% of rows
#: (BENCHMARKS.md, *The recommendation, revised*); the recommended spec's ``dup=0.01`` is the same cut.
#: Euclidean distances have no scale-free default: give the threshold.
DEFAULT_COSINE_THRESHOLD = 0.01


def default_threshold(threshold, metric: str) -> float:
    """``threshold``, or the default for ``metric`` when it is None (cosine only)."""
    if threshold is not None:
        return threshold
    if metric == "cosine":
        return DEFAULT_COSINE_THRESHOLD
    raise BatchalInputError(f"give a threshold for the {metric} metric (its distances have no scale-free "
                            f"default; cosine defaults to {DEFAULT_COSINE_THRESHOLD})")


def check_dedup_args(threshold, metric: str) -> None:
    """Refuse an unknown metric or a threshold that is not a finite number >= 0."""
    if metric not in DEDUP_METRICS:
        raise BatchalInputError(f"unknown metric {metric!r}; use one of {', '.join(DEDUP_METRICS)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
            or not np.isfinite(threshold) or threshold < 0:
        raise BatchalInputError(f"threshold must be a finite number >= 0; got {threshold!r}")


def near_duplicate_groups(embeddings, threshold: float, *, metric: str = "cosine", knn: int = 20,
                          method: str = "auto", random_state=0, progress: bool = False) -> dict:
    """Groups of rows within ``threshold`` of each other (transitively), from the kNN graph.

    Parameters
    ----------
    embeddings : array (n, d)
        Read in row chunks (a memory map stays one).
    threshold : float
        Largest distance of an edge: ``1 - cos`` for cosine (in [0, 2]), L2 for euclidean.
    metric : {"cosine", "euclidean"}
    knn : int
        Neighbours per row in the graph.
    method : {"auto", "flat", "ivf"}
        The kNN search (:func:`batchal.clustering.knn.knn_graph`).
    random_state : int
        Seed of the IVF k-means.
    progress : bool

    Returns
    -------
    dict of int64 arrays (n,): ``row``; ``group``, numbered 0.. in the order of each
    group's first row; ``representative``, the row standing for the group: its member
    with the most edges within the threshold (ties: the smaller row), so a label
    bought for it is the one nearest to most of its copies. A row without a
    near-duplicate is a group of its own and its own representative.
    """
    from .clustering.knn import knn_graph

    check_dedup_args(threshold, metric)
    if getattr(embeddings, "ndim", None) != 2:
        raise BatchalInputError(f"embeddings must be a 2-d array (n, d); got shape {getattr(embeddings, 'shape', None)}")
    from ._validation import check_finite

    check_finite(embeddings, "embeddings")
    n = embeddings.shape[0]
    if n < 2:
        raise BatchalInputError("near-duplicate groups need at least 2 rows")
    g = knn_graph(embeddings, knn, metric=metric, method=method, random_state=random_state, progress=progress)
    return groups_from_knn(g.indices, g.distances, threshold)


def groups_from_knn(indices: np.ndarray, distances: np.ndarray, threshold: float) -> dict:
    """Near-duplicate groups from given kNN lists (the kernel of :func:`near_duplicate_groups`).

    A campaign calls it on the kNN graph its clustering stored, so a pool is never
    searched twice (:func:`batchal.campaign.deduplicating.dedup`).

    Parameters
    ----------
    indices : int array (n, k)
        Row ``i``'s neighbours (``-1``: none).
    distances : float array (n, k)
        Their distances, in the metric ``threshold`` is given in.
    threshold : float

    Returns
    -------
    dict of int64 arrays (n,): ``row``, ``group``, ``representative`` (see
    :func:`near_duplicate_groups`).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = indices.shape[0]
    indices = np.asarray(indices)
    # the edges within the threshold, as (row, column) of the lists: never an (n, k) array of row ids
    keep = (indices >= 0) & (np.asarray(distances) <= threshold)
    a, col = np.nonzero(keep)
    b = indices[a, col].astype(np.int64)
    del keep, col
    # undirected edges, each pair once: the degree counts a pair once even when both lists hold it
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pairs = np.unique(lo * n + hi) if lo.shape[0] else np.empty(0, np.int64)
    lo, hi = pairs // n, pairs % n
    adj = coo_matrix((np.ones(lo.shape[0], dtype=np.int8), (lo, hi)), shape=(n, n)).tocsr()
    _, labels = connected_components(adj, directed=False)
    degree = np.bincount(lo, minlength=n) + np.bincount(hi, minlength=n)
    # number groups by their first row
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n, dtype=np.int64))
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(first.shape[0])
    group = rank[labels].astype(np.int64)
    # representative: most edges, ties to the smaller row (the lexsort's last key sorts first)
    order = np.lexsort((np.arange(n), -degree, group))
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
    rep_of_group = np.empty(first.shape[0], dtype=np.int64)
    rep_of_group[group[order][starts]] = order[starts]
    return {"row": np.arange(n, dtype=np.int64), "group": group, "representative": rep_of_group[group]}


def edge_distances(embeddings, indices: np.ndarray, metric: str, chunk_rows: int = 8192) -> np.ndarray:
    """float32 (n, k) distances of stored kNN lists, recomputed from the embeddings (no search).

    A clustering keeps only its neighbour lists (its search returns no distances,
    to save n x k floats while the HAC runs); the distance of each listed pair
    costs one dot product, O(n k d) in row chunks, never a scan for candidates.

    Parameters
    ----------
    embeddings : array (n, d)
    indices : int array (n, k), ``-1`` for no neighbour
    metric : {"cosine", "euclidean"}
    chunk_rows : int
    """
    from ._validation import iter_chunks

    n, k = indices.shape
    out = np.full((n, k), np.inf, dtype=np.float32)
    for a, b in iter_chunks(n, chunk_rows):
        I = np.asarray(indices[a:b], dtype=np.int64)
        ok = I >= 0
        A = np.asarray(embeddings[a:b], dtype=np.float64)
        uniq, inv = np.unique(I[ok], return_inverse=True)
        srt = np.asarray(embeddings[uniq], dtype=np.float64)  # sorted rows: sequential reads of a memory map
        B = np.zeros(I.shape + (A.shape[1],))
        B[ok] = srt[inv]
        if metric == "cosine":
            A = A / np.maximum(np.linalg.norm(A, axis=1), 1e-30)[:, None]
            B = B / np.maximum(np.linalg.norm(B, axis=2), 1e-30)[:, :, None]
            d = 1.0 - np.einsum("id,ikd->ik", A, B)
        else:
            d = np.sqrt(np.maximum(((B - A[:, None, :]) ** 2).sum(2), 0.0))
        out[a:b] = np.where(ok, np.maximum(d, 0.0), np.inf)
    return out


def groups_table(groups: dict, ids=None):
    """The groups as a pyarrow Table: ``row``, ``group``, ``representative`` (rows), or with
    ``ids`` (a pyarrow array, one id per row) ``id``, ``group``, ``representative`` (the representative's id)."""
    import pyarrow as pa

    if ids is None:
        return pa.table({k: pa.array(groups[k]) for k in ("row", "group", "representative")})
    return pa.table({"id": ids, "group": pa.array(groups["group"]),
                     "representative": ids.take(pa.array(groups["representative"]))})


def write_groups(path, groups: dict, *, ids=None, name: str = "--out") -> None:
    """Write the groups as Parquet (:func:`groups_table`'s columns), atomically."""
    import pyarrow.parquet as pq

    from .io import atomic_write

    table = groups_table(groups, ids)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp), name=name)
