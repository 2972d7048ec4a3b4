"""numba kernels for the blocked IVF kNN search (top-k selection over dense blocks).

Why hand-written: the search computes one dense similarity block per
(query cell, probed cell) with BLAS and must fold it into each query's running
top-k. faiss.knn does the product and the selection together but is about
2.5x slower than numpy's BLAS plus this kernel on this hardware (its k = 51 heap
pass and its BLAS), and numpy has no running top-k. A heap of size k per query
was still twice the BLAS time (with cells of ~500 rows and k = 50 a fifth of
the entries enter it); a buffer of 4k candidates above a threshold, cut back
to the best k by quickselect when full, costs about a third of that. Measured
on the 10M x 64 cells (about 1,580 rows): the folds then cost more than the
products, so each row first takes the maxima of its 16-column blocks
(vectorised) and scans only the blocks that reach its threshold, and a probed
cell is folded straight into the running lists (:func:`probe_fold`: half the
rows gain nothing from a probe and are left alone): own cell 5.8 -> 3.9 us per
row, a probe 6.2 -> 2.5 us per row, besides the product (3-4 us per row).

Keys are "larger is nearer": the inner product for cosine (unit rows), and
``x.y - |y|^2 / 2`` for (squared) euclidean (the query's own norm is a per-row
constant, so the order is that of ``-|x - y|^2``).
"""
from __future__ import annotations

import numpy as np
from numba import njit


#: Columns per block of the block-maxima prefilters (own-cell bound, top cells): 16 floats, one cache line.
_CW = 16


@njit(nogil=True, cache=True, inline="always")
def _better(ka, ia, kb, ib):
    """Is (ka, ia) nearer than (kb, ib)? Larger key first, then smaller id."""
    return ka > kb or (ka == kb and ia < ib)


@njit(nogil=True, cache=True, inline="always")
def _swap(keys, ids, a, b):
    """Swap entries ``a`` and ``b`` of a (keys, ids) pair of arrays."""
    tk = keys[a]
    keys[a] = keys[b]
    keys[b] = tk
    ti = ids[a]
    ids[a] = ids[b]
    ids[b] = ti


@njit(nogil=True, cache=True)
def _select_top(keys, ids, cnt, k):
    """Partially sort ``keys[:cnt]`` (with ``ids``) so the best ``k`` come first; returns the k-th key."""
    lo = 0
    hi = cnt - 1
    kth = k - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        pk = keys[mid]
        pi = ids[mid]
        i = lo
        j = hi
        while i <= j:
            while _better(keys[i], ids[i], pk, pi):
                i += 1
            while _better(pk, pi, keys[j], ids[j]):
                j -= 1
            if i <= j:
                _swap(keys, ids, i, j)
                i += 1
                j -= 1
        if kth <= j:
            hi = j
        elif kth >= i:
            lo = i
        else:
            break
    # the k-th best is at kth; everything before is at least as good
    worst = keys[0]
    for x in range(1, k):
        if keys[x] < worst:
            worst = keys[x]
    return worst


@njit(nogil=True, cache=True)
def heap_update(block, qloc, qid, cand0, half_sqnorm, use_norm, Bk, Bi, cnt, thr, k):
    """Fold a dense block of similarities into the per-query candidate buffers.

    block : float32 (r, c), similarities of queries ``qloc`` (local rows)
        against the rows ``cand0 .. cand0 + c - 1`` of the cell-ordered data.
    qid : int64 (r,), the queries' own row ids (skipped: no self neighbour).
    Bk, Bi : (m, cap) buffers (cap >= 2k) of keys and ids; ``cnt`` (m,) their
        fill; ``thr`` (m,) a key every final neighbour beats or ties. A buffer
        that fills up is cut back to its best k (quickselect), which raises
        ``thr``; so O(1) amortised per kept entry, and blocks of 16 columns
        whose maximum is below ``thr`` are skipped after one vectorised pass.
    """
    bmax = np.empty((block.shape[1] + _CW - 1) // _CW, dtype=np.float32)
    cap = Bk.shape[1]
    for i in range(block.shape[0]):
        q = qloc[i]
        _block_max(block[i], half_sqnorm[cand0:cand0 + block.shape[1]], use_norm, bmax)
        cnt[q], thr[q] = _fold_row(block, i, Bk[q], Bi[q], cap, qid[i], cand0, half_sqnorm, use_norm, bmax,
                                   cnt[q], thr[q], k)


@njit(nogil=True, cache=True, inline="always")
def _fold_row(block, i, keys, ids, cap, self_id, cand0, half_sqnorm, use_norm, bmax, n_, t, k):
    """Fold row ``i`` of ``block`` into one buffer (``keys``/``ids``, ``n_`` entries of at most
    ``cap``, threshold ``t``); returns ``(n_, t)``.

    ``bmax``: an upper bound of the row's keys in each block of ``_CW`` columns
    (:func:`_block_max`); a block below the current threshold holds nothing that
    would be kept, so it is skipped. Kept entries, and so the result, are those
    of a plain scan of every column.
    """
    c = block.shape[1]
    for b in range(bmax.shape[0]):
        if bmax[b] < t:
            continue
        for j in range(b * _CW, min(c, b * _CW + _CW)):
            key = block[i, j]
            if use_norm:
                key -= half_sqnorm[cand0 + j]
            if key >= t:
                cid = cand0 + j
                if cid == self_id:
                    continue
                if n_ == cap:
                    t = _select_top(keys, ids, n_, k)
                    n_ = k
                    if key < t:
                        continue
                keys[n_] = key
                ids[n_] = cid
                n_ += 1
    return n_, t


@njit(nogil=True, cache=True)
def _count_at_least(v, t):
    c = 0
    for x in range(v.shape[0]):
        c += v[x] >= t
    return c


@njit(nogil=True, cache=True)
def _kth_bound(v, k):
    """A value ``t`` with at least ``k`` entries of ``v`` >= ``t``, close below the k-th largest.

    Bisection between the smallest finite and the largest entry with a
    vectorised count per step: 10 steps cost a fraction of a quickselect of
    ``v`` (branchy, ~20 ns per entry) and leave ``t`` within 1/1024 of the
    range below the k-th largest. ``-inf`` if fewer than ``k`` entries are finite.
    """
    lo = np.float32(np.inf)
    hi = np.float32(-np.inf)
    finite = 0  # the entries >= lo, once lo is the smallest finite one
    for x in range(v.shape[0]):
        if v[x] > -np.inf:
            lo = min(lo, v[x])
            hi = max(hi, v[x])
            finite += 1
    if finite < k:
        return np.float32(-np.inf)
    for _ in range(10):
        mid = np.float32(0.5) * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if _count_at_least(v, mid) >= k:
            lo = mid
        else:
            hi = mid
    return lo


@njit(nogil=True, cache=True)
def own_cell_update(block, cand0, half_sqnorm, use_norm, Bk, Bi, cnt, thr, k):
    """:func:`heap_update` for a cell against itself (row i is candidate ``cand0 + i``), with
    each row's threshold started at a lower bound of its k-th best key instead of -inf.

    The bound: about the k-th largest of the row's maxima over blocks of 16 columns
    (its own column left out; :func:`_kth_bound`). At least k of those maxima
    reach it and they are distinct entries of the row, so its k-th best key does
    too. Started from -inf, the buffer of a row fills with most of the cell (its
    nearest rows are in it) and is cut back by quickselect several times; from
    the bound, about its best 1.5k enter, and only the blocks whose maximum
    reaches it are scanned. Same result (every final neighbour's key is >= the
    bound; ties are kept and settled as before).
    """
    r, c = block.shape
    nb = (c + _CW - 1) // _CW
    bmax = np.empty(nb, dtype=np.float32)
    cap = Bk.shape[1]
    for i in range(r):
        _block_max(block[i], half_sqnorm[cand0:cand0 + c], use_norm, bmax)
        b = i // _CW  # redo the block holding column i without it
        mx = -np.inf
        for j in range(b * _CW, min(c, (b + 1) * _CW)):
            if j != i:
                key = block[i, j]
                if use_norm:
                    key -= half_sqnorm[cand0 + j]
                mx = max(mx, key)
        bmax[b] = mx
        t = thr[i]
        if nb >= k:
            t = max(t, _kth_bound(bmax, k))
        cnt[i], thr[i] = _fold_row(block, i, Bk[i], Bi[i], cap, cand0 + i, cand0, half_sqnorm, use_norm, bmax,
                                   cnt[i], t, k)


@njit(nogil=True, cache=True)
def probe_fold(block, rows, cand0, half_sqnorm, use_norm, I, K, cap, order):
    """Fold a probed cell's block straight into its query rows' running best k.

    block : float32 (r, c), rows ``rows`` (ids into ``I``/``K``) against the
        candidates ``cand0 .. cand0 + c - 1``, none of which is in a row's list yet
        (a row's probes are cells other than its own and each other).
    I, K : (n, k) current best k (ids, keys; -1 / -inf pad), any order; updated.
    cap : scratch size for the new candidates of one row.
    order : sort each row's list (key descending, then id): the last pass.

    Each row starts at its current k-th best key (ties pass) and keeps only the
    new entries that reach it, most rows none (half of them at 10M): its k
    entries are copied and selected again only when something entered (or to
    order them). The result is the best k of the old and new entries under the
    total order of :func:`_better`, as if all had been folded into one buffer.
    """
    k = I.shape[1]
    r, c = block.shape
    bmax = np.empty((c + _CW - 1) // _CW, dtype=np.float32)
    keys = np.empty(cap + k, dtype=np.float32)
    ids = np.empty(cap + k, dtype=np.int32)
    for i in range(r):
        g = rows[i]
        t = _list_floor(K[g])
        n_ = 0
        if c > 0:
            _block_max(block[i], half_sqnorm[cand0:cand0 + c], use_norm, bmax)
            n_, t = _fold_row(block, i, keys, ids, cap, -1, cand0, half_sqnorm, use_norm, bmax, 0, t, k)
        if n_ == 0 and not order:
            continue
        _merge_row(keys, ids, n_, k, order, I[g], K[g])


@njit(nogil=True, cache=True)
def fold_lists(rows, I2, K2, I, K, order):
    """Fold candidate lists ``(I2, K2)[e]`` into the running best k of rows ``rows[e]``.

    I2, K2 : (e, w) candidate ids and keys (id -1 = none), any order, none of
        them in the row's list yet (as for :func:`probe_fold`: the candidates of
        a probed cell that someone else searched).
    I, K : (n, k) the running lists (any order; -1 / -inf pad), updated; any
        integer id dtype.
    order : sort each list (key descending, then id): the last pass.

    The lists that :func:`probe_fold` gives when it computes the same candidates
    itself: each row keeps the candidates that reach its current k-th key, and is
    selected again only when one did (or to order it), by :func:`_merge_row`.
    """
    k = I.shape[1]
    w = I2.shape[1]
    keys = np.empty(w + k, dtype=K.dtype)
    ids = np.empty(w + k, dtype=I.dtype)
    for e in range(rows.shape[0]):
        g = rows[e]
        t = _list_floor(K[g])
        n_ = 0
        for x in range(w):
            if I2[e, x] >= 0 and K2[e, x] >= t:
                keys[n_] = K2[e, x]
                ids[n_] = I2[e, x]
                n_ += 1
        if n_ == 0 and not order:
            continue
        _merge_row(keys, ids, n_, k, order, I[g], K[g])


@njit(nogil=True, cache=True, inline="always")
def _list_floor(keys):
    """The smallest key of a list: its k-th best (-inf while it has fewer than k entries)."""
    t = keys[0]
    for x in range(1, keys.shape[0]):
        t = min(t, keys[x])
    return t


@njit(nogil=True, cache=True, inline="always")
def _merge_row(keys, ids, n_, k, order, out_i, out_k):
    """The best k of the new entries ``keys/ids[:n_]`` and the list ``out_i/out_k``, into the list.

    ``keys``/``ids`` need room for ``n_ + k`` entries (the list is appended to them).
    """
    for x in range(k):
        if out_i[x] >= 0:
            keys[n_] = out_k[x]
            ids[n_] = out_i[x]
            n_ += 1
    _finish_row(keys, ids, n_, k, order, out_i, out_k)


@njit(nogil=True, cache=True, inline="always")
def _finish_row(keys, ids, n_, k, order, out_i, out_k):
    """The best k of ``keys/ids[:n_]`` (nearest first, ties by id, when ``order``) into one list."""
    if n_ > k:
        _select_top(keys, ids, n_, k)
        n_ = k
    for x in range(1, n_ if order else 0):  # insertion sort of the kept ones by (-key, id)
        kk = keys[x]
        ii = ids[x]
        y = x - 1
        while y >= 0 and _better(kk, ii, keys[y], ids[y]):
            keys[y + 1] = keys[y]
            ids[y + 1] = ids[y]
            y -= 1
        keys[y + 1] = kk
        ids[y + 1] = ii
    for x in range(k):
        if x < n_:
            out_i[x] = ids[x]
            out_k[x] = keys[x]
        else:
            out_i[x] = -1
            out_k[x] = -np.inf


@njit(nogil=True, cache=True)
def buf_finish(Bk, Bi, cnt, k, rows, I, K, order=True):
    """The best k of each buffer, nearest first (ties by id), into ``I[rows[i]]`` and keys ``K``.

    Missing neighbours: id -1, key -inf. ``order=False`` leaves the best k in
    any order (a pass that is not the last: the next one only needs the set).
    """
    for i in range(rows.shape[0]):
        g = rows[i]
        _finish_row(Bk[i], Bi[i], cnt[i], k, order, I[g], K[g])


@njit(nogil=True, cache=True, fastmath=True)
def _block_max(row, half_c, use_norm, cmax):
    """Maximum score of each block of ``_CW`` cells (the subtraction as in ``top_cells``: exact)."""
    nc = row.shape[0]
    nfull = nc // _CW
    for b in range(nfull):
        lo = b * _CW
        m = row[lo]
        if use_norm:
            m -= half_c[lo]
            for j in range(1, _CW):
                m = max(m, row[lo + j] - half_c[lo + j])
        else:
            for j in range(1, _CW):
                m = max(m, row[lo + j])
        cmax[b] = m
    if nfull < cmax.shape[0]:
        m = -np.inf
        for c in range(nfull * _CW, nc):
            v = row[c] - half_c[c] if use_norm else row[c]
            m = max(m, v)
        cmax[nfull] = m


@njit(nogil=True, cache=True)
def top_cells(sc, half_c, use_norm, cell, probes, off):
    """Per row of scores ``sc`` (rows, nlist): the best cell into ``cell[off + i]`` and the
    next ``probes.shape[1]`` best, in order, into ``probes[off + i]`` (ties: smaller cell id).

    Two passes, because a plain insertion scan of every score cost as much as the
    product itself at 6,325 cells: the blocks' maxima (vectorised), then ``t``, a
    bound with at least p block maxima reaching it (:func:`_kth_bound`). p distinct
    scores reach ``t``, so the p best are all ``>= t`` and lie in blocks whose
    maximum is ``>= t``: only those blocks are scanned, the scores ``>= t`` are
    collected (branch-free) and the best p of them picked in order.
    """
    r, nc = sc.shape
    p = probes.shape[1] + 1
    nch = (nc + _CW - 1) // _CW
    cmax = np.empty(nch, dtype=np.float32)
    bv = np.empty(nc + p, dtype=np.float32)
    bc = np.empty(nc + p, dtype=np.int64)
    for i in range(r):
        row = sc[i]
        _block_max(row, half_c, use_norm, cmax)
        t = np.float32(-np.inf)
        if nch > p:
            t = _kth_bound(cmax, p)
        n_ = 0
        for b in range(nch):
            if cmax[b] < t:
                continue
            for c in range(b * _CW, min(nc, b * _CW + _CW)):
                v = row[c]
                if use_norm:
                    v -= half_c[c]
                bv[n_] = v
                bc[n_] = c
                n_ += v >= t
        for y in range(n_, p):  # only NaN scores leave fewer than p: no cell (-1), as a scan finds none
            bv[y] = -np.inf
            bc[y] = -1
        for y in range(p):  # selection of the best p, in order (p is small)
            best = y
            for x in range(y + 1, n_):
                if _better(bv[x], bc[x], bv[best], bc[best]):
                    best = x
            _swap(bv, bc, y, best)
        cell[off + i] = bc[0]
        for y in range(1, p):
            probes[off + i, y - 1] = bc[y]
