"""numba kernels for graph-restricted exact average-linkage HAC (RAC rounds).

Why hand-written: no library merges clusters over a sparse graph while keeping
the *true* average linkage from per-cluster statistics; scipy/fastcluster need
all n^2 distances.

Model. Every cluster lives in a "slot" (the slot of its smaller-numbered
child after a merge) holding its sufficient statistics: size, the vector sum
``S`` of its (unit, for cosine) rows and the sum of squared norms ``sq``. The
average linkage of clusters A and B over all |A||B| cross pairs is then exact:

* cosine (rows unit-normalised): ``1 - S_A . S_B / (|A| |B|)``
* squared euclidean: ``sq_A/|A| + sq_B/|B| - 2 S_A . S_B / (|A| |B|)``

The graph only decides which clusters may merge: each slot keeps an adjacency
list (ids into an arena, with the cached linkage as weight). A round finds
every reciprocal-nearest-neighbour pair (RAC, Sumengen et al. 2021) and merges
them all. Lists are rebuilt lazily: a list entry pointing to a merged-away
slot is resolved through ``parent`` (always one hop, because every neighbour
of a merged pair is rebuilt in the very next round), duplicates are dropped,
and only weights whose endpoints changed since the last rebuild are
recomputed, so the cost per merge is O(degree * d).

Contract: ``S`` float32 or float64 C-contiguous (n, d); ``size``/``sq``
float64; ids int32; ``start`` int64; ``length`` int64; ``wt`` float32 or
float64 (weights), heights written to ``Z`` are recomputed in float64.
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

COSINE = 0
SQEUCLIDEAN = 1


def symmetrize_knn(I, n, slack):
    """Undirected CSR of a directed kNN list ``I`` (n, k) int32 (-1 = none).

    Returns ``(indptr, nbrs, cap)``: ``nbrs`` has capacity for
    ``max(nnz * slack, 2 n k)`` entries (the HAC arena), rows sorted and unique.
    (A Python driver: numba cannot cache a serial function calling a parallel one.)
    """
    I = np.ascontiguousarray(I, dtype=np.int32)
    tmp_ptr, nbrs = _sym_fill(I, n)
    uniq = np.zeros(n, dtype=np.int64)
    _sort_unique_rows(nbrs, tmp_ptr, uniq)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(uniq, out=indptr[1:])
    _sym_compact(nbrs, tmp_ptr, indptr, uniq)
    want = int(indptr[n] * slack) + 1
    if want > nbrs.shape[0]:
        out = np.empty(want, dtype=np.int32)
        out[: indptr[n]] = nbrs[: indptr[n]]
        return indptr, out, want
    return indptr, nbrs, nbrs.shape[0]


@njit(cache=True)
def _sym_fill(I, n):
    m, k = I.shape
    deg = np.zeros(n + 1, dtype=np.int64)
    for u in range(m):
        for j in range(k):
            v = I[u, j]
            if v >= 0 and v != u:
                deg[u + 1] += 1
                deg[v + 1] += 1
    tmp_ptr = np.cumsum(deg)
    nbrs = np.empty(max(tmp_ptr[n], 1), dtype=np.int32)
    fill = tmp_ptr[:n].copy()
    for u in range(m):
        for j in range(k):
            v = I[u, j]
            if v >= 0 and v != u:
                nbrs[fill[u]] = v
                fill[u] += 1
                nbrs[fill[v]] = u
                fill[v] += 1
    return tmp_ptr, nbrs


@njit(cache=True)
def _sym_compact(nbrs, tmp_ptr, indptr, uniq):
    # leftwards in place: the destination never passes the source
    for u in range(uniq.shape[0]):
        s = tmp_ptr[u]
        d = indptr[u]
        for j in range(uniq[u]):
            nbrs[d + j] = nbrs[s + j]


@njit(parallel=True, cache=True)
def _sort_unique_rows(nbrs, ptr, uniq):
    n = uniq.shape[0]
    for u in prange(n):
        a = ptr[u]
        b = ptr[u + 1]
        if b == a:
            continue
        row = np.sort(nbrs[a:b])
        w = 0
        for j in range(row.shape[0]):
            if j == 0 or row[j] != row[j - 1]:
                nbrs[a + w] = row[j]
                w += 1
        uniq[u] = w


@njit(fastmath=True, cache=True, inline="always")
def _link(S, size, sq, a, b, metric):
    """Exact average linkage of the clusters in slots a and b (float64)."""
    d = S.shape[1]
    dot = 0.0
    for j in range(d):
        dot += np.float64(S[a, j]) * np.float64(S[b, j])
    nab = size[a] * size[b]
    if metric == COSINE:
        return 1.0 - dot / nab
    return sq[a] / size[a] + sq[b] / size[b] - 2.0 * dot / nab


@njit(parallel=True, fastmath=True, cache=True)
def _rebuild(dirty, ndirty, S, size, sq, parent, stamp, built, start, length, nbr, wt,
             nn, nnw, marks, it, metric):
    """Resolve, dedupe and re-weight the lists of the dirty slots; pick their nearest neighbour."""
    nt = marks.shape[0]
    n = parent.shape[0]
    for t in prange(nt):
        mark = marks[t]
        for i in range(t, ndirty, nt):
            x = dirty[i]
            key = np.int64(it) * n + x
            s = start[x]
            L = length[x]
            bx = built[x]
            xchanged = stamp[x] >= bx
            w = 0
            best = -1
            bestw = np.inf
            for e in range(s, s + L):
                y0 = nbr[e]
                y = y0
                while parent[y] != y:
                    y = parent[y]
                if y == x or mark[y] == key:
                    continue
                mark[y] = key
                if xchanged or y != y0 or stamp[y] >= bx:
                    v = _link(S, size, sq, x, y, metric)
                    wt[s + w] = v
                else:
                    wt[s + w] = wt[e]
                nbr[s + w] = y
                v = wt[s + w]
                if v < bestw or (v == bestw and y < best):
                    best = y
                    bestw = v
                w += 1
            length[x] = w
            built[x] = it
            nn[x] = best
            nnw[x] = bestw


@njit(cache=True)
def _compact(start, length, nbr, wt):
    """Move all non-empty lists to the front of the arena (in place); returns the new end."""
    idx = np.flatnonzero(length > 0).astype(np.int64)
    order = np.argsort(start[idx])
    end = 0
    for oi in range(order.shape[0]):
        x = idx[order[oi]]
        s = start[x]
        L = length[x]
        if s != end:
            for j in range(L):
                nbr[end + j] = nbr[s + j]
                wt[end + j] = wt[s + j]
            start[x] = end
        end += L
    return end


def rac(S, size, sq, parent, alive, node_id, stamp, built, start, length, nbr, wt, end,
        dirty0, Z, zc, n_leaves, metric, it):
    """Run RAC rounds until no reciprocal pair is left (then no edges remain).

    Parameters are the persistent state; ``dirty0`` lists the slots to examine
    first (every slot with a non-empty list); ``built[x] = -1`` forces all of
    x's weights to be computed. A Python loop over rounds, because numba cannot
    cache a serial function that calls a parallel one.

    Returns ``(nbr, wt, end, zc, it, rounds)`` (the arena may have been regrown).
    """
    n = parent.shape[0]
    nt = get_num_threads()
    marks = np.full((nt, n), -1, dtype=np.int64)
    nn = np.full(n, -1, dtype=np.int32)
    nnw = np.full(n, np.inf, dtype=np.float64)
    isdirty = np.zeros(n, dtype=np.uint8)
    dirty = np.empty(n, dtype=np.int32)
    ndirty = dirty0.shape[0]
    dirty[:ndirty] = dirty0
    isdirty[dirty0] = 1
    pa = np.empty(n // 2 + 1, dtype=np.int32)
    pb = np.empty(n // 2 + 1, dtype=np.int32)
    rounds = 0
    while ndirty > 0:
        rounds += 1
        _rebuild(dirty, ndirty, S, size, sq, parent, stamp, built, start, length, nbr, wt,
                 nn, nnw, marks, it, metric)
        ndirty, end, zc, nbr, wt = _merge_round(
            dirty, ndirty, isdirty, nn, pa, pb, S, size, sq, parent, alive, node_id, stamp,
            start, length, nbr, wt, end, Z, zc, n_leaves, metric, it)
        it += 1
    return nbr, wt, end, zc, it, rounds


@njit(cache=True)
def _merge_round(dirty, ndirty, isdirty, nn, pa, pb, S, size, sq, parent, alive, node_id,
                 stamp, start, length, nbr, wt, end, Z, zc, n_leaves, metric, it):
    """Merge every reciprocal-nearest pair among the dirty slots; collect the next dirty set."""
    npairs = 0
    for i in range(ndirty):
        x = dirty[i]
        y = nn[x]
        if y < 0:
            continue
        if nn[y] == x and (x < y or isdirty[y] == 0):
            if x < y:
                pa[npairs] = x
                pb[npairs] = y
            else:
                pa[npairs] = y
                pb[npairs] = x
            npairs += 1
    for i in range(ndirty):
        isdirty[dirty[i]] = 0
    ndirty = 0
    for p in range(npairs):
        a = pa[p]
        b = pb[p]
        h = _link(S, size, sq, a, b, metric)
        ia = node_id[a]
        ib = node_id[b]
        Z[zc, 0] = min(ia, ib)
        Z[zc, 1] = max(ia, ib)
        Z[zc, 2] = h
        Z[zc, 3] = size[a] + size[b]
        node_id[a] = n_leaves + zc
        zc += 1
        for j in range(S.shape[1]):
            S[a, j] += S[b, j]
        size[a] += size[b]
        sq[a] += sq[b]
        parent[b] = a
        alive[b] = 0
        stamp[a] = it
        La = length[a]
        Lb = length[b]
        need = La + Lb
        if end + need > nbr.shape[0]:
            end = _compact(start, length, nbr, wt)
            if end + need > nbr.shape[0]:
                newcap = max(2 * nbr.shape[0], end + need + 1)
                nbr2 = np.empty(newcap, dtype=nbr.dtype)
                wt2 = np.empty(newcap, dtype=wt.dtype)
                nbr2[:end] = nbr[:end]
                wt2[:end] = wt[:end]
                nbr = nbr2
                wt = wt2
        sa = start[a]
        sb = start[b]
        for j in range(La):
            nbr[end + j] = nbr[sa + j]
            wt[end + j] = wt[sa + j]
        for j in range(Lb):
            nbr[end + La + j] = nbr[sb + j]
            wt[end + La + j] = wt[sb + j]
        start[a] = end
        length[a] = need
        length[b] = 0
        end += need
    # next round: merged slots and every neighbour of a merged pair
    for p in range(npairs):
        a = pa[p]
        if isdirty[a] == 0:
            isdirty[a] = 1
            dirty[ndirty] = a
            ndirty += 1
        s = start[a]
        for e in range(s, s + length[a]):
            y = nbr[e]
            while parent[y] != y:
                y = parent[y]
            if isdirty[y] == 0:
                isdirty[y] = 1
                dirty[ndirty] = y
                ndirty += 1
    return ndirty, end, zc, nbr, wt


@njit(cache=True)
def monotone_heights(Z, n):
    """Raise each merge height to at least its children's; returns the count raised."""
    raised = 0
    for i in range(Z.shape[0]):
        h = Z[i, 2]
        for c in range(2):
            ch = int(Z[i, c])
            if ch >= n:
                hc = Z[ch - n, 2]
                if hc > h:
                    h = hc
        if h > Z[i, 2]:
            raised += 1
            Z[i, 2] = h
    return raised
