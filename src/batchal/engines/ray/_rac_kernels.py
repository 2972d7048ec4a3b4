"""numba kernels of the distributed RAC actors (``batchal.engines.ray.rac``).

An actor owns a set of clusters; each keeps its neighbour list **sorted by
global cluster id** in an arena (``start``, ``length``, ``nbr``, ``wt``), so a
neighbour's entry is found by binary search and the nearest neighbour with
ties to the smaller id is the first minimum of a scan. Linkages come from the
local engine's kernel (:func:`batchal.clustering._graph_kernels._link`) on
the same statistics, so they are the same numbers.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...clustering._graph_kernels import _link, find_sorted, sort_dedupe


@njit(cache=True)
def group_by(dest, n_groups):
    """A stable counting sort of ``dest`` (values in ``[0, n_groups)``): ``(order, bounds)``, group g being
    ``order[bounds[g]:bounds[g + 1]]`` in its original order."""
    bounds = np.zeros(n_groups + 1, dtype=np.int64)
    for i in range(dest.shape[0]):
        bounds[dest[i] + 1] += 1
    for g in range(n_groups):
        bounds[g + 1] += bounds[g]
    fill = bounds[:-1].copy()
    order = np.empty(dest.shape[0], dtype=np.int64)
    for i in range(dest.shape[0]):
        order[fill[dest[i]]] = i
        fill[dest[i]] += 1
    return order, bounds


@njit(cache=True)
def fill_lists(src_loc, dst, fill, nbr):
    """Append ``dst[i]`` to the list of local cluster ``src_loc[i]`` (CSR fill pointers ``fill``)."""
    for i in range(src_loc.shape[0]):
        x = src_loc[i]
        nbr[fill[x]] = dst[i]
        fill[x] += 1


@njit(cache=True)
def nearest(xs, start, length, nbr, wt, nn, nnw):
    """Nearest neighbour of each local cluster in ``xs``: smallest weight, ties to the smaller id."""
    for i in range(xs.shape[0]):
        x = xs[i]
        s = start[x]
        best = -1
        bestw = np.inf
        for e in range(s, s + length[x]):
            v = wt[e]
            if v < bestw:
                bestw = v
                best = nbr[e]
        nn[x] = best
        nnw[x] = bestw


@njit(cache=True)
def gather_lists(xs, start, length, nbr):
    """Entries of the lists of ``xs``: ``(position of the list in xs, neighbour id)`` per entry.

    int32 positions and ids in the arena's dtype: in a 10M pool's first round these
    arrays hold a third of an actor's entries (8 bytes each in int64 cost 2 GB).
    """
    total = 0
    for i in range(xs.shape[0]):
        total += length[xs[i]]
    who = np.empty(total, dtype=np.int32)
    ys = np.empty(total, dtype=nbr.dtype)
    t = 0
    for i in range(xs.shape[0]):
        x = xs[i]
        s = start[x]
        for e in range(s, s + length[x]):
            who[t] = i
            ys[t] = nbr[e]
            t += 1
    return who, ys


@njit(cache=True)
def apply_renames(xl, old, new, start, length, nbr, touched):
    """Rename ``old -> new`` in the list of local cluster ``xl`` (triples sorted by ``xl``); marks it touched.

    One pass over each touched list: its renames are binary-searched by old id.
    """
    m = xl.shape[0]
    i = 0
    while i < m:
        x = xl[i]
        j = i
        while j < m and xl[j] == x:
            j += 1
        # renames of x are old[i:j] (sorted by old id by the caller)
        s = start[x]
        for e in range(s, s + length[x]):
            f = find_sorted(old, i, j - i, nbr[e])
            if f >= 0:
                nbr[e] = new[f]
        touched[x] = 1
        i = j


@njit(cache=True)
def resort_lists(xs, gid, start, length, nbr, wt):
    """Sort the lists of ``xs`` by id, drop duplicates and the cluster itself (weights travel with ids)."""
    for i in range(xs.shape[0]):
        x = xs[i]
        s = start[x]
        L = length[x]
        if L == 0:
            continue
        order = np.argsort(nbr[s:s + L], kind="mergesort")
        ids = nbr[s:s + L][order]
        ws = wt[s:s + L][order]
        w = 0
        me = gid[x]
        for j in range(L):
            if ids[j] == me or (j > 0 and ids[j] == ids[j - 1]):
                continue
            nbr[s + w] = ids[j]
            wt[s + w] = ws[j]
            w += 1
        length[x] = w


@njit(cache=True)
def union_lists(a_loc, a_gid, b_ptr, b_nbr, start, length, nbr, wt, end):
    """New list of each merged cluster ``a``: the sorted union of its list and its partner's, without ``a``.

    Written at the arena's end (the caller made room); weights are left stale
    (every entry of a changed cluster is re-weighted in the push that follows).
    """
    for p in range(a_loc.shape[0]):
        x = a_loc[p]
        me = a_gid[p]
        s = start[x]
        La = length[x]
        i = s
        j = b_ptr[p]
        jend = b_ptr[p + 1]
        w = end
        last = -1
        while i < s + La or j < jend:
            if j >= jend or (i < s + La and nbr[i] <= b_nbr[j]):
                y = nbr[i]
                i += 1
            else:
                y = b_nbr[j]
                j += 1
            if y == me or y == last:
                continue
            nbr[w] = y
            wt[w] = np.inf
            last = y
            w += 1
        start[x] = end
        length[x] = w - end
        end = w
    return end


@njit(cache=True)  # no fastmath: the local kernel computes heights in _merge_round, compiled without it
def merge_pairs(a_loc, scr0, S, size, sq, metric, heights, sizes):
    """Merge the partner whose statistics sit in scratch row ``scr0 + p`` into local cluster ``a_loc[p]``.

    The height is the local engine's ``_link(a, b)`` before the merge, then the
    statistics are summed in their storage dtype, exactly as the local kernel does.
    """
    d = S.shape[1]
    for p in range(a_loc.shape[0]):
        a = a_loc[p]
        b = scr0 + p
        heights[p] = _link(S, size, sq, a, b, metric)
        sizes[p] = size[a] + size[b]
        for j in range(d):
            S[a, j] += S[b, j]
        size[a] += size[b]
        sq[a] += sq[b]


@njit(fastmath=True, cache=True)  # fastmath as the local _visit, which computes the list weights
def weigh_targets(c_gid, scr0, ptr, ys_loc, S, size, sq, metric, start, length, nbr, wt, dirty, reply, sym):
    """For pushed cluster ``c`` (statistics in scratch row ``scr0 + j``) and each local target ``y``:
    store ``_link(y, c)`` in y's entry for c and return ``_link(c, y)`` (the value c's own list keeps).

    ``sym``: the metric's linkage is symmetric in its arguments bit for bit
    (cosine), so one evaluation serves both lists.
    """
    for j in range(c_gid.shape[0]):
        c = c_gid[j]
        sc = scr0 + j
        for t in range(ptr[j], ptr[j + 1]):
            y = ys_loc[t]
            v = _link(S, size, sq, y, sc, metric)
            e = find_sorted(nbr, start[y], length[y], c)
            if e >= 0:
                wt[e] = v
            dirty[y] = 1
            if sym:
                reply[t] = wt[e] if e >= 0 else v
            else:
                reply[t] = _link(S, size, sq, sc, y, metric)


@njit(cache=True)
def set_weights(c_loc, ys, w, start, length, nbr, wt):
    """Store replied weights: entry ``ys[i]`` of the list of local cluster ``c_loc[i]``."""
    for i in range(c_loc.shape[0]):
        x = c_loc[i]
        e = find_sorted(nbr, start[x], length[x], ys[i])
        if e >= 0:
            wt[e] = w[i]


# The Ray actors keep a weight per list entry (a remote neighbour's linkage is
# computed by its owner and sent back, so it cannot be recomputed locally the way
# the local engine does); these arena kernels therefore move weights with the lists.

@njit(parallel=True, cache=True)
def sort_unique_rows(nbrs, ptr, uniq):
    """Sort every list ``nbrs[ptr[u]:ptr[u+1]]`` in place and drop repeats; ``uniq[u]`` = kept length."""
    for u in prange(uniq.shape[0]):
        uniq[u] = sort_dedupe(nbrs, ptr[u], ptr[u + 1], -1)  # the lists hold no -1 and no self entry


@njit(cache=True)
def pack_rows(nbrs, tmp_ptr, indptr, uniq):
    """Move the deduplicated lists leftwards to ``indptr`` (in place: a destination never passes its source)."""
    for u in range(uniq.shape[0]):
        s = tmp_ptr[u]
        d = indptr[u]
        for j in range(uniq[u]):
            nbrs[d + j] = nbrs[s + j]
