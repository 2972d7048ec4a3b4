"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022) on the pool's one-time clustering.

For the *low-budget* regime, where the labeled set is small for the task and
uncertainty sampling can fall below random ("opposite strategies suit high and
low budgets"): take the most *typical* member of the largest cluster that
holds no label yet, then the next, and so on. TypiClust re-clusters the pool
into ``|labeled| + batch`` k-means clusters every round; here the clusters are
the campaign's one-time HAC clusters (``pool.clusters``), never recomputed, and
a cluster is revisited once every cluster of its coverage level has had its
turn:

1. Every cluster ``c`` gets a count ``n_c`` = its labeled members.
2. Visit the cluster with the smallest ``(n_c, -size_c, tie_c)``, where
   ``tie_c`` is a seeded random rank (equal counts and sizes: a random
   cluster, not always the one with the smaller id); take its most typical
   member not taken yet; ``n_c += 1``. A cluster with no unlabeled member left
   drops out. Repeat until the batch is full.
3. ``typicality(x) = 1 / mean Euclidean distance from x to its K nearest
   neighbours in its cluster``, ``K = min(knn, size_c - 1)`` (the paper's
   definition, ``knn = 20``); labeled members count as neighbours (they are part
   of the density). A singleton cluster gives its one member.

Step 2 needs no loop: a pick's key ``(n_c, -size_c, tie_c)`` only grows within a
cluster, so the batch is the ``k`` smallest keys over every cluster's ladder
``n_c = labeled_c, ..., labeled_c + unlabeled_c - 1`` (water-filling: a binary
search for the last, partial level). A cluster visited ``t`` times gives its
``t`` most typical unlabeled members, in that order.

Cost: O(n) memory (cluster ids, counts, the rows of the visited clusters);
the embeddings are read only for the visited clusters' rows, a block of at
most ``1 << 18`` rows at a time (memory maps stay cheap). Typicality costs
``size_c^2 d`` per visited cluster (a numba kernel for small clusters, BLAS past
``BLAS_MIN`` members); a cluster larger than ``max_sample`` is
scored against a uniform sample of ``max_sample`` of its members (the
reference set for the K nearest neighbours; seeded per cluster) and only a sample of
``max(max_sample, t)`` unlabeled members are candidates, so no cluster costs
more than ``max_sample^2 d``. Never an (n, n) matrix.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from .._validation import BatchalInputError, check_count
from .base import Pool, Selector, register
from ._round_robin import dense_cluster_ids

#: Rows of embeddings read per block (float32: 1 << 18 rows of d = 256 is 256 MiB)
BLOCK_ROWS = 1 << 18
#: Clusters (or samples) with more members than this are scored by BLAS, not by the pairwise kernel
BLAS_MIN = 64


@njit(cache=True)
def _keep_smallest(buf, filled, v):
    """Insert ``v`` into ``buf[:filled]``, the ``len(buf)`` smallest values so far sorted ascending
    (insertion: the buffer holds K <= 20 values); returns the new fill."""
    K = buf.shape[0]
    if filled < K:
        p = filled
        filled += 1
    elif v < buf[K - 1]:
        p = K - 1
    else:
        return filled
    while p > 0 and buf[p - 1] > v:
        buf[p] = buf[p - 1]
        p -= 1
    buf[p] = v
    return filled


@njit(cache=True)
def _typical_members(E, ref_ptr, ref_pos, cand_ptr, cand_pos, cand_row, take, kk, out_ptr, out_rows):
    """Per group ``g``: the ``take[g]`` candidates with the smallest mean distance to their ``kk[g]`` nearest refs.

    ``E`` rows are addressed by position; refs of group ``g`` are
    ``ref_pos[ref_ptr[g]:ref_ptr[g + 1]]``, candidates ``cand_pos[cand_ptr[g]:cand_ptr[g + 1]]``
    (pool rows ``cand_row``, ascending). A candidate is not its own neighbour (same position).
    Distances are accumulated in float64 in coordinate order, the K nearest summed
    smallest first, so a plain-Python reference reproduces them exactly. Ties (equal
    mean distance): the smaller row. Writes ``out_rows[out_ptr[g]:out_ptr[g] + take[g]]``,
    most typical first.
    """
    d = E.shape[1]
    for g in range(take.shape[0]):
        c0, c1 = cand_ptr[g], cand_ptr[g + 1]
        r0, r1 = ref_ptr[g], ref_ptr[g + 1]
        m = c1 - c0
        K = kk[g]
        score = np.zeros(m, dtype=np.float64)
        if K > 0:
            buf = np.empty(K, dtype=np.float64)
            for i in range(m):
                a = cand_pos[c0 + i]
                filled = 0
                for j in range(r0, r1):
                    b = ref_pos[j]
                    if b == a:
                        continue
                    acc = 0.0
                    for t in range(d):
                        diff = np.float64(E[a, t]) - np.float64(E[b, t])
                        acc += diff * diff
                    filled = _keep_smallest(buf, filled, np.sqrt(acc))
                s = 0.0
                for q in range(K):
                    s += buf[q]
                score[i] = s / K
        # candidates are in ascending row order; a stable sort keeps ties to the smaller row
        order = np.argsort(score, kind="mergesort")
        o = out_ptr[g]
        for q in range(take[g]):
            out_rows[o + q] = cand_row[c0 + order[q]]


@njit(cache=True)
def _knn_mean_from_gram(G, yy, xx, own, K, out):
    """``out[i]`` = mean of the ``K`` smallest ``sqrt(max(yy[i] + xx[j] - 2 G[i, j], 0))`` over ``j != own[i]``.

    One pass over the (m, refs) Gram block with a sorted buffer of ``K``: no
    (m, refs) temporaries, unlike a partition.
    """
    buf = np.empty(K, dtype=np.float64)
    for i in range(G.shape[0]):
        filled = 0
        for j in range(G.shape[1]):
            if j == own[i]:
                continue
            filled = _keep_smallest(buf, filled, max(yy[i] + xx[j] - 2.0 * G[i, j], 0.0))
        s = 0.0
        for q in range(K):
            s += np.sqrt(buf[q])
        out[i] = s / K


def _mean_knn_distance(E, ref_pos, cand_pos, K, chunk=1024):
    """Mean Euclidean distance of each candidate to its ``K`` nearest refs (itself excluded), by BLAS.

    For clusters of more than ``BLAS_MIN`` members: ``|a|^2 + |b|^2 - 2 a.b`` in float64,
    a (chunk, refs) Gram block at a time. It equals the kernel's direct sum up to
    rounding (about 1e-12 relative), so only near-exact ties in typicality may order
    differently.
    """
    X = E[ref_pos].astype(np.float64)
    xx = np.einsum("ij,ij->i", X, X)
    # where a candidate sits among the refs (it is not its own neighbour); -1: not a ref
    at = np.minimum(np.searchsorted(ref_pos, cand_pos), ref_pos.shape[0] - 1)
    own = np.where(ref_pos[at] == cand_pos, at, -1)
    out = np.empty(cand_pos.shape[0], dtype=np.float64)
    for a in range(0, cand_pos.shape[0], chunk):
        Y = E[cand_pos[a:a + chunk]].astype(np.float64)
        _knn_mean_from_gram(Y @ X.T, np.einsum("ij,ij->i", Y, Y), xx, own[a:a + chunk], K, out[a:a + chunk])
    return out


def visit_counts(labeled: np.ndarray, unlabeled: np.ndarray, size: np.ndarray, tie: np.ndarray, k: int):
    """How many members each cluster gives to a batch of ``k``, and the order key of its first pick.

    Parameters
    ----------
    labeled, unlabeled, size, tie : int arrays of shape (n_ids,)
        Per cluster id: labeled members, unlabeled members, size, and a distinct tie rank.
    k : int
        Batch size, at most ``unlabeled.sum()``.

    Returns
    -------
    take : int64 array of shape (n_ids,)
        Members each cluster gives.

    Notes
    -----
    The picks are the ``k`` smallest keys ``(level, -size, tie)`` over the ladders
    ``level = labeled_c .. labeled_c + unlabeled_c - 1``. ``below(L)``, the number of keys
    with level below ``L``, grows with ``L``: a binary search finds the last level ``L``
    with ``below(L) <= k``; every key below it is taken, and the rest of the batch comes
    from the clusters alive at level ``L``, in ``(-size, tie)`` order.
    """
    lab = labeled.astype(np.int64)
    unl = unlabeled.astype(np.int64)

    def below(L):
        return np.clip(L - lab, 0, unl)

    lo, hi = 0, int((lab + unl).max())  # largest L with below(L).sum() <= k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(below(mid).sum()) <= k:
            lo = mid
        else:
            hi = mid - 1
    take = below(lo)
    rest = k - int(take.sum())
    if rest > 0:
        alive = np.flatnonzero((lab <= lo) & (lo < lab + unl))
        first = alive[np.lexsort((tie[alive], -size[alive]))[:rest]]
        take[first] += 1
    return take


@register
class TypiclustSelector(Selector):
    """Most typical members of the least-covered, largest clusters first (TypiClust on a one-time clustering).

    For the low-budget regime (few labels per class): no predictions are read.
    See the module docstring for the rule and its cost.

    Parameters
    ----------
    knn : int, default 20
        Typicality is the inverse mean distance to the ``min(knn, size - 1)``
        nearest members of the cluster (the paper's 20).
    max_sample : int, default 2000
        Clusters larger than this are scored against a seeded sample of this
        many members, and only a seeded sample of ``max(max_sample, t)`` of their
        unlabeled members (``t`` = picks from the cluster) are candidates; this
        bounds a cluster's cost at ``max_sample^2 d``. Must exceed ``knn``.
    random_state : int, Generator or None
        Seeds the order among clusters with equal counts and sizes, and the samples.

    Attributes
    ----------
    diagnostics_ : dict
        ``visited_clusters``; ``uncovered_clusters_before`` (clusters with no labeled
        member before the batch); ``sampled_clusters`` (scored on a sample).

    Notes
    -----
    Measured (``benchmarks/bench_low_budget.py scale``): a batch of 30,000 from
    1,000,000 memory-mapped rows (d = 64) in 15,000-200,000 long-tailed clusters
    took 0.5-2.7 s of CPU (1.1-11 s of wall time on a shared 2-core machine at load
    average 9-10; BENCHMARKS.md, *Low budgets*).
    Combining it with ``candidates=neighbours:K`` is refused: that restriction
    marks rows outside the neighbourhood as labeled, which would count as
    coverage here.
    """

    name = "typiclust"
    requires = ("clusters", "embeddings")

    def __init__(self, knn: int = 20, max_sample: int = 2000, random_state=None):
        super().__init__(random_state=random_state)
        self.knn = knn
        self.max_sample = max_sample

    def select(self, pool: Pool, batch_size: int) -> np.ndarray:
        if getattr(self, "candidates", None) is not None:
            raise BatchalInputError("typiclust counts the labeled members of each cluster; candidates=neighbours would "
                                    "count every row outside the neighbourhood as labeled: drop candidates=")
        return super().select(pool, batch_size)

    def _select(self, pool: Pool, k: int, rng: np.random.Generator) -> np.ndarray:
        for key, low in (("knn", 1), ("max_sample", 2)):
            check_count(getattr(self, key), f"typiclust: {key}", low)
        if self.max_sample <= self.knn:
            raise BatchalInputError(f"typiclust: max_sample ({self.max_sample}) must exceed knn ({self.knn}): a sampled "
                                    f"cluster needs knn neighbours in its sample")
        S, knn = int(self.max_sample), int(self.knn)
        cids, n_ids = dense_cluster_ids(np.asarray(pool.clusters))
        mask = pool.labeled_mask
        size = np.bincount(cids, minlength=n_ids).astype(np.int64)
        lab = np.bincount(cids[mask], minlength=n_ids).astype(np.int64)
        unl = size - lab
        tie = rng.permutation(n_ids)
        # each sampled cluster draws from its own stream: its sample does not depend on which other
        # clusters the batch visits (a batch of k is then the first k picks of a larger one)
        sample_seed = int(rng.integers(2**63))
        take = visit_counts(lab, unl, size, tie, k)
        visited = np.flatnonzero(take)
        self.diagnostics_ = {"visited_clusters": int(visited.shape[0]),
                             "uncovered_clusters_before": int(np.count_nonzero((lab == 0) & (size > 0))),
                             "sampled_clusters": int(np.count_nonzero(size[visited] > S))}
        # the visited clusters' rows grouped by cluster id, ascending rows within a group (stable sort)
        rows = np.flatnonzero(take[cids] > 0)
        rows = rows[np.argsort(cids[rows], kind="stable")]
        gsize = size[visited]
        gstart = np.concatenate(([0], np.cumsum(gsize)))
        gtake = take[visited]
        out_ptr = np.concatenate(([0], np.cumsum(gtake)))
        chosen = np.empty(k, dtype=np.int64)  # grouped by cluster, most typical first
        kk = np.minimum(knn, gsize - 1)
        small = gsize <= min(S, BLAS_MIN)
        # small clusters (most of them): every member a reference, every unlabeled member a candidate; the
        # kernel scores many clusters per call, over blocks of rows
        g, n_groups = 0, visited.shape[0]
        while g < n_groups:
            if not small[g]:
                g += 1
                continue
            h, n_rows = g, 0
            while h < n_groups and small[h] and (n_rows == 0 or n_rows + gsize[h] <= BLOCK_ROWS):
                n_rows += gsize[h]
                h += 1
            block_rows = rows[gstart[g]:gstart[h]]
            E = self._read(pool, block_rows)
            ref_ptr = gstart[g:h + 1] - gstart[g]
            unl_pos = np.flatnonzero(~mask[block_rows])
            cand_ptr = np.searchsorted(unl_pos, ref_ptr)
            _typical_members(E, ref_ptr, np.arange(n_rows, dtype=np.int64), cand_ptr, unl_pos,
                             block_rows[unl_pos], gtake[g:h], kk[g:h], out_ptr[g:h + 1] - out_ptr[g],
                             chosen[out_ptr[g]:out_ptr[h]])
            g = h
        # larger clusters, one at a time; past max_sample, on samples. One BLAS thread: the Gram blocks are
        # small (1024 x max_sample x d), and threads on a busy machine cost 7x (measured: 28 s against 4 s)
        with threadpool_limits(1, user_api="blas"):
            self._score_large(pool, np.flatnonzero(~small), rows, gstart, gsize, gtake, out_ptr, kk, visited,
                              mask, S, sample_seed, chosen)
        # batch order: the pick's key (level, -size, tie); the r-th pick of a cluster is at level labeled + r
        grp = np.repeat(np.arange(n_groups), gtake)
        level = lab[visited][grp] + (np.arange(k) - out_ptr[:-1][grp])
        order = np.lexsort((tie[visited][grp], -gsize[grp], level))
        return chosen[order]

    def _score_large(self, pool, groups, rows, gstart, gsize, gtake, out_ptr, kk, visited, mask, S, sample_seed,
                     chosen):
        """Write the ``gtake[g]`` most typical members of each group in ``groups`` (more than ``BLAS_MIN``
        members, or more than ``max_sample``) into ``chosen``."""
        for g in groups:
            members = rows[gstart[g]:gstart[g + 1]]
            un = members[~mask[members]]
            ref, cand = members, un
            if gsize[g] > S:
                crng = np.random.default_rng([sample_seed, int(visited[g])])
                ref = np.sort(members[crng.choice(members.shape[0], S, replace=False)])
                m = max(S, int(gtake[g]))
                cand = np.sort(un[crng.choice(un.shape[0], m, replace=False)]) if un.shape[0] > m else un
            need = np.union1d(ref, cand)
            E = self._read(pool, need)
            ref_pos, cand_pos = np.searchsorted(need, ref), np.searchsorted(need, cand)
            if ref.shape[0] > BLAS_MIN:
                mean = _mean_knn_distance(E, ref_pos, cand_pos, int(kk[g]))
                chosen[out_ptr[g]:out_ptr[g + 1]] = cand[np.lexsort((cand, mean))[:gtake[g]]]
            else:
                _typical_members(E, np.array([0, ref.shape[0]]), ref_pos, np.array([0, cand.shape[0]]), cand_pos,
                                 cand, gtake[g:g + 1], kk[g:g + 1], np.array([0]), chosen[out_ptr[g]:out_ptr[g + 1]])

    @staticmethod
    def _read(pool: Pool, rows: np.ndarray) -> np.ndarray:
        """The embeddings of ``rows`` (C-contiguous float32); NaN or infinity in them is refused, naming the row.

        Only the rows read are checked: a row never read cannot change the batch.
        """
        E = np.ascontiguousarray(pool.rows_embeddings(rows))
        ok = np.isfinite(E).all(axis=1)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            kind = "NaN" if np.isnan(E[i]).any() else "infinite values"
            raise BatchalInputError(f"embeddings contains {kind} (first at row {int(rows[i])} among the rows typiclust "
                                    f"read)")
        return E
