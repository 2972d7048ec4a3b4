"""Rare-concept mining: the pool's items nearest to a query set, optionally re-ranked by uncertainty.

A team that finds a few examples of a rare failure wants the pool's items like
them (SEALS, AAAI 2022, selects from a 10B-image pool among the nearest
neighbours of what is labeled). :func:`similar` returns the ``k`` unlabeled rows
nearest to a set of query embeddings (an item's distance to the set is its
distance to the nearest query), nearest first, or those ``k`` ranked by margin
(most uncertain first) when predictions are given.

Two searches, chosen by pool size as the clustering's kNN graph chooses them:

* ``flat`` (exact): the pool streams through in row chunks, each scored against
  every query by one matrix product; memory O(chunk x queries), the pool is never
  copied.
* ``ivf``: the pool is partitioned into k-means cells by the clustering's own
  index builder (:func:`batchal.clustering.knn.prepare_rows`: the same cells,
  sizes and normalisation), and each query scans the rows of its ``nprobe``
  nearest cells.

The result is exact for ``flat``: per query the ``k`` nearest allowed rows, then
the ``k`` smallest distances over their union, which is the global answer (a
row missing from its nearest query's list has ``k`` rows nearer to that query).
"""
from __future__ import annotations

import numpy as np

from ._validation import (BatchalInputError, check_count, check_finite, check_seed, first_nonfinite, iter_chunks,
                          labeled_mask)

__all__ = ["similar", "SimilarIndex", "nearest_query_similarity", "SIMILAR_METRICS", "DEFAULT_NPROBE"]

SIMILAR_METRICS = ("cosine", "euclidean")
#: IVF cells scanned per query: recall@100 >= 0.95 on the clustered test pools (tests/test_similar.py).
DEFAULT_NPROBE = 16


def _prep(block, metric: str, name: str, offset: int = 0, rows: np.ndarray | None = None) -> np.ndarray:
    """float32 copy of rows, unit-normalised for cosine (a zero row is an error naming it: its
    position plus ``offset``, or ``rows[position]`` when the block holds those pool rows)."""
    b = np.array(block, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        norms = np.linalg.norm(b, axis=1)
        if (norms == 0).any():
            i = int(np.flatnonzero(norms == 0)[0])
            i = int(rows[i]) if rows is not None else i + offset
            raise BatchalInputError(f"{name} row {i} is all zeros; cosine distance is undefined")
        b /= norms[:, None]
    return b


def _distances(Q: np.ndarray, X: np.ndarray, metric: str) -> np.ndarray:
    """(q, m) distances: ``1 - cos`` (rows already normalised) or euclidean."""
    G = Q @ X.T
    if metric == "cosine":
        return np.maximum(1.0 - G, 0.0)
    d2 = (Q * Q).sum(1)[:, None] - 2.0 * G + (X * X).sum(1)[None, :]
    return np.sqrt(np.maximum(d2, 0.0))


def _merge(best_d, best_i, d, rows, k):
    """Fold candidate (distance, row) columns into each query's running k best (ties: smaller row)."""
    D = np.concatenate([best_d, d], axis=1)
    I = np.concatenate([best_i, np.broadcast_to(rows, d.shape)], axis=1)
    order = np.lexsort((I, D), axis=1)[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def _search_flat(X, Qp, allowed, k, metric, chunk_rows):
    q = Qp.shape[0]
    best_d = np.full((q, 0), np.inf, dtype=np.float64)
    best_i = np.full((q, 0), -1, dtype=np.int64)
    for a, b in iter_chunks(X.shape[0], chunk_rows):
        ok = np.flatnonzero(allowed[a:b])
        if not ok.shape[0]:
            continue
        Xc = _prep(np.asarray(X[a:b]), metric, "embeddings", a)[ok]
        d = _distances(Qp, Xc, metric).astype(np.float64)
        best_d, best_i = _merge(best_d, best_i, d, (ok + a).astype(np.int64)[None, :], k)
    return best_d, best_i


def _top_k(d: np.ndarray, i: np.ndarray, k: int):
    """The ``k`` smallest ``(distance, row)`` of candidate columns, in that order (ties: smaller row)."""
    if d.shape[0] > k:
        cut = np.partition(d, k - 1)[k - 1]
        keep = d <= cut  # every tie at the cut, so the row tie-break below sees them all
        d, i = d[keep], i[keep]
    o = np.lexsort((i, d))[:k]
    return d[o], i[o]


def _search_ivf(index, Qp, allowed, k, nprobe):
    """Per query: the rows of its ``nprobe`` nearest cells; more cells (doubling) while fewer
    than ``k`` allowed rows were seen, so every list is full.

    Cell by cell: each probed cell's rows are scored against all the queries that probe it
    in one matrix product (a query set on one concept probes much the same cells), then
    each query keeps its ``k`` best (:func:`_top_k`). A query whose cells hold fewer than
    ``k`` allowed rows goes on to more cells, alone (:func:`_search_ivf_one`).
    """
    import faiss

    Xp, order, cell_ptr, C, metric = index._Xp, index._order, index._cell_ptr, index._C, index.metric
    ok_sorted = allowed[order]
    all_ok = bool(ok_sorted.all())
    fm = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    nlist = C.shape[0]
    _, cells = faiss.knn(Qp, C, nlist, metric=fm)  # every cell, nearest first: q x nlist ints
    q = Qp.shape[0]
    p = min(int(nprobe), nlist)
    best_d = np.full((q, k), np.inf)
    best_i = np.full((q, k), -1, dtype=np.int64)
    cand_d = [[] for _ in range(q)]
    cand_i = [[] for _ in range(q)]
    probe = cells[:, :p].ravel()
    who = np.repeat(np.arange(q), p)
    keep = probe >= 0
    probe, who = probe[keep], who[keep]
    o = np.argsort(probe, kind="stable")
    probe, who = probe[o], who[o]
    bounds = np.flatnonzero(np.r_[True, probe[1:] != probe[:-1], True])
    for s, e in zip(bounds[:-1], bounds[1:]):
        c = int(probe[s])
        a, b = int(cell_ptr[c]), int(cell_ptr[c + 1])
        if all_ok:
            rows_c, Xc = order[a:b], Xp[a:b]
        else:
            pos = np.flatnonzero(ok_sorted[a:b]) + a
            rows_c, Xc = order[pos], Xp[pos]
        if not rows_c.shape[0]:
            continue
        J = who[s:e]
        D = _distances(Qp[J], Xc, metric)
        for t, j in enumerate(J):
            cand_d[j].append(D[t])
            cand_i[j].append(rows_c)
    short = []
    for j in range(q):
        if cand_d[j]:
            d, i = _top_k(np.concatenate(cand_d[j]).astype(np.float64), np.concatenate(cand_i[j]).astype(np.int64), k)
        else:
            d, i = np.empty(0), np.empty(0, dtype=np.int64)
        cand_d[j] = cand_i[j] = None
        if i.shape[0] < k and p < nlist:
            short.append(j)
        best_d[j, : d.shape[0]], best_i[j, : i.shape[0]] = d, i
    if short:
        sd, si = _search_ivf_one(index, Qp[short], cells[short], ok_sorted, k, 2 * p)
        best_d[short], best_i[short] = sd, si
    return best_d, best_i


def _search_ivf_one(index, Qp, cells, ok_sorted, k, nprobe):
    """:func:`_search_ivf` one query at a time, ``nprobe`` cells first and doubling (queries whose
    first cells are short of ``k`` allowed rows)."""
    Xp, order, cell_ptr, metric = index._Xp, index._order, index._cell_ptr, index.metric
    nlist = cells.shape[1]
    q = Qp.shape[0]
    best_d = np.full((q, k), np.inf)
    best_i = np.full((q, k), -1, dtype=np.int64)
    for j in range(q):
        p, taken = min(int(nprobe), nlist), 0
        bd, bi = best_d[j:j + 1, :0], best_i[j:j + 1, :0]
        while True:
            new = [c for c in cells[j, taken:p] if c >= 0]
            if new:
                pos = np.concatenate([np.arange(cell_ptr[c], cell_ptr[c + 1]) for c in new])
                pos = pos[ok_sorted[pos]]
                if pos.shape[0]:
                    d = _distances(Qp[j:j + 1], Xp[pos], metric).astype(np.float64)
                    bd, bi = _merge(bd, bi, d, order[pos][None, :], k)
            taken = p
            if bi.shape[1] >= k or p >= nlist:
                break
            p = min(nlist, 2 * p)
        best_d[j, : bd.shape[1]], best_i[j, : bi.shape[1]] = bd[0], bi[0]
    return best_d, best_i


class SimilarIndex:
    """The pool's embeddings made ready for repeated :meth:`query` calls.

    Building is the costly part above the exact threshold (k-means cells and one
    float32 copy of the pool in cell order, :func:`batchal.clustering.knn.prepare_rows`);
    a query then scans only its cells. Below the threshold nothing is copied and
    every query streams the pool.

    Parameters
    ----------
    embeddings : array (n, d)
    metric : {"cosine", "euclidean"}
    method : {"auto", "flat", "ivf"}
        ``auto``: exact up to ``exact_max_rows`` rows (default
        :data:`batchal.clustering.knn.EXACT_MAX_ROWS`), IVF above.
    exact_max_rows : int, optional
    seed : int
        Seed of the IVF k-means.
    chunk_rows : int
        Rows per chunk of the exact search.

    Attributes
    ----------
    method : str
        ``"flat"`` or ``"ivf"``, as chosen.
    n, dim : int
    """

    def __init__(self, embeddings, *, metric: str = "cosine", method: str = "auto", exact_max_rows: int | None = None,
                 seed: int = 0, chunk_rows: int = 1 << 16):
        from .clustering.knn import EXACT_MAX_ROWS, prepare_rows

        if metric not in SIMILAR_METRICS:
            raise BatchalInputError(f"unknown metric {metric!r}; use one of {', '.join(SIMILAR_METRICS)}")
        if method not in ("auto", "flat", "ivf"):
            raise BatchalInputError(f"unknown search method {method!r}; use auto, flat or ivf")
        X = embeddings
        if getattr(X, "ndim", None) != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise BatchalInputError(f"embeddings must be a non-empty 2-d array (n, d); got shape "
                                    f"{getattr(X, 'shape', None)}")
        check_finite(X, "embeddings")
        self.metric, self.chunk_rows = metric, check_count(chunk_rows, "chunk_rows", 1)
        check_seed(seed)
        self.n, self.dim = X.shape
        self._X = X
        limit = EXACT_MAX_ROWS if exact_max_rows is None else check_count(exact_max_rows, "exact_max_rows", 0)
        self.method = method if method != "auto" else ("flat" if self.n <= limit else "ivf")
        if self.method == "ivf":
            self._Xp, self._order, self._cell_ptr, self._C, _ = prepare_rows(X, metric, method="ivf",
                                                                             random_state=seed)

    def _search(self, Qp: np.ndarray, allowed: np.ndarray, k: int, nprobe: int):
        """Per prepared query, its ``k`` nearest allowed rows: ``(D, I)`` (q, k), ``-1`` where fewer exist."""
        check_count(nprobe, "nprobe", 1, note="IVF cells searched per query")  # also where a flat search ignores it
        if self.method == "flat":
            return _search_flat(self._X, Qp, allowed, k, self.metric, self.chunk_rows)
        return _search_ivf(self, Qp, allowed, k, nprobe)

    def neighbourhood(self, rows: np.ndarray, k: int, *, allowed: np.ndarray, nprobe: int = DEFAULT_NPROBE,
                      chunk: int = 1024) -> np.ndarray:
        """Bool mask (n,): the union over ``rows`` of each row's ``k`` nearest ``allowed`` rows.

        SEALS' candidate pool (Coleman et al., AAAI 2022): every labeled row
        contributes its own ``k`` nearest unlabeled neighbours (unlike
        :meth:`query`, which keeps the ``k`` nearest to the set as a whole).
        Queries run in chunks of ``chunk`` rows: memory O(chunk x k).
        """
        mask = np.zeros(self.n, dtype=bool)
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        for a in range(0, rows.shape[0], chunk):
            Qp = _prep(np.asarray(self._X[rows[a:a + chunk]]), self.metric, "embeddings", 0)
            _, I = self._search(Qp, allowed, int(k), nprobe)
            mask[I[I >= 0]] = True
        return mask

    def query(self, query=None, k: int = 100, *, query_rows=None, labeled=None, probs=None, logits=None,
              multilabel: bool = False, nprobe: int = DEFAULT_NPROBE, return_distance: bool = False):
        """The ``k`` allowed rows nearest to the query set; see :func:`similar` for the parameters."""
        n, dim, X, metric = self.n, self.dim, self._X, self.metric
        if (query is None) == (query_rows is None):
            raise BatchalInputError("give the queries once: query embeddings or query_rows (rows of the pool)")
        excluded = labeled_mask(labeled, n).copy()
        if query_rows is not None:
            qr = np.asarray(query_rows)
            if qr.ndim != 1 or qr.shape[0] == 0 or not np.issubdtype(qr.dtype, np.integer):
                raise BatchalInputError(f"query rows must be a non-empty 1-d array of row indices; got shape "
                                        f"{qr.shape}, dtype {qr.dtype}")
            if qr.min() < 0 or qr.max() >= n:
                raise BatchalInputError(f"query rows out of range: {int(qr.min() if qr.min() < 0 else qr.max())} "
                                        f"(the pool has {n:,} rows)")
            query = np.asarray(X[np.sort(qr)])
            excluded[qr] = True
        Q = np.asarray(query)
        if Q.ndim == 1:
            Q = Q[None, :]
        if Q.ndim != 2 or Q.shape[0] == 0:
            raise BatchalInputError(f"query must be a non-empty (q, d) array; got shape {np.shape(query)}")
        if Q.shape[1] != dim:
            raise BatchalInputError(f"query has dimension {Q.shape[1]} but the embeddings have {dim}")
        if not np.issubdtype(Q.dtype, np.number):
            raise BatchalInputError(f"query must hold numbers; got dtype {Q.dtype}")
        check_finite(Q, "query")
        check_count(k, "k", 1)
        left = int(n - excluded.sum())
        if k > left:
            raise BatchalInputError(f"k = {k:,} is larger than the rows that can be returned ({left:,}: the pool "
                                    "less labeled and query rows)")
        margin = None
        if probs is not None and logits is not None:
            raise BatchalInputError("give one kind of predictions (probs or logits), not both")
        if probs is not None or logits is not None:
            # scored here, not through selectors.Pool: the selectors' candidate restriction reads this module
            from ._validation import check_2d
            from .scores import uncertainty
            from .topk import TopK

            if isinstance(probs, TopK):
                n_pred = probs.n
                margin = lambda: probs.uncertainty("margin", multilabel=multilabel)  # noqa: E731
            else:
                arr = check_2d(probs if probs is not None else logits, "probs" if probs is not None else "logits")
                n_pred = arr.shape[0]
                margin = lambda: uncertainty("margin", arr if probs is not None else None,  # noqa: E731
                                             logits=arr if logits is not None else None, multilabel=multilabel)
            if n_pred != n:
                raise BatchalInputError(f"predictions have {n_pred:,} rows but the embeddings have {n:,}")
        D, I = self._search(_prep(Q, metric, "query"), ~excluded, int(k), nprobe)
        # union of the per-query lists, each row at its nearest query's distance, k smallest
        flat_i, flat_d = I.ravel(), D.ravel()
        keep = flat_i >= 0
        flat_i, flat_d = flat_i[keep], flat_d[keep]
        o = np.lexsort((flat_i, flat_d))
        flat_i, flat_d = flat_i[o], flat_d[o]
        _, first = np.unique(flat_i, return_index=True)
        first = np.sort(first)[:k]
        rows, dist = flat_i[first].astype(np.int64), flat_d[first]
        if margin is not None:
            m = margin()[rows]  # larger = more uncertain; streamed once per pool
            o = np.lexsort((rows, dist, -m))
            rows, dist = rows[o], dist[o]
        return (rows, dist) if return_distance else rows


def nearest_query_similarity(embeddings, rows: np.ndarray, query, *, budget: int = 1 << 22) -> np.ndarray:
    """Each of ``rows``' cosine similarity to its nearest query: float64 (m,), in ``[-1, 1]``.

    Parameters
    ----------
    embeddings : array (n, d)
        The pool's embeddings (a memory map is read only at ``rows``, in row order).
    rows : int array (m,)
        Pool rows to score.
    query : array (q, d)
        Query embeddings.
    budget : int
        The most values held at once: rows and queries are both tiled, so the
        similarities of a tile and the rows read for it stay O(budget) floats for
        any ``m`` and ``q`` (no (m, q) matrix).

    Raises
    ------
    BatchalInputError
        A query of another dimension, a zero row (cosine is undefined), NaN or inf.
    """
    Q = np.asarray(query)
    if Q.ndim != 2 or Q.shape[0] == 0:
        raise BatchalInputError(f"query must be a non-empty (q, d) array; got shape {Q.shape}")
    if Q.shape[1] != embeddings.shape[1]:
        raise BatchalInputError(f"query has dimension {Q.shape[1]} but the embeddings have {embeddings.shape[1]}")
    check_finite(Q, "query")
    Qp = _prep(Q, "cosine", "query")
    rows = np.asarray(rows, dtype=np.int64)
    out = np.full(rows.shape[0], -np.inf)
    q_step = max(1, min(Qp.shape[0], budget // 1024))
    r_step = max(1, min(budget // q_step, budget // Qp.shape[1]))  # the tile and the rows read both O(budget)
    order = np.argsort(rows, kind="stable")  # read in row order; written back in the caller's order
    for a in range(0, rows.shape[0], r_step):
        sel = order[a:a + r_step]
        X = np.asarray(embeddings[rows[sel]], dtype=np.float32)
        bad = first_nonfinite(X)
        if bad is not None:
            raise BatchalInputError(f"embeddings row {int(rows[sel][bad[0]])} has {bad[1]}")
        Xp = _prep(X, "cosine", "embeddings", rows=rows[sel])
        best = np.full(sel.shape[0], -np.inf, dtype=np.float32)
        for b in range(0, Qp.shape[0], q_step):
            np.maximum(best, (Xp @ Qp[b:b + q_step].T).max(axis=1), out=best)
        out[sel] = best
    return out


def similar(embeddings, query=None, k: int = 100, *, query_rows=None, metric: str = "cosine", labeled=None,
            probs=None, logits=None, multilabel: bool = False, method: str = "auto", nprobe: int = DEFAULT_NPROBE,
            exact_max_rows: int | None = None, seed: int = 0, return_distance: bool = False,
            chunk_rows: int = 1 << 16):
    """The ``k`` unlabeled pool rows nearest to a query set.

    Parameters
    ----------
    embeddings : array (n, d)
        The pool's embeddings (a memory map is read in row chunks).
    query : array (q, d), optional
        Query embeddings (e.g. of a few examples of a rare failure).
    k : int
        How many rows to return (at most the rows not labeled and not queries).
    query_rows : int array, optional
        Queries given as pool rows instead (``query`` must then be None); those
        rows are never returned.
    metric : {"cosine", "euclidean"}
    labeled : int indices or bool mask, optional
        Rows never returned.
    probs, logits : array (n, C) or TopK, optional
        Predictions: the ``k`` nearest are then returned most uncertain (smallest
        margin) first, ties by distance.
    multilabel : bool
        Multi-label margin for the re-ranking.
    method : {"auto", "flat", "ivf"}
        ``auto``: exact below :data:`batchal.clustering.knn.EXACT_MAX_ROWS` rows, IVF above.
    nprobe : int
        IVF cells scanned per query.
    exact_max_rows : int, optional
        Override the ``auto`` threshold.
    seed : int
        Seed of the IVF k-means.
    return_distance : bool
        Also return each row's distance to its nearest query.

    Returns
    -------
    int64 array (k,) of rows (and float64 (k,) distances with ``return_distance``).

    Notes
    -----
    Builds a :class:`SimilarIndex` and queries it once; keep the index to query
    the same pool again without rebuilding it.

    Raises
    ------
    BatchalInputError
        Unknown metric or method, a query whose dimension differs from the pool's,
        NaN or inf, a zero row under cosine, ``k`` larger than the rows left, bad
        labeled or query rows.
    """
    index = SimilarIndex(embeddings, metric=metric, method=method, exact_max_rows=exact_max_rows, seed=seed,
                         chunk_rows=chunk_rows)
    return index.query(query, k, query_rows=query_rows, labeled=labeled, probs=probs, logits=logits,
                       multilabel=multilabel, nprobe=nprobe, return_distance=return_distance)
