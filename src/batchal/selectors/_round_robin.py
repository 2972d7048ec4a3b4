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
def near_duplicate_passes(cids, P, tol, max_reps):
    """Pass number of each candidate (already in margin order) under near-duplicate grouping.

    A candidate is a near-duplicate of an earlier *representative* of its
    cluster when no class probability differs by more than ``tol``; its pass is
    then that representative's running count of duplicates, else it becomes a
    representative with pass 0. At most ``max_reps`` most recent representatives
    of a cluster are compared, which bounds the cost at O(m * max_reps * C) even
    for one huge cluster. Hand-written: a sequential scan whose state (the
    representatives seen so far) changes at every step, which numpy cannot express.
    """
    m, C = P.shape
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
            close = True
            for q in range(C):
                if abs(P[i, q] - P[j, q]) > tol:
                    close = False
                    break
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
