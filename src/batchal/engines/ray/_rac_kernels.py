"""numba kernels of the distributed RAC actors (``batchal.engines.ray.rac``).

An actor owns a set of clusters; each keeps an unsorted list of neighbour ids
in an arena (``start``, ``length``, ``nbr``; an id may repeat after a rename
until the list is next visited) and, as the local merge does, a certified
ranking of its best ``TOP_M`` links (``topi``/``topw``, count ``topc``) with a
threshold ``(tw, ty)`` that every other entry ranks after. No list entry keeps
a weight: a cluster's linkages are computed when it is visited (its
statistics sent to the owners of its neighbours, which reply their best few),
and a merged cluster's new linkages are pushed into its neighbours' rankings
by their owners. Linkages come from the local engine's kernel
(:func:`batchal.clustering._graph_kernels._link`, visited cluster first, as
the local ``_visit``) on the same statistics, so they are the same numbers.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...clustering._graph_kernels import _before, _keep_best, _link, find_sorted, sort_dedupe


@njit(cache=True, inline="always")
def _starts(bounds):
    """Counts in ``bounds[1:]`` -> group offsets (in place); returns each group's first free slot."""
    for g in range(bounds.shape[0] - 1):
        bounds[g + 1] += bounds[g]
    return bounds[:-1].copy()


@njit(cache=True, inline="always")
def _put(fill, g, a, va, b, vb):
    """Append ``(va, vb)`` to group ``g`` of the grouped arrays ``a``, ``b`` (next slot ``fill[g]``)."""
    f = fill[g]
    a[f] = va
    b[f] = vb
    fill[g] = f + 1


@njit(cache=True, inline="always")
def _owner(v, A, n, n_actors):
    return ((np.int64(v) * A) % n) % n_actors


@njit(cache=True)
def group_by(dest, n_groups):
    """A stable counting sort of ``dest`` (values in ``[0, n_groups)``): ``(order, bounds)``, group g being
    ``order[bounds[g]:bounds[g + 1]]`` in its original order."""
    bounds = np.zeros(n_groups + 1, dtype=np.int64)
    for i in range(dest.shape[0]):
        bounds[dest[i] + 1] += 1
    fill = _starts(bounds)
    order = np.empty(dest.shape[0], dtype=np.int64)
    for i in range(dest.shape[0]):
        order[fill[dest[i]]] = i
        fill[dest[i]] += 1
    return order, bounds


@njit(cache=True)
def owners(ids, A, n, n_actors, out):
    """The owner of each id: ``(id A mod n) mod n_actors`` (``id -> id A mod n`` permutes ``[0, n)``)."""
    for i in range(ids.shape[0]):
        out[i] = _owner(ids[i], A, n, n_actors)


@njit(cache=True)
def rows_of(ids, A, n, n_actors, out):
    """The row of each id on its owner: ``(id A mod n) // n_actors``."""
    for i in range(ids.shape[0]):
        out[i] = ((np.int64(ids[i]) * A) % n) // n_actors


@njit(cache=True)
def own_edges(I, rows, A, n, n_actors, rank, fill, nbr, count_only):
    """The entries of kNN lists ``I`` (of rows ``rows``) that actor ``rank`` owns, both directions of each
    (``-1`` and self entries dropped): ``u -> v`` for an owned ``u`` and ``v -> u`` for an owned ``v``, in list
    order. ``count_only``: ``fill[row of src] += 1``; else each ``dst`` is
    appended to its owned list (CSR fill pointers ``fill``, arena ``nbr``). One pass, no arrays made:
    the actor reads the lists where they lie instead of a task cutting them into pieces for every actor."""
    m, k = I.shape
    for i in range(m):
        u = np.int64(rows[i])
        pu = (u * A) % n
        mine_u = pu % n_actors == rank
        xu = pu // n_actors
        for j in range(k):
            v = np.int64(I[i, j])
            if v < 0 or v == u:
                continue
            if mine_u:
                if not count_only:
                    nbr[fill[xu]] = v
                fill[xu] += 1
            pv = (v * A) % n
            if pv % n_actors == rank:
                xv = pv // n_actors
                if not count_only:
                    nbr[fill[xv]] = u
                fill[xv] += 1


@njit(cache=True)
def gather_by_owner(xs, start, length, nbr, A, n, n_actors):
    """The list entries of ``xs`` grouped by the owner of the neighbour (stable: cluster by cluster):
    ``(who, ys, bounds)``, ``who`` the position of the list in ``xs``, owner q's at ``bounds[q]:bounds[q+1]``."""
    bounds = np.zeros(n_actors + 1, dtype=np.int64)
    for i in range(xs.shape[0]):
        x = xs[i]
        for e in range(start[x], start[x] + length[x]):
            bounds[_owner(nbr[e], A, n, n_actors) + 1] += 1
    fill = _starts(bounds)
    who = np.empty(bounds[n_actors], dtype=np.int32)
    ys = np.empty(bounds[n_actors], dtype=nbr.dtype)
    for i in range(xs.shape[0]):
        x = xs[i]
        for e in range(start[x], start[x] + length[x]):
            _put(fill, _owner(nbr[e], A, n, n_actors), who, i, ys, nbr[e])
    return who, ys, bounds


@njit(cache=True)
def fill_lists(src_loc, dst, fill, nbr):
    """Append ``dst[i]`` to the list of local cluster ``src_loc[i]`` (CSR fill pointers ``fill``)."""
    for i in range(src_loc.shape[0]):
        x = src_loc[i]
        nbr[fill[x]] = dst[i]
        fill[x] += 1


@njit(cache=True)
def renames_by_owner(bl, gid, partner, start, length, nbr, A, n, n_actors):
    """The renames ``b -> a`` of the merged-away clusters ``bl`` (local rows; ``b = gid``, ``a = partner``),
    grouped by the owner of each list entry ``x`` (stably: b by b, list order), each b once per owner:
    ``(xs, xbounds, bs, as, counts, bbounds)``; owner q's entries are ``xs[xbounds[q]:xbounds[q + 1]]``,
    its b's (with their a and entry count) ``bbounds[q]:bbounds[q + 1]``. 4 bytes a rename and 12 a b,
    where one ``(x, b, a)`` triple a rename (and the argsort grouping them) held about 36 bytes a rename
    at once: the first rounds' renames set the actors' and the object store's peak."""
    P = n_actors
    xb = np.zeros(P + 1, dtype=np.int64)
    bb = np.zeros(P + 1, dtype=np.int64)
    last = np.full(P, -1, dtype=np.int64)
    for i in range(bl.shape[0]):
        x = bl[i]
        for e in range(start[x], start[x] + length[x]):
            q = _owner(nbr[e], A, n, P)
            xb[q + 1] += 1
            if last[q] != i:
                last[q] = i
                bb[q + 1] += 1
    xf = _starts(xb)
    bf = _starts(bb)
    xs = np.empty(xb[P], dtype=nbr.dtype)
    bs = np.empty(bb[P], dtype=nbr.dtype)
    as_ = np.empty(bb[P], dtype=nbr.dtype)
    cnt = np.zeros(bb[P], dtype=np.int32)
    last[:] = -1
    for i in range(bl.shape[0]):
        x = bl[i]
        for e in range(start[x], start[x] + length[x]):
            y = nbr[e]
            q = _owner(y, A, n, P)
            if last[q] != i:
                last[q] = i
                j = bf[q]
                bs[j] = gid[x]
                as_[j] = partner[x]
                bf[q] = j + 1
            cnt[bf[q] - 1] += 1
            xs[xf[q]] = y
            xf[q] += 1
    return xs, xb, bs, as_, cnt, bb


@njit(cache=True)
def gather_lists(xs, start, length, nbr):
    """The lists of ``xs``, one after the other (in the arena's dtype; the caller has their lengths).

    In a 10M pool's first round they hold a third of an actor's entries (8 bytes each in int64
    cost 2 GB); no position per entry (4 bytes an entry more: 51 MB an actor in 3M's first round).
    """
    total = 0
    for i in range(xs.shape[0]):
        total += length[xs[i]]
    ys = np.empty(total, dtype=nbr.dtype)
    t = 0
    for i in range(xs.shape[0]):
        x = xs[i]
        s = start[x]
        for e in range(s, s + length[x]):
            ys[t] = nbr[e]
            t += 1
    return ys


@njit(cache=True)
def apply_renames(xs, bs, as_, cnt, A, n, n_actors, start, length, nbr, topi, topw, topc, dirty):
    """Rename ``b -> a`` in the lists of the clusters ``xs`` here, as :func:`renames_by_owner` groups them:
    group ``g`` renames ``bs[g] -> as_[g]`` in the lists of its ``cnt[g]`` entries of ``xs`` (one inbox's
    groups and entries follow each other in that order). Each entry's row is computed here (no per-entry
    int64 rows and triples: at 1M they were about 100 MB an actor at once in the first round, issue 23)."""
    m = xs.shape[0]
    nx = length.shape[0]
    bounds = np.zeros(nx + 1, dtype=np.int64)
    for i in range(m):
        bounds[((np.int64(xs[i]) * A) % n) // n_actors + 1] += 1
    fill = _starts(bounds)
    so = np.empty(m, dtype=bs.dtype)
    sn = np.empty(m, dtype=as_.dtype)
    i = 0
    for g in range(bs.shape[0]):
        for _ in range(cnt[g]):
            x = ((np.int64(xs[i]) * A) % n) // n_actors
            f = fill[x]
            so[f] = bs[g]
            sn[f] = as_[g]
            fill[x] = f + 1
            i += 1
    _renames_sorted(bounds, so, sn, start, length, nbr, topi, topw, topc, dirty)


@njit(cache=True)
def _renames_sorted(bounds, so, sn, start, length, nbr, topi, topw, topc, dirty):
    """Rename ``so -> sn`` in the list of each local cluster ``x`` (its renames ``bounds[x]:bounds[x + 1]``).

    Each list's renames (grouped by list: :func:`apply_renames`) are sorted by old id (a few per list: insertion sort), then one pass over each
    touched list binary-searches its renames. The list stays unsorted (a renamed
    entry may now repeat one already there: the list is deduplicated when it is
    next visited). A renamed cluster (one that merged away) leaves the list's
    ranking, whose threshold stays: what was cut before still ranks after it.
    The cluster is marked dirty.
    """
    nx = length.shape[0]
    for x in range(nx):
        i = bounds[x]
        j = bounds[x + 1]
        if i == j:
            continue
        for p in range(i + 1, j):  # insertion sort of x's renames by old id
            vo = so[p]
            vn = sn[p]
            q = p
            while q > i and so[q - 1] > vo:
                so[q] = so[q - 1]
                sn[q] = sn[q - 1]
                q -= 1
            so[q] = vo
            sn[q] = vn
        s = start[x]
        for e in range(s, s + length[x]):
            f = find_sorted(so, i, j - i, nbr[e])
            if f >= 0:
                nbr[e] = sn[f]
        c = 0
        for k in range(topc[x]):
            if find_sorted(so, i, j - i, topi[x, k]) < 0:
                topi[x, c] = topi[x, k]
                topw[x, c] = topw[x, k]
                c += 1
        topc[x] = c
        dirty[x] = 1


@njit(cache=True)
def dedupe_lists(xs, gid, start, length, nbr):
    """Sort the lists of ``xs`` and keep each id once, without the cluster itself (before a visit)."""
    for i in range(xs.shape[0]):
        x = xs[i]
        s = start[x]
        length[x] = sort_dedupe(nbr, s, s + length[x], gid[x])


@njit(cache=True)
def copy_segments(src, src_ptr, rows, dst, dst_at):
    """Segment ``rows[i]`` of ``src`` (``src[src_ptr[r]:src_ptr[r + 1]]``) to ``dst[dst_at[i]:]``."""
    for i in range(rows.shape[0]):
        r = rows[i]
        t = dst_at[i]
        for e in range(src_ptr[r], src_ptr[r + 1]):
            dst[t] = src[e]
            t += 1


@njit(cache=True)
def union_lists(a_loc, a_gid, b_ptr, b_nbr, start, length, nbr, end):
    """New list of each merged cluster ``a``: its list and its partner's, each id once, without ``a``.

    Written at the arena's end (the caller made room); no weight is kept per
    entry: the merged cluster is visited next (:func:`visit_targets`).
    """
    for p in range(a_loc.shape[0]):
        x = a_loc[p]
        s = start[x]
        La = length[x]
        w = end
        for e in range(s, s + La):
            nbr[w] = nbr[e]
            w += 1
        for e in range(b_ptr[p], b_ptr[p + 1]):
            nbr[w] = b_nbr[e]
            w += 1
        L = sort_dedupe(nbr, end, w, a_gid[p])
        start[x] = end
        length[x] = L
        end += L
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


@njit(fastmath=True, cache=True)  # fastmath as the local _visit, which computes the linkages
def visit_targets(c_gid, scr0, ptr, ys, ys_loc, S, size, sq, metric, update, stamp, it, topi, topw, topc, tw,
                  ty, dirty, cnt, kept, ri, rw):
    """One actor's part of the visits of the clusters ``c`` (statistics in scratch rows ``scr0 + j``): the
    linkage ``_link(c, y)`` to each target ``y`` here (visited cluster first, as the local ``_visit``).

    Returns, per ``c``, the targets' count (``cnt``) and their best ``M`` by
    linkage, ties to the smaller id (``kept`` of them in ``ri``/``rw``): the
    visiting actor merges these partial rankings into c's.

    ``update`` (a merged cluster's visit): the value is also pushed into y's
    ranking, as the local ``_push``: c's old value leaves it, the new one enters
    if it ranks before y's threshold (full: the threshold drops to the last
    member). Targets that merged this round (``stamp == it``) are skipped: their
    own visit ranks them in full.
    """
    M = topi.shape[1]
    for j in range(c_gid.shape[0]):
        c = c_gid[j]
        sc = scr0 + j
        k = 0
        for t in range(ptr[j], ptr[j + 1]):
            yl = ys_loc[t]
            v = _link(S, size, sq, sc, yl, metric)
            k = _keep_best(ri[j], rw[j], k, ys[t], v)
            if not update or stamp[yl] == it:
                continue
            dirty[yl] = 1
            n_top = topc[yl]
            for q in range(n_top):
                if topi[yl, q] == c:
                    for r in range(q, n_top - 1):
                        topi[yl, r] = topi[yl, r + 1]
                        topw[yl, r] = topw[yl, r + 1]
                    n_top -= 1
                    break
            topc[yl] = n_top
            if not _before(v, c, tw[yl], ty[yl]):
                continue
            n_top = _keep_best(topi[yl], topw[yl], n_top, c, v)
            topc[yl] = n_top
            if n_top == M:
                tw[yl] = topw[yl, M - 1]
                ty[yl] = topi[yl, M - 1]
        cnt[j] = ptr[j + 1] - ptr[j]
        kept[j] = k


@njit(cache=True)
def take_rankings(c_loc, cnt, kept, ri, rw, topi, topw, topc, tw, ty, seen):
    """Merge the partial rankings an actor replied into the rankings of the visited clusters ``c_loc``.

    The best ``M`` of a union are among the best ``M`` of its parts; once more
    than ``M`` targets were seen (``seen``: the count so far) the threshold is the
    last member, as the local ``_visit`` sets it.
    """
    M = topi.shape[1]
    for j in range(c_loc.shape[0]):
        x = c_loc[j]
        n_top = topc[x]
        for k in range(kept[j]):
            n_top = _keep_best(topi[x], topw[x], n_top, ri[j, k], rw[j, k])
        topc[x] = n_top
        seen[x] += cnt[j]
        if seen[x] > M:
            tw[x] = topw[x, M - 1]
            ty[x] = topi[x, M - 1]


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
