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
list (ids into an arena; no linkage is stored per entry, see ``_rebuild``). A round finds
every reciprocal-nearest-neighbour pair (RAC, Sumengen et al. 2021) and merges
them all. Lists are rebuilt lazily: a list entry pointing to a merged-away
slot is resolved through ``parent`` (always one hop, because every neighbour
of a merged pair is rebuilt in the very next round), duplicates are dropped,
and only linkages whose endpoints changed since the last rebuild are
recomputed (unless the slot's nearest neighbour itself merged), so the cost per
merge is O(degree * d).

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
    non-mutual in-edges; (6) merge each row's two sorted runs (parallel).
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
    _merge_rows(arena, indptr, outdeg, k)
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
def _merge_rows(arena, indptr, outdeg, k):
    """Sort each row: its out-edges (sorted) followed by its in-edges (appended in increasing order).

    A merge of the two runs, not a sort: numba's quicksort on two sorted runs was
    5x slower (measured), and the runs are disjoint (an in-edge here is one this
    row does not list). Blocks of rows share one buffer for the first run.
    """
    n = indptr.shape[0] - 1
    m = outdeg.shape[0]
    rows = 4096
    for blk in prange((n + rows - 1) // rows):
        tmp = np.empty(max(k, 1), dtype=arena.dtype)
        for u in range(blk * rows, min(n, (blk + 1) * rows)):
            a = indptr[u]
            b = indptr[u + 1]
            L1 = outdeg[u] if u < m else 0
            if L1 == 0 or a + L1 == b:
                continue
            for j in range(L1):
                tmp[j] = arena[a + j]
            i = 0
            j = a + L1
            w = a
            while i < L1 and j < b:  # w <= j throughout: the writes never pass the reads
                if tmp[i] < arena[j]:
                    arena[w] = tmp[i]
                    i += 1
                else:
                    arena[w] = arena[j]
                    j += 1
                w += 1
            while i < L1:
                arena[w] = tmp[i]
                i += 1
                w += 1


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
def _rebuild(dirty, ndirty, S, size, sq, parent, stamp, built, start, length, nbr,
             nn, nnw, marks, it, metric):
    """Resolve and dedupe the lists of the dirty slots; find each one's nearest neighbour.

    No linkage is stored per list entry; the nearest neighbour is kept exactly
    by this rule: if neither ``x`` nor its previous nearest neighbour ``p`` was
    merged since ``x``'s last rebuild, every entry that did not change still
    has the linkage it had then, which was ``>=`` ``x``'s best, so the new best
    is the better of ``(p, nnw[x])`` and the entries that changed (merged
    clusters, or entries resolved to a new slot): only those are recomputed.
    Otherwise (``x`` merged, ``p`` merged, first build) all entries are.
    Ties go to the smaller slot id either way, so the result equals a full
    recomputation of every entry.
    """
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
            full = stamp[x] >= bx
            best = -1
            bestw = np.inf
            if not full:
                p = nn[x]
                if p < 0 or parent[p] != p or stamp[p] >= bx:
                    full = True
                else:
                    best = p
                    bestw = nnw[x]
            # Duplicates need a merge since x's last build (bx = -1: a fresh, deduplicated
            # list). If x itself merged, its list is two lists joined and any entry can
            # repeat; otherwise its entries were distinct, and two can now meet only in a
            # cluster that merged since (the one a renamed entry resolves to). So only
            # those are marked: most entries then cost one random read (parent and stamp
            # share a cache line in graph.py), not three.
            fresh = bx < 0
            dup_any = not fresh and stamp[x] >= bx
            w = 0
            for e in range(s, s + L):
                y0 = nbr[e]
                y = y0
                while parent[y] != y:
                    y = parent[y]
                if y == x:
                    continue
                changed = y != y0 or stamp[y] >= bx
                if dup_any or (changed and not fresh):
                    if mark[y] == key:
                        continue
                    mark[y] = key
                if full or changed:
                    v = _link(S, size, sq, x, y, metric)
                    if v < bestw or (v == bestw and y < best):
                        best = y
                        bestw = v
                nbr[s + w] = y
                w += 1
            length[x] = w
            built[x] = it
            nn[x] = best
            nnw[x] = bestw


def _compact(start, length, nbr, wt):
    """Move all non-empty lists to the front of the arena (in place); returns the new end.

    ``wt``: per-entry weights moved with the lists (the Ray actors keep them), or
    an empty array (the local merge stores none).
    """
    idx = np.flatnonzero(length > 0)
    # The lists' starts are a few sorted runs (the CSR, then the runs of merged lists
    # appended in slot order): numpy's stable sort (timsort) takes them in one linear
    # pass, where numba's quicksort degrades towards quadratic on such input (6 s for
    # 3M starts against 0.07 s, measured), which made compaction most of the merge.
    order = idx[np.argsort(start[idx], kind="stable")]
    return _compact_move(order, start, length, nbr, wt)


@njit(cache=True)
def _compact_move(order, start, length, nbr, wt):
    weights = wt.shape[0] > 0
    end = 0
    for oi in range(order.shape[0]):
        x = order[oi]
        s = start[x]
        L = length[x]
        if s != end:
            for j in range(L):
                nbr[end + j] = nbr[s + j]
            if weights:
                for j in range(L):
                    wt[end + j] = wt[s + j]
            start[x] = end
        end += L
    return end


def rac(S, size, sq, parent, alive, node_id, stamp, built, start, length, nbr, end,
        dirty0, Z, zc, n_leaves, metric, it, phases=None):
    """Run RAC rounds until no reciprocal pair is left (then no edges remain).

    Parameters are the persistent state; ``dirty0`` lists the slots to examine
    first (every slot with a non-empty list); ``built[x] = -1`` forces all of
    x's linkages to be computed. A Python loop over rounds, because numba cannot
    cache a serial function that calls a parallel one.

    Returns ``(nbr, end, zc, it, rounds, compactions)`` (the arena may have been regrown).
    ``phases``: a dict that accumulates seconds per phase (rebuild, pairs, merge,
    compact, mark) and the slots examined.
    """
    from time import perf_counter

    ph = phases if phases is not None else {}
    for key in ("rebuild_s", "pairs_s", "merge_s", "compact_s", "mark_s", "dirty_slots"):
        ph.setdefault(key, 0)
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
    ncomp = 0
    while ndirty > 0:
        rounds += 1
        ph["dirty_slots"] += ndirty
        t = perf_counter()
        _rebuild(dirty, ndirty, S, size, sq, parent, stamp, built, start, length, nbr,
                 nn, nnw, marks, it, metric)
        t1 = perf_counter()
        ph["rebuild_s"] += t1 - t
        npairs = _find_pairs(dirty, ndirty, isdirty, nn, pa, pb)
        ph["pairs_s"] += perf_counter() - t1
        if npairs:
            # The merged lists go to the end of the arena at offsets known before the
            # (parallel) merge, a run of pairs at a time: as many as fit, then a
            # compaction reclaims their old lists, so the arena grows (by a quarter) only
            # when even a compacted arena cannot hold the next pair: a whole round's
            # lists at once would need a larger arena beside the old one at 10M rows.
            need = length[pa[:npairs]] + length[pb[:npairs]]
            cum = np.zeros(npairs + 1, dtype=np.int64)
            np.cumsum(need, out=cum[1:])
            p0 = 0
            while p0 < npairs:
                free = nbr.shape[0] - end
                p1 = int(np.searchsorted(cum, cum[p0] + free, side="right")) - 1
                if p1 <= p0:
                    t = perf_counter()
                    end = _compact(start, length, nbr, np.empty(0, dtype=np.float32))
                    ph["compact_s"] += perf_counter() - t
                    ncomp += 1
                    if end + need[p0] > nbr.shape[0]:
                        grown = np.empty(max(nbr.shape[0] + nbr.shape[0] // 4, end + int(need[p0]) + 1),
                                         dtype=nbr.dtype)
                        grown[:end] = nbr[:end]
                        nbr = grown
                    continue
                offs = end + cum[p0:p1] - cum[p0]
                end += int(cum[p1] - cum[p0])
                t = perf_counter()
                _merge_pairs(pa[p0:p1], pb[p0:p1], p1 - p0, offs, S, size, sq, parent, alive, node_id, stamp,
                             start, length, nbr, Z, zc + p0, n_leaves, metric, it)
                ph["merge_s"] += perf_counter() - t
                p0 = p1
            zc += npairs
        t = perf_counter()
        if npairs:
            _mark_dirty(pa, npairs, start, length, nbr, parent, isdirty)
        ndirty = _collect_dirty(isdirty, dirty)
        ph["mark_s"] += perf_counter() - t
        it += 1
    return nbr, end, zc, it, rounds, ncomp


@njit(cache=True)
def _find_pairs(dirty, ndirty, isdirty, nn, pa, pb):
    """The reciprocal-nearest pairs among the dirty slots (each once, smaller slot first); clears the marks."""
    npairs = 0
    for i in range(ndirty):
        x = dirty[i]
        y = nn[x]
        if y >= 0 and nn[y] == x and (x < y or isdirty[y] == 0):
            pa[npairs] = min(x, y)
            pb[npairs] = max(x, y)
            npairs += 1
    for i in range(ndirty):
        isdirty[dirty[i]] = 0
    return npairs


@njit(parallel=True, cache=True)  # no fastmath: the heights as the serial merge computed them
def _merge_pairs(pa, pb, npairs, offs, S, size, sq, parent, alive, node_id, stamp, start, length, nbr,
                 Z, zc, n_leaves, metric, it):
    """Merge every pair (disjoint, so in parallel): tree row ``zc + p``, statistics, concatenated list."""
    d = S.shape[1]
    for p in prange(npairs):
        a = pa[p]
        b = pb[p]
        h = _link(S, size, sq, a, b, metric)
        ia = node_id[a]
        ib = node_id[b]
        Z[zc + p, 0] = min(ia, ib)
        Z[zc + p, 1] = max(ia, ib)
        Z[zc + p, 2] = h
        Z[zc + p, 3] = size[a] + size[b]
        node_id[a] = n_leaves + zc + p
        for j in range(d):
            S[a, j] += S[b, j]
        size[a] += size[b]
        sq[a] += sq[b]
        parent[b] = a
        alive[b] = 0
        stamp[a] = it
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


@njit(parallel=True, cache=True)
def _mark_dirty(pa, npairs, start, length, nbr, parent, isdirty):
    """Mark the merged slots and every neighbour of a merged pair (threads write the same 1: benign)."""
    for p in prange(npairs):
        a = pa[p]
        isdirty[a] = 1
        for e in range(start[a], start[a] + length[a]):
            y = nbr[e]
            while parent[y] != y:
                y = parent[y]
            isdirty[y] = 1


@njit(cache=True)
def _collect_dirty(isdirty, dirty):
    """The marked slots, in slot order (deterministic whatever the threads did)."""
    nd = 0
    for x in range(isdirty.shape[0]):
        if isdirty[x]:
            dirty[nd] = x
            nd += 1
    return nd


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
