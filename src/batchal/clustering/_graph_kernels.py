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
reciprocal-nearest-neighbour pair (RAC, Sumengen et al. 2021) and merges them
all. Each merged cluster's list (its two lists joined) is then cleaned (entries
resolved to their cluster through ``parent``, duplicates dropped) and all its
linkages computed (:func:`_visit`); those values are *pushed* to its neighbours
(:func:`_push`), whose own lists are not read: each slot keeps a short
certified ranking of its best entries, which the pushed values update exactly.
Only a neighbour whose ranking runs out is visited in full. So a merge costs
O(degree * d), and a slot that did not merge costs O(1) per merged neighbour.

Contract: ``S`` float32 or float64 C-contiguous (n, d); ``size``/``sq``
float64 (``sq`` may have one element for cosine: never read); ids int32;
``start``/``length`` int32 or int64. Every linkage is a
float64 dot product of the stored sums (accumulated in float64), compared
exactly; heights written to ``Z`` are the same float64 values.
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange, set_num_threads

from ._prefetch import prefetch_row

COSINE = 0
SQEUCLIDEAN = 1
#: Entries of each slot's certified ranking kept by the merge (see ``_push``): 12 bytes each per row.
TOP_M = 4


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

    Memory: besides the arena, 8 bytes per row (x3, plus one per thread) and
    one byte per directed edge (the mutual flags); the directed lists and the
    symmetric graph are never held in two buffers.

    Steps: (1) sort and dedupe each directed row in place (parallel); (2) flag
    every directed edge ``v -> u`` whose reverse ``u -> v`` is also listed
    (binary search in the sorted row of ``u``, parallel); (3) count, per row
    and per range of source rows (one range per thread, in parallel), the
    in-edges that are not mutual: with its out-edges, the exact final degree;
    (4) move the rows to their final offsets, left-packed first, then
    right-to-left so no row overwrites one not yet moved; (5) append the
    non-mutual in-edges, each source range from its own offsets (parallel, and
    still in increasing source order per row); (6) merge each row's two sorted
    runs (parallel).
    """
    outdeg = np.zeros(m, dtype=np.int64)
    if m * k > 0:
        _sort_dedupe_rows(arena, m, k, outdeg)
    flags = np.zeros(max(m * k, 1), dtype=np.uint8)
    if m * k > 0:
        _mutual_flags(arena, m, k, outdeg, flags)
    # in-edge counts per (source range, row): each thread counts its own sources' edges, and
    # later fills them from its own offsets, so both scatter passes run in parallel
    nt = max(1, min(get_num_threads(), m))
    vsplit = (np.arange(nt + 1, dtype=np.int64) * m) // nt
    cnt_in = np.zeros((nt, n), dtype=np.int64)
    _count_in(arena, k, outdeg, flags, vsplit, cnt_in)
    deg = cnt_in.sum(axis=0)
    deg[:m] += outdeg
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(deg, out=indptr[1:])
    del deg
    if indptr[n] > arena.shape[0]:
        raise ValueError("arena too small for the symmetric graph")
    _move_rows(arena, m, k, outdeg, indptr)
    _fill_in(arena, k, outdeg, flags, indptr, vsplit, cnt_in)
    del cnt_in
    del flags
    _merge_rows(arena, indptr, outdeg, k)
    return indptr


@njit(parallel=True, cache=True)
def _sort_dedupe_rows(arena, m, k, outdeg):
    for u in prange(m):
        outdeg[u] = sort_dedupe(arena, u * k, u * k + k, u)


@njit(cache=True, inline="always")
def sort_dedupe(arena, a, b, me):
    """Sort ``arena[a:b]`` and keep each id once, without -1 and ``me``, from ``a`` on; returns the count kept.

    One list's step of building the merge lists, for the local symmetrisation and
    the Ray actors' lists alike.
    """
    row = np.sort(arena[a:b])
    w = 0
    for j in range(b - a):
        v = row[j]
        if v < 0 or v == me or (w > 0 and arena[a + w - 1] == v):
            continue
        arena[a + w] = v
        w += 1
    return w


@njit(cache=True, inline="always")
def find_sorted(arena, a, L, v):
    """Position of ``v`` in the sorted segment ``arena[a:a+L]``, or -1 (binary search)."""
    lo = a
    hi = a + L
    while lo < hi:
        mid = (lo + hi) >> 1
        if arena[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    if lo < a + L and arena[lo] == v:
        return lo
    return -1


@njit(inline="always")
def _has(arena, a, L, v):
    return find_sorted(arena, a, L, v) >= 0


@njit(parallel=True, cache=True)
def _mutual_flags(arena, m, k, outdeg, flags):
    for v in prange(m):
        a = v * k
        for j in range(outdeg[v]):
            u = arena[a + j]
            if u < m and _has(arena, u * k, outdeg[u], v):
                flags[a + j] = 1


@njit(parallel=True, cache=True)
def _count_in(arena, k, outdeg, flags, vsplit, cnt):
    """``cnt[t, u]``: the non-mutual edges ``v -> u`` with ``v`` in source range ``t``."""
    for t in prange(vsplit.shape[0] - 1):
        c = cnt[t]
        for v in range(vsplit[t], vsplit[t + 1]):
            a = v * k
            for j in range(outdeg[v]):
                if flags[a + j] == 0:
                    c[arena[a + j]] += 1


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


@njit(parallel=True, cache=True)
def _fill_in(arena, k, outdeg, flags, indptr, vsplit, cnt):
    """Append each row's non-mutual in-edges after its out-edges, in increasing source order.

    Source range ``t`` writes row ``u``'s in-edges after those of the ranges
    before it (``cnt`` turned into start offsets), so the ranges fill in
    parallel into disjoint slots and each row's in-edges still come sorted.
    """
    n = indptr.shape[0] - 1
    m = outdeg.shape[0]
    nt = vsplit.shape[0] - 1
    for u in prange(n):  # counts -> each range's first slot in row u
        pos = indptr[u] + (outdeg[u] if u < m else 0)
        for t in range(nt):
            c = cnt[t, u]
            cnt[t, u] = pos
            pos += c
    for t in prange(nt):
        fill = cnt[t]
        for v in range(vsplit[t], vsplit[t + 1]):
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


@njit(inline="always")
def _before(w1, y1, w2, y2):
    """(w1, y1) ranks before (w2, y2): smaller linkage, ties to the smaller slot."""
    return w1 < w2 or (w1 == w2 and y1 < y2)


@njit(inline="always")
def _keep_best(bi, bw, c, y, v):
    """Insert ``(v, y)`` into the ranked buffer ``bi``/``bw`` holding ``c`` entries, keeping the
    best ``len(bi)``; returns the new count."""
    m = bi.shape[0]
    if c == m and not _before(v, y, bw[m - 1], bi[m - 1]):
        return c
    j = c if c < m else m - 1
    while j > 0 and _before(v, y, bw[j - 1], bi[j - 1]):
        bw[j] = bw[j - 1]
        bi[j] = bi[j - 1]
        j -= 1
    bw[j] = v
    bi[j] = y
    return c + 1 if c < m else m


@njit(parallel=True, fastmath=True, cache=True)
def _visit(slots, ns, S, size, sq, parent, stamp, start, length, nbr, nn, topi, topw, topc, tw, ty,
           marks, ctr, metric, dedup, voff, vals):
    """Full visit of ``slots[:ns]``: clean each list, compute every linkage, rank.

    Each entry is resolved to its cluster through ``parent`` (the path is then
    shortened to one hop), self entries and (``dedup``) duplicates dropped, and
    the list rewritten in place. The slot's ranking becomes its best ``TOP_M``
    entries (``topi``/``topw``, count ``topc``), its threshold ``(tw, ty)`` the
    last of them when more entries exist (every other entry ranks after it),
    else +inf. With ``voff`` non-empty the linkages are also written to
    ``vals[voff[i] + j]`` (entry j of slot i) for :func:`_push`.

    ``marks[t]`` dedupes with a key per visit (``ctr[t]``): int32, cleared when
    the counter would overflow. Path shortening: threads may write the same
    root into ``parent[y0]`` of a merged-away slot; no merge runs meanwhile.
    """
    nt = marks.shape[0]
    m = topi.shape[1]
    n = parent.shape[0]
    store = voff.shape[0] > 0
    for t in prange(nt):
        mark = marks[t]
        bi = np.empty(m, dtype=np.int32)
        bw = np.empty(m, dtype=np.float64)
        for i in range(t, ns, nt):
            x = slots[i]
            if ctr[t] >= 2147483646:
                mark[:] = 0
                ctr[t] = 0
            ctr[t] += 1
            key = np.int32(ctr[t])
            s = start[x]
            L = length[x]
            vo = voff[i] if store else 0
            c = 0
            w = 0
            # two passes: resolve and dedupe, asking for each kept neighbour's sums; then the
            # linkages, by which time those rows are (mostly) in cache
            for e in range(s, s + L):
                y0 = nbr[e]
                y = y0
                while parent[y] != y:
                    y = parent[y]
                if y != y0:
                    parent[y0] = y
                if y == x:
                    continue
                if dedup:
                    if mark[y] == key:
                        continue
                    mark[y] = key
                prefetch_row(S, y)
                nbr[s + w] = y
                w += 1
            for e in range(s, s + w):
                y = nbr[e]
                v = _link(S, size, sq, x, y, metric)
                if store:
                    vals[vo + e - s] = v
                c = _keep_best(bi, bw, c, y, v)
            length[x] = w
            for k in range(c):
                topi[x, k] = bi[k]
                topw[x, k] = bw[k]
            topc[x] = c
            if w > m:
                tw[x] = bw[m - 1]
                ty[x] = bi[m - 1]
            else:
                tw[x] = np.inf
                ty[x] = n
            nn[x] = bi[0] if c > 0 else -1


@njit(parallel=True, cache=True)
def _push(pa, npb, voff, vals, start, length, nbr, parent, stamp, it, topi, topw, topc, tw, ty, seen,
          isdirty, nt):
    """Update the rankings of the neighbours of the clusters merged in round ``it``.

    Why this is exact: a slot ``y`` that did not merge keeps its certified
    ranking (its best entries and a threshold ``T`` such that every other entry
    ranked after ``T`` when computed). Linkages change only when an endpoint
    merges, and every cluster that merged this round lists ``y`` if ``y`` lists
    any of its parts (the graph is symmetric, merged lists are joined), so the
    entries of ``y`` that changed are exactly the pushed ``(a, vals)``, and the
    unchanged ones outside the ranking still rank after ``T``. At ``y``'s first
    push in a round its members that merged are dropped; then each pushed value
    ranking before ``T`` is inserted (keeping ``TOP_M``; ``T`` drops to the last
    member whenever a candidate is cut). If nothing is left the caller visits
    ``y`` in full. Ranking is by linkage, ties to the smaller slot, so the
    result is that of recomputing every entry. (Symmetry: ``_link(a, y)`` and
    ``_link(y, a)`` are the same float64.)

    Each thread owns the neighbours in its blocks of 4,096 slots (no locks), and
    reads every merged list of the batch.
    """
    m = topi.shape[1]
    for t in prange(nt):
        for p in range(npb):
            a = pa[p]
            s = start[a]
            vo = voff[p]
            for j in range(length[a]):
                y = nbr[s + j]
                if ((y >> 12) % nt) != t or stamp[y] == it:
                    continue  # not this thread's, or merged this round (visited in full)
                if seen[y] != it:
                    seen[y] = it
                    isdirty[y] = 1
                    c = 0
                    for k in range(topc[y]):
                        q = topi[y, k]
                        if parent[q] == q and stamp[q] != it:
                            topi[y, c] = q
                            topw[y, c] = topw[y, k]
                            c += 1
                    topc[y] = c
                v = vals[vo + j]
                if not _before(v, a, tw[y], ty[y]):
                    continue
                c = _keep_best(topi[y], topw[y], topc[y], a, v)
                topc[y] = c
                if c == m:  # full: whatever was cut or refused ranks after the last member
                    tw[y] = topw[y, m - 1]
                    ty[y] = topi[y, m - 1]


@njit(cache=True)
def _nearest_or_visit(dirty, nd, topc, topi, nn, todo):
    """Nearest neighbour of every touched slot from its ranking; those left without one go to ``todo``."""
    nf = 0
    for i in range(nd):
        y = dirty[i]
        if topc[y] == 0:
            todo[nf] = y
            nf += 1
        else:
            nn[y] = topi[y, 0]
    return nf


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


def make_room(start, length, nbr, wt, end: int, need: int, cap: int):
    """Room for ``need`` entries at the arena's end, below ``cap``: the merge arena's growth rule.

    Written once for both engines (the local merge's :func:`rac` and the Ray
    actors' :meth:`~batchal.engines.ray.rac.RacActor._room`): when the next
    lists do not fit, the live lists are compacted (:func:`_compact`); if even
    the compacted arena cannot hold them, ``cap`` grows by a quarter (at least
    to ``end + need + 1``). Within ``nbr``'s length that is only a bound (the
    Ray actors reserve more than they use: untouched pages cost nothing);
    beyond it, ``nbr`` (and ``wt`` when it is kept) is copied into a larger
    array.

    Returns ``(nbr, wt, end, cap, event)``; ``event``: 0 there was room, 1
    compacted, 2 compacted and the bound raised, 3 compacted and copied.
    """
    if end + need <= cap:
        return nbr, wt, end, cap, 0
    end = _compact(start, length, nbr, wt)
    if end + need <= cap:
        return nbr, wt, end, cap, 1
    cap = max(cap + cap // 4, end + need + 1)
    if cap <= nbr.shape[0]:
        return nbr, wt, end, cap, 2
    grown = np.empty(cap, dtype=nbr.dtype)
    grown[:end] = nbr[:end]
    if wt.shape[0] > 0:
        wgrown = np.empty(cap, dtype=wt.dtype)
        wgrown[:end] = wt[:end]
        wt = wgrown
    return grown, wt, end, cap, 3


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


#: Linkages of merged lists buffered per batch for :func:`_push` (8 bytes each).
PUSH_BUFFER = 1 << 21
#: A round whose merged lists hold fewer entries than this runs on one thread. Larger rounds
#: run on one thread or all, whichever has measured fewer seconds per entry (see :class:`_Pace`).
SERIAL_ROUND_ENTRIES = 1 << 14
#: Every this many large rounds the mode not in use is timed again (the machine's load changes).
PACE_RETRY = 16


class _Pace:
    """Threads per round of :func:`rac`: one, or all where that has measured faster.

    Each round runs four or five parallel regions (merge, visit, push, revisits), and
    each ends at a barrier that waits for every thread. On a machine whose cores are
    busy with other work a thread is often descheduled, and the round waits a time
    slice for it: on 200K ``longtail`` at load 7 on 2 cores, 1,918 rounds (median 6
    pairs) took 57 s on 2 threads and 10 s on one. So rounds under
    ``SERIAL_ROUND_ENTRIES`` list entries run on one thread, and larger ones on the
    mode (one thread or ``nt``) with the lower measured seconds per entry, each mode
    re-timed every ``PACE_RETRY`` large rounds. The work is split the same way in both
    (by slot, independent per slot), so the tree does not depend on the choice.
    """

    def __init__(self, nt):
        self.nt = nt
        self.rate = {1: -1.0, nt: -1.0}  # seconds per entry, -1: not measured
        self.big = 0
        self.mode = 1
        self.serial = 0

    def round(self, entries):
        """Threads for a round whose merged lists hold ``entries`` entries (and set them)."""
        nt = self.nt
        if nt == 1:
            return 1
        if entries < SERIAL_ROUND_ENTRIES:
            ntr = 1
        else:
            self.big += 1
            r1, rp = self.rate[1], self.rate[nt]
            if rp < 0:
                ntr = nt
            elif r1 < 0:
                ntr = 1
            else:
                ntr = 1 if r1 <= rp else nt
                if self.big % PACE_RETRY == 0:
                    ntr = nt if ntr == 1 else 1
        self.mode = ntr
        self.serial += ntr == 1
        set_num_threads(ntr)
        return ntr

    def timed(self, entries, seconds):
        """Record a large round's seconds (merge, visit and push) in its mode's rate."""
        if self.nt > 1 and entries >= SERIAL_ROUND_ENTRIES:
            r = seconds / entries
            old = self.rate[self.mode]
            self.rate[self.mode] = r if old < 0 else 0.5 * (old + r)

    def steps(self, entries):
        """Threads for a later step of the round (revisits) reading ``entries`` entries."""
        ntr = 1 if entries < SERIAL_ROUND_ENTRIES else self.mode
        if self.nt > 1:
            set_num_threads(ntr)
        return ntr


def rac(S, size, sq, parent, alive, node_id, stamp, built, start, length, nbr, end,
        dirty0, Z, zc, n_leaves, metric, it, phases=None):
    """Run RAC rounds until no reciprocal pair is left (then no edges remain).

    Parameters are the persistent state; ``dirty0`` lists the slots whose lists
    are read first (every slot with a non-empty list), their lists deduplicated
    unless ``built[x] == -1`` for all of them (a fresh CSR). ``built`` is then
    reused as each slot's last push round. A Python loop over rounds, because
    numba cannot cache a serial function that calls a parallel one.

    Returns ``(nbr, end, zc, it, rounds, compactions)`` (the arena may have been regrown).
    ``phases``: a dict that accumulates seconds per phase (``visit_s``: merged
    lists; ``push_s``; ``revisit_s``: slots whose ranking ran out; ``pairs_s``,
    ``merge_s``, ``compact_s``, ``mark_s``) and counts (``touched``: slots
    updated by a push, ``revisits``, ``serial_rounds``: rounds run on one thread,
    see :class:`_Pace`); with a list under ``"trace"`` it also receives one tuple
    per round: pairs, merged list entries, the longest merged list, touched slots,
    revisits, seconds.

    Threads: each round runs on one thread or on all ``get_num_threads()``
    (:class:`_Pace`), restored on return; the tree is the same either way.

    Memory: per slot, the ranking (64 bytes for ``TOP_M = 4``), int32 dedup
    marks per thread and 17 bytes of round state; ``PUSH_BUFFER`` x 8 bytes.
    """
    from time import perf_counter

    ph = phases if phases is not None else {}
    for key in ("visit_s", "push_s", "revisit_s", "pairs_s", "merge_s", "compact_s", "mark_s", "touched",
                "revisits", "serial_rounds"):
        ph.setdefault(key, 0)
    nt = get_num_threads()
    try:
        return _rac(S, size, sq, parent, alive, node_id, stamp, built, start, length, nbr, end,
                    dirty0, Z, zc, n_leaves, metric, it, ph, nt)
    finally:
        set_num_threads(nt)


def _rac(S, size, sq, parent, alive, node_id, stamp, built, start, length, nbr, end,
         dirty0, Z, zc, n_leaves, metric, it, ph, nt):
    """:func:`rac`'s rounds; ``nt``: the threads (and the split of the per-thread work)."""
    from time import perf_counter

    n = parent.shape[0]
    m = TOP_M
    marks = np.zeros((nt, n), dtype=np.int32)
    ctr = np.zeros(nt, dtype=np.int64)
    nn = np.full(n, -1, dtype=np.int32)
    # A slot's ranking in one row of a packed array (64 bytes, one cache line, for TOP_M = 4):
    # linkages and threshold as float64, then ids, threshold id and count as int32. A push
    # reads and writes all of them; as five arrays they were five cache misses per slot.
    R = np.empty((n, m + 1 + (m + 3) // 2), dtype=np.float64)
    Ri = R.view(np.int32)
    ti = 2 * (m + 1)
    topw, tw = R[:, :m], R[:, m]
    topi, ty, topc = Ri[:, ti:ti + m], Ri[:, ti + m], Ri[:, ti + m + 1]
    topc[:] = 0
    # padded to whole 8-byte words: _collect_dirty skips eight clear flags at a time
    isdirty = np.zeros((n + 7) // 8 * 8, dtype=np.uint8)
    isdirty_w = isdirty.view(np.uint64)
    dirty = np.empty(n, dtype=np.int32)
    todo = np.empty(n, dtype=np.int32)
    ndirty = dirty0.shape[0]
    dirty[:ndirty] = dirty0
    pa = np.empty(n // 2 + 1, dtype=np.int32)
    pb = np.empty(n // 2 + 1, dtype=np.int32)
    vals = np.empty(PUSH_BUFFER, dtype=np.float64)
    no_off = np.empty(0, dtype=np.int64)
    no_vals = np.empty(0, dtype=np.float64)
    no_wt = np.empty(0, dtype=np.float32)  # the local lists keep no weights
    dedup = bool((built[dirty0] != -1).any()) if ndirty else False
    seen = built
    seen[:] = -1
    t = perf_counter()
    _visit(dirty, ndirty, S, size, sq, parent, stamp, start, length, nbr, nn, topi, topw, topc, tw, ty,
           marks, ctr, metric, dedup, no_off, no_vals)
    ph["visit_s"] += perf_counter() - t
    isdirty[dirty[:ndirty]] = 1
    rounds = 0
    ncomp = 0
    trace = ph.get("trace")
    pace = _Pace(nt)
    while ndirty > 0:
        tr0 = perf_counter()
        t = perf_counter()
        npairs = _find_pairs(dirty, ndirty, isdirty, nn, pa, pb)
        ph["pairs_s"] += perf_counter() - t
        if npairs == 0:
            break
        rounds += 1
        # small rounds on one thread (see SERIAL_ROUND_ENTRIES); same results
        need = length[pa[:npairs]] + length[pb[:npairs]]
        cum = np.zeros(npairs + 1, dtype=np.int64)
        np.cumsum(need, out=cum[1:])
        ntr = pace.round(int(cum[npairs]))
        tround = perf_counter()
        # The merged lists go to the end of the arena at offsets known before the
        # (parallel) merge, a run of pairs at a time: as many as fit, then a
        # compaction reclaims their old lists, so the arena grows (by a quarter) only
        # when even a compacted arena cannot hold the next pair: a whole round's
        # lists at once would need a larger arena beside the old one at 10M rows.
        p0 = 0
        while p0 < npairs:
            free = nbr.shape[0] - end
            p1 = int(np.searchsorted(cum, cum[p0] + free, side="right")) - 1
            if p1 <= p0:  # not even the next pair fits
                t = perf_counter()
                nbr, _, end, _, _ = make_room(start, length, nbr, no_wt, end, int(need[p0]), nbr.shape[0])
                ph["compact_s"] += perf_counter() - t
                ncomp += 1
                continue
            offs = end + cum[p0:p1] - cum[p0]
            end += int(cum[p1] - cum[p0])
            t = perf_counter()
            _merge_pairs(pa[p0:p1], pb[p0:p1], p1 - p0, offs, S, size, sq, parent, alive, node_id, stamp,
                         start, length, nbr, Z, zc + p0, n_leaves, metric, it)
            ph["merge_s"] += perf_counter() - t
            p0 = p1
        zc += npairs
        # Every merged cluster is visited in full and its linkages pushed to its
        # neighbours, a batch of pairs at a time (the batch's values in ``vals``).
        p0 = 0
        while p0 < npairs:
            if need[p0] > vals.shape[0]:
                vals = np.empty(int(need[p0]), dtype=np.float64)
            p1 = int(np.searchsorted(cum, cum[p0] + vals.shape[0], side="right")) - 1
            voff = cum[p0:p1] - cum[p0]
            t = perf_counter()
            _visit(pa[p0:p1], p1 - p0, S, size, sq, parent, stamp, start, length, nbr, nn, topi, topw, topc,
                   tw, ty, marks[:ntr], ctr[:ntr], metric, True, voff, vals)
            t2 = perf_counter()
            ph["visit_s"] += t2 - t
            _push(pa[p0:p1], p1 - p0, voff, vals, start, length, nbr, parent, stamp, it, topi, topw, topc,
                  tw, ty, seen, isdirty, ntr)
            ph["push_s"] += perf_counter() - t2
            p0 = p1
        t = perf_counter()
        pace.timed(int(cum[npairs]), t - tround)
        isdirty[pa[:npairs]] = 1
        ndirty = _collect_dirty(isdirty_w, isdirty, dirty)
        nrev = _nearest_or_visit(dirty, ndirty, topc, topi, nn, todo)
        ph["mark_s"] += perf_counter() - t
        ph["touched"] += ndirty - npairs
        if nrev:
            ntr = pace.steps(int(length[todo[:nrev]].sum()))
            t = perf_counter()
            _visit(todo, nrev, S, size, sq, parent, stamp, start, length, nbr, nn, topi, topw, topc, tw, ty,
                   marks[:ntr], ctr[:ntr], metric, True, no_off, no_vals)
            ph["revisit_s"] += perf_counter() - t
            ph["revisits"] += nrev
        if trace is not None:
            trace.append((npairs, int(cum[npairs]), int(need.max()), ndirty, nrev, perf_counter() - tr0))
        it += 1
    ph["serial_rounds"] += pace.serial
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
        if metric != COSINE:  # cosine rows are unit: sq is size, and not stored (a 1-element array)
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


@njit(cache=True)
def _collect_dirty(words, isdirty, dirty):
    """The marked slots, in slot order (deterministic whatever the threads did).

    ``words``: ``isdirty`` (padded to whole words) as uint64, so eight clear flags cost one
    test: a round's scan is n / 8 words, not n bytes (late rounds mark a few thousand).
    """
    nd = 0
    for w in range(words.shape[0]):
        if words[w] != 0:
            for x in range(8 * w, 8 * w + 8):
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
