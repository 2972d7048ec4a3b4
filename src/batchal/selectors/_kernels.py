"""numba kernels for the greedy diversity baselines.

Hand-written because no library offers them in this form: k-center greedy and
k-means++ seeding are sequential (each pick depends on the last), so the work
is one fused O(n * d) "distance to the new center, keep the minimum" pass per
pick. numpy would allocate an (n, d) temporary per pick and BLAS cannot fuse
the minimum; faiss has no incremental k-center. BADGE's pass uses the
factorised gradient inner product, so the (n, C*d) matrix is never built.

Contract: every array is C-contiguous; floats are float32 except the running
minima (float64 keeps long sums of the k-means++ weights exact enough).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, fastmath=True, cache=True)
def min_sqdist_update(X, center, min_d):
    """``min_d[i] = min(min_d[i], ||X[i] - center||^2)``; returns argmax of ``min_d``.

    Rows to be excluded carry ``min_d = -1`` and stay so.
    """
    n, d = X.shape
    for i in prange(n):
        if min_d[i] < 0:
            continue
        acc = 0.0
        for j in range(d):
            diff = X[i, j] - center[j]
            acc += diff * diff
        if acc < min_d[i]:
            min_d[i] = acc
    best = 0
    best_v = min_d[0]
    for i in range(1, n):
        if min_d[i] > best_v:
            best_v = min_d[i]
            best = i
    return best


@njit(cache=True)
def kcenter_greedy(X, min_d, first, k):
    """k-center greedy from initial minimum distances ``min_d``.

    ``first`` >= 0 forces the first pick (used when nothing is labeled);
    otherwise the first pick is the argmax of ``min_d``.
    """
    out = np.empty(k, dtype=np.int64)
    if first >= 0:
        nxt = first
    else:
        nxt = 0
        best_v = min_d[0]
        for i in range(1, min_d.shape[0]):
            if min_d[i] > best_v:
                best_v = min_d[i]
                nxt = i
    for t in range(k):
        out[t] = nxt
        min_d[nxt] = -1.0
        nxt = min_sqdist_update(X, X[nxt], min_d)
    return out


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
