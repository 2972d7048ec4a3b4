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
list (ids into an arena; no linkage is stored per entry). A round finds every
reciprocal-nearest-neighbour pair (RAC, Sumengen et al. 2021) among the slots
whose nearest neighbour changed, and merges them all. Then only what changed is
recomputed (see :func:`rac`): each merged cluster's list is resolved through
``parent`` and deduplicated and its linkages computed once, each pushed to the
neighbour (which keeps the better of its nearest and the new cluster), and a
neighbour whose nearest neighbour itself merged is fully rescanned. Entries
pointing to merged-away slots stay in the other lists until those are
rescanned (resolved through ``parent`` with path compression), so the work per
round is proportional to the merged clusters' degrees, not to the graph.

Contract: ``S`` float32 or float64 C-contiguous (n, d); ``size``/``sq``
float64; ids int32; ``start`` int64; ``length`` int64. Every linkage is a
float64 dot product of the stored sums (accumulated in float64), compared
exactly; heights written to ``Z`` are the same float64 values.
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

COSINE = 0
SQEUCLIDEAN = 1


def symmetrize_knn(I, n, slack):
    """Undirected CSR of a directed kNN list ``I`` (n, k) int32 (-1 = none).

    Returns ``(indptr, nbrs, cap)``: ``nbrs`` has capacity for at least
    ``nnz * slack`` entries, rows sorted and unique. ``I`` is not modified (it is
    copied into the arena first); :func:`symmetrize_inplace` avoids that copy.
    """
    I = np.ascontiguousarray(I, dtype=np.int32)
    m, k = I.shape
    arena = np.empty(max(2 * m * k, 1), dtype=np.int32)
    arena[: m * k] = I.reshape(-1)
    indptr = symmetrize_inplace(arena, m, k, n)
    want = int(indptr[n] * slack) + 1
    if want > arena.shape[0]:
        out = np.empty(want, dtype=np.int32)
        out[: indptr[n]] = arena[: indptr[n]]
        return indptr, out, want
    return indptr, arena, arena.shape[0]


def symmetrize_inplace(arena, m, k, n):
    """Symmetrise directed kNN lists held in ``arena[:m * k]`` (row-major, -1 = none) in place.

    On return ``arena[:indptr[n]]`` holds the undirected adjacency (CSR): ``u ~ v``
    if either lists the other; each row sorted, unique, without self loops.
    ``arena`` must have room for ``2 m k`` entries (the most an undirected graph
    of ``m k`` directed edges can need); only the first ``nnz`` are ever
    written, so the untouched tail of a fresh ``np.empty`` costs no memory.

    Memory: besides the arena, 8 bytes per row (x3) and one byte per directed
    edge (the mutual flags); the directed lists and the symmetric graph are
    never held in two buffers.

    Steps: (1) sort and dedupe each directed row in place (parallel); (2) flag
    every directed edge ``v -> u`` whose reverse ``u -> v`` is also listed
    (binary search in the sorted row of ``u``, parallel); (3) count, per row,
    its out-edges plus the in-edges that are not mutual: the exact final
    degree; (4) move the rows to their final offsets, left-packed first, then
    right-to-left so no row overwrites one not yet moved; (5) append the
    non-mutual in-edges; (6) sort each row (parallel).
    """
    outdeg = np.zeros(m, dtype=np.int64)
    if m * k > 0:
        _sort_dedupe_rows(arena, m, k, outdeg)
    flags = np.zeros(max(m * k, 1), dtype=np.uint8)
    if m * k > 0:
        _mutual_flags(arena, m, k, outdeg, flags)
    deg = outdeg.copy() if n == m else np.concatenate([outdeg, np.zeros(n - m, np.int64)])
    _count_in(arena, m, k, outdeg, flags, deg)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(deg, out=indptr[1:])
    del deg
    if indptr[n] > arena.shape[0]:
        raise ValueError("arena too small for the symmetric graph")
    _move_rows(arena, m, k, outdeg, indptr)
    _fill_in(arena, m, k, outdeg, flags, indptr)
    del flags
    _sort_rows(arena, indptr)
    return indptr


@njit(parallel=True, cache=True)
def _sort_dedupe_rows(arena, m, k, outdeg):
    for u in prange(m):
        a = u * k
        row = np.sort(arena[a:a + k])
        w = 0
        for j in range(k):
            v = row[j]
            if v < 0 or v == u or (w > 0 and arena[a + w - 1] == v):
                continue
            arena[a + w] = v
            w += 1
        outdeg[u] = w


@njit(inline="always")
def _has(arena, a, L, v):
    lo = a
    hi = a + L
    while lo < hi:
        mid = (lo + hi) >> 1
        if arena[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo < a + L and arena[lo] == v


@njit(parallel=True, cache=True)
def _mutual_flags(arena, m, k, outdeg, flags):
    for v in prange(m):
        a = v * k
        for j in range(outdeg[v]):
            u = arena[a + j]
            if u < m and _has(arena, u * k, outdeg[u], v):
                flags[a + j] = 1


@njit(cache=True)
def _count_in(arena, m, k, outdeg, flags, deg):
    for v in range(m):
        a = v * k
        for j in range(outdeg[v]):
            if flags[a + j] == 0:
                deg[arena[a + j]] += 1


@njit(cache=True)
def _move_rows(arena, m, k, outdeg, indptr):
    # left-pack (destinations never pass their sources) ...
    pos = 0
    for u in range(m):
        a = u * k
        L = outdeg[u]
        if a != pos:
            for j in range(L):
                arena[pos + j] = arena[a + j]
        pos += L
    # ... then spread right to left to the final offsets (indptr[u] >= packed offset)
    for u in range(m - 1, -1, -1):
        L = outdeg[u]
        pos -= L
        d = indptr[u]
        if d != pos:
            for j in range(L - 1, -1, -1):
                arena[d + j] = arena[pos + j]


@njit(cache=True)
def _fill_in(arena, m, k, outdeg, flags, indptr):
    n = indptr.shape[0] - 1
    fill = np.empty(n, dtype=np.int64)
    for u in range(n):
        fill[u] = indptr[u] + (outdeg[u] if u < m else 0)
    for v in range(m):
        a = indptr[v]
        f = v * k
        for j in range(outdeg[v]):
            if flags[f + j] == 0:
                u = arena[a + j]
                arena[fill[u]] = v
                fill[u] += 1


@njit(parallel=True, cache=True)
def _sort_rows(arena, indptr):
    n = indptr.shape[0] - 1
    for u in prange(n):
        a = indptr[u]
        b = indptr[u + 1]
        if b - a > 1:
            arena[a:b] = np.sort(arena[a:b])


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


@njit(cache=True)
def _compact(start, length, nbr):
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
            start[x] = end
        end += L
    return end


@njit(inline="always")
def _find(parent, y):
    """Root slot of ``y``, compressing the path (other threads write the same roots: benign)."""
    r = y
    while parent[r] != r:
        r = parent[r]
    while parent[y] != r:
        nxt = parent[y]
        parent[y] = r
        y = nxt
    return r


@njit(inline="always")
def _better_link(v, y, bestw, best):
    return v < bestw or (v == bestw and y < best)


@njit(parallel=True, fastmath=True, cache=True)
def _rescan(todo, ntodo, S, size, sq, parent, start, length, nbr, nn, nnw, marks, key0, metric):
    """Resolve and dedupe the lists of slots ``todo[:ntodo]``; each one's nearest neighbour by
    a full recomputation of its linkages (ties: smaller slot)."""
    nt = marks.shape[0]
    n = parent.shape[0]
    for t in prange(nt):
        mark = marks[t]
        for i in range(t, ntodo, nt):
            x = todo[i]
            key = key0 * n + x
            s = start[x]
            w = 0
            best = -1
            bestw = np.inf
            for e in range(s, s + length[x]):
                y = _find(parent, nbr[e])
                if y == x or mark[y] == key:
                    continue
                mark[y] = key
                v = _link(S, size, sq, x, y, metric)
                if _better_link(v, y, bestw, best):
                    best = y
                    bestw = v
                nbr[s + w] = y
                w += 1
            length[x] = w
            nn[x] = best
            nnw[x] = bestw


@njit(parallel=True, cache=True)
def _merge_pairs(pa, pb, npairs, offs, S, size, sq, parent, alive, node_id, start, length, nbr,
                 Z, zc, n_leaves, metric, merged, it):
    """Merge every pair (disjoint, so in parallel): tree row, statistics, concatenated list."""
    d = S.shape[1]
    for p in prange(npairs):
        a = pa[p]
        b = pb[p]
        h = _link(S, size, sq, a, b, metric)
        ia = node_id[a]
        ib = node_id[b]
        z = zc + p
        Z[z, 0] = min(ia, ib)
        Z[z, 1] = max(ia, ib)
        Z[z, 2] = h
        Z[z, 3] = size[a] + size[b]
        node_id[a] = n_leaves + z
        for j in range(d):
            S[a, j] += S[b, j]
        size[a] += size[b]
        sq[a] += sq[b]
        parent[b] = a
        alive[b] = 0
        merged[a] = it
        La = length[a]
        Lb = length[b]
        o = offs[p]
        sa = start[a]
        sb = start[b]
        for j in range(La):
            nbr[o + j] = nbr[sa + j]
        for j in range(Lb):
            nbr[o + La + j] = nbr[sb + j]
        start[a] = o
        length[a] = La + Lb
        length[b] = 0


@njit(parallel=True, fastmath=True, cache=True)
def _push(pa, npairs, S, size, sq, parent, start, length, nbr, nn, nnw, merged, pushed,
          rescan, it, bw, bi, marks, key0, metric):
    """Dedupe each merged cluster's list and send its new linkages to its neighbours.

    Thread ``t`` owns the slots ``y`` with ``y % nt == t``: it computes every
    linkage (x, y) for its y in every merged list, so each neighbour's state is
    written by one thread only (no locks). A neighbour whose nearest neighbour
    was merged this round (or earlier) is flagged for a full rescan; any other
    keeps the better of its nearest and the new cluster, which is exact because
    its other linkages did not change. Each thread's best per merged cluster
    goes to ``bw``/``bi`` (reduced by the caller).
    """
    nt = marks.shape[0]
    n = parent.shape[0]
    # 1. resolve and dedupe the merged lists (parallel over clusters)
    for t in prange(nt):
        mark = marks[t]
        for p in range(t, npairs, nt):
            x = pa[p]
            key = key0 * n + x
            s = start[x]
            w = 0
            for e in range(s, s + length[x]):
                y = _find(parent, nbr[e])
                if y == x or mark[y] == key:
                    continue
                mark[y] = key
                nbr[s + w] = y
                w += 1
            length[x] = w
    # 2. linkages, by owner of the neighbour
    for t in prange(nt):
        for p in range(npairs):
            x = pa[p]
            best = -1
            bestw = np.inf
            s = start[x]
            for e in range(s, s + length[x]):
                y = nbr[e]
                if y % nt != t:
                    continue
                v = _link(S, size, sq, x, y, metric)
                if _better_link(v, y, bestw, best):
                    best = y
                    bestw = v
                if merged[y] == it or rescan[y] == it:
                    continue
                q = nn[y]
                if pushed[y] != it and q >= 0 and (parent[q] != q or merged[q] == it):
                    rescan[y] = it
                    continue
                if q < 0 or _better_link(v, x, nnw[y], q):
                    nn[y] = x
                    nnw[y] = v
                    pushed[y] = it
            bw[t, p] = bestw
            bi[t, p] = best


def rac(S, size, sq, parent, alive, node_id, start, length, nbr, end,
        dirty0, Z, zc, n_leaves, metric, it):
    """Run RAC rounds until no reciprocal pair is left (then no edges remain).

    Parameters are the persistent state; ``dirty0`` lists the slots whose
    nearest neighbour is computed first (every slot with a non-empty list).
    Each round merges every reciprocal-nearest pair among the slots whose
    nearest neighbour changed, then updates only what the merges changed: the
    merged clusters' lists (deduped, every linkage computed once), their
    neighbours' nearest (kept or improved by the new linkage; fully rescanned
    when the nearest itself merged). No linkage is stored per list entry.
    A Python loop over rounds, because numba cannot cache a serial function
    that calls a parallel one.

    Returns ``(nbr, end, zc, it, rounds, compactions)`` (the arena may have been regrown).
    """
    n = parent.shape[0]
    nt = get_num_threads()
    marks = np.full((nt, n), -1, dtype=np.int64)
    nn = np.full(n, -1, dtype=np.int32)
    nnw = np.full(n, np.inf, dtype=np.float64)
    merged = np.full(n, -1, dtype=np.int32)
    pushed = np.full(n, -1, dtype=np.int32)
    rescan = np.full(n, -1, dtype=np.int32)
    cand = np.empty(n, dtype=np.int32)
    incand = np.zeros(n, dtype=np.uint8)
    pa = np.empty(n // 2 + 1, dtype=np.int32)
    pb = np.empty(n // 2 + 1, dtype=np.int32)
    ncand = dirty0.shape[0]
    cand[:ncand] = dirty0
    key = 0  # the marks' generation: (key * n + slot) is unique per (pass, slot)
    _rescan(cand, ncand, S, size, sq, parent, start, length, nbr, nn, nnw, marks, key, metric)
    key += 1
    rounds = 0
    ncomp = 0
    while ncand > 0:
        npairs = _pairs(cand, ncand, incand, nn, pa, pb)
        if npairs == 0:
            break
        rounds += 1
        need = length[pa[:npairs]] + length[pb[:npairs]]
        total = int(need.sum())
        if end + total > nbr.shape[0]:
            end = _compact(start, length, nbr)
            ncomp += 1
            if end + total > nbr.shape[0]:
                grown = np.empty(max(nbr.shape[0] + nbr.shape[0] // 4, end + total + 1), dtype=nbr.dtype)
                grown[:end] = nbr[:end]
                nbr = grown
        offs = np.empty(npairs, dtype=np.int64)
        offs[0] = 0
        np.cumsum(need[:-1], out=offs[1:])
        offs += end
        end += total
        _merge_pairs(pa, pb, npairs, offs, S, size, sq, parent, alive, node_id, start, length, nbr,
                     Z, zc, n_leaves, metric, merged, it)
        zc += npairs
        bw = np.empty((nt, npairs), dtype=np.float64)
        bi = np.empty((nt, npairs), dtype=np.int32)
        _push(pa, npairs, S, size, sq, parent, start, length, nbr, nn, nnw, merged, pushed,
              rescan, it, bw, bi, marks, key, metric)
        key += 1
        _reduce_best(pa, npairs, bw, bi, nn, nnw)
        ncand, nres = _next_candidates(pa, npairs, start, length, nbr, pushed, rescan, it, cand, incand)
        # the slots to rescan were put first in cand
        _rescan(cand, nres, S, size, sq, parent, start, length, nbr, nn, nnw, marks, key, metric)
        key += 1
        it += 1
    return nbr, end, zc, it, rounds, ncomp


@njit(cache=True)
def _pairs(cand, ncand, incand, nn, pa, pb):
    """The reciprocal-nearest pairs among the candidates (each once, smaller slot first)."""
    for i in range(ncand):
        incand[cand[i]] = 1
    npairs = 0
    for i in range(ncand):
        x = cand[i]
        y = nn[x]
        if y >= 0 and nn[y] == x and (x < y or incand[y] == 0):
            pa[npairs] = min(x, y)
            pb[npairs] = max(x, y)
            npairs += 1
    for i in range(ncand):
        incand[cand[i]] = 0
    return npairs


@njit(cache=True)
def _reduce_best(pa, npairs, bw, bi, nn, nnw):
    nt = bw.shape[0]
    for p in range(npairs):
        best = -1
        bestw = np.inf
        for t in range(nt):
            y = bi[t, p]
            if y >= 0 and _better_link(bw[t, p], y, bestw, best):
                best = y
                bestw = bw[t, p]
        nn[pa[p]] = best
        nnw[pa[p]] = bestw


@njit(cache=True)
def _next_candidates(pa, npairs, start, length, nbr, pushed, rescan, it, cand, incand):
    """Slots whose nearest neighbour changed this round: to rescan first, then the rest.

    Returns ``(ncand, nrescan)``; ``cand[:nrescan]`` are the slots to rescan.
    """
    nres = 0
    for p in range(npairs):  # first pass: the rescans
        x = pa[p]
        for e in range(start[x], start[x] + length[x]):
            y = nbr[e]
            if rescan[y] == it and incand[y] == 0:
                incand[y] = 1
                cand[nres] = y
                nres += 1
    ncand = nres
    for p in range(npairs):
        x = pa[p]
        if incand[x] == 0:
            incand[x] = 1
            cand[ncand] = x
            ncand += 1
        for e in range(start[x], start[x] + length[x]):
            y = nbr[e]
            if pushed[y] == it and incand[y] == 0:
                incand[y] = 1
                cand[ncand] = y
                ncand += 1
    for i in range(ncand):
        incand[cand[i]] = 0
    return ncand, nres


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
