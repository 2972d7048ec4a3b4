"""numba kernel for Cluster-Margin's round-robin.

Hand-written because the round-robin is a sequential scan (a member's pass
number is how many members of its cluster came before it in the random
order); numpy would need several O(m) sorts and int64 temporaries, which at
m = 1M candidates cost more memory than the inputs themselves. This kernel is
one O(m) scan with int32 per-cluster counters.
"""
from __future__ import annotations

import numpy as np
from numba import njit


def dense_cluster_ids(cluster_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Cluster ids usable as array indices: as given when small and non-negative, else renumbered."""
    lo, hi = int(cluster_ids.min()), int(cluster_ids.max())
    if lo >= 0 and hi < max(4 * cluster_ids.shape[0], 1 << 20):
        return cluster_ids, hi + 1
    uniq, inv = np.unique(cluster_ids, return_inverse=True)
    return inv.astype(np.int32), uniq.shape[0]


@njit(cache=True)
def take_in_passes(cids, perm, pos, n_pos, last_pass, last_pos, k):
    """Scan candidates in random order; keep those visited before the batch is full.

    A member with pass number ``r`` (its rank within its cluster in the random
    order) in the cluster at visiting position ``p`` is taken when
    ``r < last_pass`` or (``r == last_pass`` and ``p < last_pos``). Returns the
    taken members' indices into ``cids`` and their sort keys ``r * n_pos + p``.
    """
    seen = np.zeros(pos.shape[0], dtype=np.int32)
    out = np.empty(k, dtype=np.int64)
    keys = np.empty(k, dtype=np.int64)
    t = 0
    for j in range(perm.shape[0]):
        i = perm[j]
        c = cids[i]
        r = seen[c]
        seen[c] = r + 1
        p = pos[c]
        if r < last_pass or (r == last_pass and p < last_pos):
            out[t] = i
            keys[t] = np.int64(r) * n_pos + p
            t += 1
            if t == k:
                break
    return out[:t], keys[:t]


@njit(cache=True)
def margin_order_keys(cids, n_ids):
    """Visiting keys of a margin-ordered round-robin over candidates already in margin order.

    A candidate's pass number ``r`` is how many members of its cluster precede it
    (so each cluster gives its most uncertain member first) and its cluster's
    visiting position ``p`` is the rank of the cluster's first (most uncertain)
    member among the clusters; the key is ``r * n_clusters + p``. One O(m) scan
    with int32 per-cluster counters, for the reason given in the module docstring.
    Returns the keys and the number of distinct clusters.
    """
    m = cids.shape[0]
    seen = np.zeros(n_ids, dtype=np.int32)
    pos = np.full(n_ids, -1, dtype=np.int32)
    r = np.empty(m, dtype=np.int64)
    p = np.empty(m, dtype=np.int64)
    n_pos = 0
    for i in range(m):
        c = cids[i]
        if pos[c] < 0:
            pos[c] = n_pos
            n_pos += 1
        r[i] = seen[c]
        seen[c] += 1
        p[i] = pos[c]
    keys = np.empty(m, dtype=np.int64)
    for i in range(m):
        keys[i] = r[i] * n_pos + p[i]
    return keys, n_pos


@njit(cache=True)
def _missing_gap(p, bound, multilabel):
    """Smallest possible |p - x| for a class value x missing from a row's top-k.

    Multi-class: x lies in [0, bound]. Multi-label: x lies at least ``bound`` away from
    0.5 (the row kept the classes nearest 0.5), on either side.
    """
    if multilabel:
        g = bound - abs(p - 0.5)
    else:
        g = p - bound
    return g if g > 0.0 else 0.0


@njit(cache=True)
def topk_close(ci, pi, bi, cj, pj, bj, tol, multilabel):
    """Whether two top-k rows can be near-duplicates: every class of their union within ``tol``.

    A class in both rows compares its two probabilities (float32 arithmetic, as the dense
    kernel); a class in one row only compares with the value the other row's layout allows
    nearest to it (:func:`_missing_gap`); a class in neither row can be equal in both.
    O(k^2) per pair, with no allocation (k is small: 10 at the paper's size).
    """
    k = ci.shape[0]
    for a in range(k):
        c = ci[a]
        found = -1
        for b in range(k):
            if cj[b] == c:
                found = b
                break
        if found >= 0:
            if abs(pi[a] - pj[found]) > tol:
                return False
        elif _missing_gap(pi[a], bj, multilabel) > tol:
            return False
    for b in range(k):
        c = cj[b]
        found = False
        for a in range(k):
            if ci[a] == c:
                found = True
                break
        if not found and _missing_gap(pj[b], bi, multilabel) > tol:
            return False
    return True


@njit(cache=True)
def _dense_close(P, i, j, tol):
    """Whether no class probability of rows ``i`` and ``j`` differs by more than ``tol``."""
    for q in range(P.shape[1]):
        if abs(P[i, q] - P[j, q]) > tol:
            return False
    return True


@njit(cache=True)
def _cosine_close(E, i, j, tol):
    """Whether unit rows ``i`` and ``j`` are within cosine distance ``tol`` (``1 - <e_i, e_j> <= tol``)."""
    dot = 0.0
    for q in range(E.shape[1]):
        dot += E[i, q] * E[j, q]
    return 1.0 - dot <= tol


@njit(cache=True)
def _passes(cids, P, cls, bounds, tol, max_reps, mode):
    """The near-duplicate scan shared by dense (``mode`` 0), top-k rows (1: multi-class, 2: multi-label)
    and unit-norm embeddings (3: cosine distance).

    A candidate is a near-duplicate of an earlier *representative* of its
    cluster when the two rows are close (:func:`_dense_close`, :func:`topk_close`
    or :func:`_cosine_close`); its pass is then that representative's running count
    of duplicates, else it becomes a representative with pass 0. At most
    ``max_reps`` most recent representatives of a cluster are compared, which
    bounds the cost at O(m * max_reps * C) even for one huge cluster.
    Hand-written: a sequential scan whose state (the representatives seen so
    far) changes at every step, which numpy cannot express.
    """
    m = cids.shape[0]
    last_rep = np.full(cids.max() + 1, -1, dtype=np.int64)
    prev_rep = np.full(m, -1, dtype=np.int64)
    dups = np.zeros(m, dtype=np.int32)
    passes = np.zeros(m, dtype=np.int64)
    for i in range(m):
        c = cids[i]
        j = last_rep[c]
        seen = 0
        found = -1
        while j >= 0 and seen < max_reps:
            if mode == 0:
                close = _dense_close(P, i, j, tol)
            elif mode == 3:
                close = _cosine_close(P, i, j, tol)
            else:
                close = topk_close(cls[i], P[i], bounds[i], cls[j], P[j], bounds[j], tol, mode == 2)
            if close:
                found = j
                break
            j = prev_rep[j]
            seen += 1
        if found >= 0:
            dups[found] += 1
            passes[i] = dups[found]
        else:
            prev_rep[i] = last_rep[c]
            last_rep[c] = i
    return passes


def near_duplicate_passes(cids, P, tol, max_reps):
    """Pass number of each candidate (already in margin order): near-duplicates when every class is within ``tol``."""
    none = np.zeros((0, 1), dtype=np.int32)
    return _passes(cids, P, none, np.zeros(0, dtype=np.float32), tol, max_reps, 0)


def near_duplicate_passes_topk(cids, cls, P, bounds, tol, max_reps, multilabel):
    """:func:`near_duplicate_passes` for top-k rows, comparing pairs with :func:`topk_close`.

    With ``k = C`` (every class listed) the comparisons, and so the passes, are the dense ones.
    """
    return _passes(cids, P, cls, bounds, tol, max_reps, 2 if multilabel else 1)


def embedding_duplicate_passes(cids, E, dup, max_reps):
    """:func:`near_duplicate_passes` on embeddings: near-duplicates when their cosine distance is at most ``dup``.

    ``E`` holds the candidates' embeddings, float32 (m, d), each row of unit norm.
    """
    none = np.zeros((0, 1), dtype=np.int32)
    return _passes(cids, E, none, np.zeros(0, dtype=np.float32), dup, max_reps, 3)
