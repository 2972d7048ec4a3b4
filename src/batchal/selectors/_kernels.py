"""numba kernels for the greedy diversity baselines.

Hand-written because no library offers them in this form: k-center greedy and
k-means++ seeding are sequential (each pick depends on the last). k-center
keeps each row in the list of its nearest center and skips, by the triangle
inequality, the rows a new center cannot reach; k-means++ is one fused O(n * d)
"distance to the new center, keep the minimum" pass per pick. numpy would
allocate an (n, d) temporary per pick and BLAS cannot fuse the minimum; faiss
has no incremental k-center. BADGE's pass uses the
factorised gradient inner product, so the (n, C*d) matrix is never built.

Contract: every array is C-contiguous; floats are float32 except the running
minima (float64 keeps long sums of the k-means++ weights exact enough).
"""
from __future__ import annotations

from numba import njit, prange


#: Relative slack on the triangle-inequality tests, so float rounding can only
#: make the kernel compute a distance it could have skipped, never skip one it needed.
_SLACK = 1.0 + 1e-5


@njit(cache=True, fastmath=True)
def _sqdist_rows(X, i, j):
    acc = 0.0
    for t in range(X.shape[1]):
        diff = X[i, t] - X[j, t]
        acc += diff * diff
    return acc


@njit(cache=True)
def kcenter_lists(min_d, assign, n_slots, head, nxt, R, Rarg):
    """Member lists per center slot from ``assign`` (slot of each row, -1 = none).

    Rows with ``min_d < 0`` (centers, labeled) are left out. ``R[s]`` is the
    largest ``min_d`` in slot ``s`` and ``Rarg[s]`` its row (lowest row on ties);
    ``R = -1`` marks an empty slot.
    """
    for s in range(n_slots):
        head[s] = -1
        R[s] = -1.0
        Rarg[s] = -1
    for i in range(min_d.shape[0] - 1, -1, -1):
        s = assign[i]
        if s < 0 or min_d[i] < 0:
            continue
        nxt[i] = head[s]
        head[s] = i
        if min_d[i] >= R[s]:  # descending rows: ties keep the lowest
            R[s] = min_d[i]
            Rarg[s] = i


@njit(cache=True)
def kcenter_greedy(X, norms, min_d, assign, slot_row, head, nxt, R, Rarg, n_slots, out, start, stop):
    """k-center greedy picks ``start..stop-1`` with triangle-inequality pruning.

    Hand-written: no library has an incremental k-center, and the plain form
    streams all n x d embeddings per pick (memory-bound: 0.5 GB per pick at
    n = 1M, d = 128). Here every unlabeled row sits in the member list of its
    nearest center (a "slot"). A new center p can only bring row i closer if
    ``d(a, p) < 2 d(i, a)`` for i's center a, so a slot whose farthest member
    has ``d(a, p) >= 2 R_a`` is skipped whole, and within a walked slot rows
    with ``d(a, p) >= 2 d(i, a)`` are kept without computing ``d(i, p)``; the
    norms give a free lower bound on ``d(a, p)`` first. Picks equal the plain
    greedy's (argmax of the nearest-center distance, lowest row on ties).

    Resumable for progress reporting: the state arrays carry over between calls
    and the number of slots in use is returned. ``slot_row`` (capacity >= slots
    + picks) maps a slot to its center's row; ``min_d`` is the squared distance
    to the nearest center (-1 for centers and labeled rows); ``assign`` the slot
    of each row; ``head``/``nxt`` the member lists; ``R``/``Rarg`` as in
    :func:`kcenter_lists`.
    """
    for t in range(start, stop):
        best_s = -1
        best_v = -1.0
        best_i = -1
        for s in range(n_slots):
            v = R[s]
            if v < 0:
                continue
            if v > best_v or (v == best_v and Rarg[s] < best_i):
                best_v = v
                best_s = s
                best_i = Rarg[s]
        if best_s < 0:
            return n_slots  # nothing left to pick (the caller never asks for more)
        p = best_i
        out[t] = p
        old = assign[p]
        min_d[p] = -1.0
        assign[p] = -1
        new = n_slots
        n_slots += 1
        slot_row[new] = p
        head[new] = -1
        R[new] = -1.0
        Rarg[new] = -1
        pn = norms[p]
        for a in range(new):
            if R[a] < 0:
                continue
            lim = 4.0 * R[a] * _SLACK
            if a != old:  # p's own slot is always walked: p leaves it and its maximum
                dn = norms[slot_row[a]] - pn
                if dn * dn > lim:
                    continue
            dap = _sqdist_rows(X, slot_row[a], p)
            if a != old and dap > lim:
                continue
            i = head[a]
            prev = -1
            newR = -1.0
            newArg = -1
            while i >= 0:
                ni = nxt[i]
                md = min_d[i]
                moved = False
                if md < 0:  # picked earlier: unlink lazily
                    moved = True
                elif dap <= 4.0 * md * _SLACK:
                    d2 = _sqdist_rows(X, i, p)
                    if d2 < md:
                        min_d[i] = d2
                        assign[i] = new
                        if d2 > R[new] or (d2 == R[new] and i < Rarg[new]):
                            R[new] = d2
                            Rarg[new] = i
                        moved = True
                if moved:
                    if prev < 0:
                        head[a] = ni
                    else:
                        nxt[prev] = ni
                    if md >= 0:
                        nxt[i] = head[new]
                        head[new] = i
                else:
                    if md > newR or (md == newR and i < newArg):
                        newR = md
                        newArg = i
                    prev = i
                i = ni
            R[a] = newR
            Rarg[a] = newArg
    return n_slots


@njit(parallel=True, fastmath=True, cache=True)
def grad_sqdist_update(A, H, gn, c, D2):
    """``D2[i] = min(D2[i], ||g_i - g_c||^2)`` with ``g = a outer h``.

    ``||g_i - g_c||^2 = |g_i|^2 + |g_c|^2 - 2 <a_i, a_c> <h_i, h_c>``.
    Rows with ``D2 < 0`` (already chosen) are skipped. Returns the sum of D2 over the rest.
    """
    n, C = A.shape
    d = H.shape[1]
    total = 0.0
    for i in prange(n):
        if D2[i] < 0:
            continue
        da = 0.0
        for j in range(C):
            da += A[i, j] * A[c, j]
        dh = 0.0
        for j in range(d):
            dh += H[i, j] * H[c, j]
        v = gn[i] + gn[c] - 2.0 * da * dh
        if v < 0.0:
            v = 0.0
        if v < D2[i]:
            D2[i] = v
        total += D2[i]
    return total


@njit(cache=True)
def kmeanspp_grad(A, H, gn, c, D2, uniforms, out, start, stop):
    """k-means++ seeding on factorised gradient embeddings, picks ``start..stop-1``.

    Resumable so the caller can report progress between blocks: ``c`` is the
    next center, ``D2`` (n,) the running squared distances (``inf`` at first,
    ``-1`` once chosen), ``out`` (k,) receives the picks. ``uniforms`` (k,) in
    [0, 1) drive the D^2 draws (``uniforms[t]`` draws pick ``t``; ``uniforms[0]``
    is unused because the first center is given), so results follow the
    caller's seed. If every remaining distance is 0 (duplicates), the draw is
    uniform over the rest. Returns the next center.
    """
    n = A.shape[0]
    k = out.shape[0]
    for t in range(start, stop):
        out[t] = c
        D2[c] = -1.0
        if t == k - 1:
            break
        total = grad_sqdist_update(A, H, gn, c, D2)
        if total > 0.0:
            target = uniforms[t + 1] * total
            acc = 0.0
            c = -1
            last = -1
            for i in range(n):
                if D2[i] > 0:
                    acc += D2[i]
                    last = i
                    if acc >= target:
                        c = i
                        break
            if c < 0:
                c = last
        else:
            remaining = 0
            for i in range(n):
                if D2[i] >= 0:
                    remaining += 1
            pick = int(uniforms[t + 1] * remaining)
            seen = 0
            for i in range(n):
                if D2[i] >= 0:
                    if seen == pick:
                        c = i
                        break
                    seen += 1
    return c
