"""The kNN graph on Ray: IVF cells trained once, rows sharded over actors, every query cell against every shard.

The local builder (:mod:`batchal.clustering.knn`) searches all rows of one IVF
cell together against the rows of the ``nprobe`` cells nearest that cell's
centroid. Here the centroids are trained once on a sample (the same sample
and seed as locally), shared through the object store, and each actor owns a
contiguous shard of rows, assigned to cells and stored in cell order. For a
batch of cells, every shard contributes its rows of those cells to the query
blocks (so each block is the whole cell, in row order, as locally), every
shard searches the blocks against its own rows of the probed cells, and a
merge task keeps the best ``k + 1`` of the candidates per query, ties broken
by the position the candidate would have in the local builder's candidate
list. The lists are then the local builder's for the same centroids and
``nprobe``.
"""
from __future__ import annotations

import math
import time

import numpy as np
from numba import njit

from ..._validation import BatchalInputError, check_finite_block, iter_chunks
from ...clustering import knn as L

#: Query rows per search batch (a batch is a run of whole cells, or of 4,096-row chunks for flat).
BATCH_ROWS = 1 << 15
#: The local flat search's query chunk.
FLAT_STEP = 4096


class _RowsView:
    """``X[rows]`` for the local trainer's sample, fetched from the source's blocks by Ray tasks."""

    def __init__(self, source, n: int, d: int):
        self.source = source
        self.shape = (n, d)
        self.ndim = 2

    def __getitem__(self, rows):
        import ray

        rows = np.asarray(rows)
        starts = np.array([b.start for b in self.source.blocks])
        which = np.searchsorted(starts, rows, side="right") - 1
        task = ray.remote(num_cpus=0.5)(_take)
        src = ray.put(self.source)
        refs, sels = [], []
        for j in np.unique(which):
            sel = np.flatnonzero(which == j)
            b = self.source.blocks[j]
            refs.append(task.remote(src, b, rows[sel] - b.start))
            sels.append(sel)
        out = None
        for sel, part in zip(sels, ray.get(refs)):
            if out is None:
                out = np.empty((rows.shape[0], part.shape[1]), dtype=part.dtype)
            out[sel] = part
        return out


def _take(source, block, local_rows):
    return np.asarray(source.read(block))[local_rows]


class KnnShard:
    """An actor's contiguous shard of rows, prepared as locally (float32, unit rows for cosine), in cell order."""

    def __init__(self, source, blocks, metric: str, chunk_rows: int = L.CHUNK_ROWS):
        self.metric = metric
        self.chunk_rows = chunk_rows
        self.fm = L._faiss_metric(metric)
        self.source, self.blocks = source, blocks

    def load(self):
        """Read, check and prepare the shard's rows (errors surface here, naming the row)."""
        source, blocks, metric, chunk_rows = self.source, self.blocks, self.metric, self.chunk_rows
        parts = []
        for b in blocks:
            X = source.read(b)
            if X.ndim != 2 or not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
                raise BatchalInputError(f"{source.name} must be a 2-d array of numbers; a block is {X.dtype} {X.shape}")
            for a, e in iter_chunks(X.shape[0], chunk_rows):
                blk = np.asarray(X[a:e])
                check_finite_block(blk, source.name, b.start + a)
                parts.append(L._prep_chunk(blk, metric, b.start + a))
        Xp = np.concatenate(parts) if len(parts) > 1 else parts[0]
        del parts
        self.lo = blocks[0].start
        self.m = Xp.shape[0]
        self.X, self.ids, self.counts = Xp, np.arange(self.lo, self.lo + self.m, dtype=np.int64), None
        return self.m

    def assign(self, centroids):
        """Assign the rows to their nearest centroid and store them in cell order; the cell sizes."""
        import faiss

        cell = np.empty(self.m, dtype=np.int32)
        for a, e in iter_chunks(self.m, self.chunk_rows):
            _, i_ = faiss.knn(self.X[a:e], centroids, 1, metric=self.fm)
            cell[a:e] = i_[:, 0]
        order = np.argsort(cell, kind="stable")
        self.X = self.X[order]
        self.ids = self.ids[order]
        self.counts = np.bincount(cell, minlength=centroids.shape[0]).astype(np.int64)
        self.ptr = np.concatenate(([0], np.cumsum(self.counts)))
        return self.counts

    def queries(self, lo: int, hi: int):
        """This shard's query rows of cells ``[lo, hi)`` (IVF) or of rows ``[lo, hi)`` (flat), with their ids."""
        if self.counts is None:
            a, b = max(lo, self.lo) - self.lo, min(hi, self.lo + self.m) - self.lo
            if b <= a:
                return None
            return self.X[a:b], self.ids[a:b], None
        a, b = self.ptr[lo], self.ptr[hi]
        if b == a:
            return None
        return self.X[a:b], self.ids[a:b], self.counts[lo:hi]

    def search(self, lo: int, hi: int, kk: int, probe, offsets, *parts):
        """Best ``kk`` of this shard's candidates for every query of the batch.

        Returns ``(score, key, id)`` arrays (queries, kk), padded with the worst
        score, key -1 and id -1, plus the number of candidates per cell (IVF).
        ``key`` orders candidates as the local builder's candidate list does.
        """
        import faiss

        ip = self.fm == faiss.METRIC_INNER_PRODUCT
        worst = -np.inf if ip else np.inf
        if self.counts is None:  # flat: one block of queries against the whole shard
            Q = np.concatenate([p[0] for p in parts if p is not None])
            nq = Q.shape[0]
            kt = min(kk, self.m)
            D = np.full((nq, kk), worst, dtype=np.float32)
            KEY = np.full((nq, kk), -1, dtype=np.int64)
            d_, i_ = faiss.knn(Q, self.X, kt, metric=self.fm)
            D[:, :kt] = d_
            KEY[:, :kt] = np.where(i_ >= 0, self.lo + i_, -1)
            return D, KEY, KEY.copy(), None
        ncell = hi - lo
        qcounts = np.zeros(ncell, dtype=np.int64)
        for p in parts:
            if p is not None:
                qcounts += p[2]
        qptr = np.concatenate(([0], np.cumsum(qcounts)))
        nq = int(qptr[-1])
        D = np.full((nq, kk), worst, dtype=np.float32)
        KEY = np.full((nq, kk), -1, dtype=np.int64)
        ID = np.full((nq, kk), -1, dtype=np.int64)
        ncand = np.zeros(ncell, dtype=np.int64)
        # per part, where each cell's rows start
        pstarts = [None if p is None else np.concatenate(([0], np.cumsum(p[2]))) for p in parts]
        for j in range(ncell):
            c = lo + j
            if qcounts[j] == 0:
                continue
            Q = np.concatenate([p[0][ps[j]:ps[j + 1]] for p, ps in zip(parts, pstarts) if p is not None])
            cells = probe[c]
            segs = [(r, int(cc)) for r, cc in enumerate(cells) if cc >= 0 and self.counts[cc] > 0]
            if not segs:
                continue
            cand = np.concatenate([np.arange(self.ptr[cc], self.ptr[cc + 1]) for _, cc in segs])
            # key = probe rank * n + position in the whole cell (shards before this one come first)
            key = np.concatenate([r * np.int64(1 << 40) + offsets[cc] + np.arange(self.counts[cc]) for r, cc in segs])
            kt = min(kk, cand.shape[0])
            d_, i_ = faiss.knn(Q, self.X[cand], kt, metric=self.fm)
            a, b = qptr[j], qptr[j + 1]
            D[a:b, :kt] = d_
            ok = i_ >= 0
            KEY[a:b, :kt] = np.where(ok, key[np.maximum(i_, 0)], -1)
            ID[a:b, :kt] = np.where(ok, self.ids[cand[np.maximum(i_, 0)]], -1)
            ncand[j] = cand.shape[0]
        return D, KEY, ID, ncand


@njit(cache=True)
def _merge_sorted(Ds, Ks, Is, kk, ip):
    """Per query, the best ``kk`` of P sorted candidate lists by (score, key); returns (score, id)."""
    P, nq, w = Ds.shape
    outD = np.empty((nq, kk), dtype=np.float32)
    outI = np.full((nq, kk), -1, dtype=np.int64)
    pos = np.zeros(P, dtype=np.int64)
    for q in range(nq):
        pos[:] = 0
        for t in range(kk):
            best = -1
            for p in range(P):
                i = pos[p]
                if i >= w or Ks[p, q, i] < 0:
                    continue
                if best < 0:
                    best = p
                    continue
                j = pos[best]
                a = Ds[p, q, i]
                b = Ds[best, q, j]
                better = (a > b) if ip else (a < b)
                if better or (a == b and Ks[p, q, i] < Ks[best, q, j]):
                    best = p
            if best < 0:
                outD[q, t] = -np.inf if ip else np.inf
                continue
            outD[q, t] = Ds[best, q, pos[best]]
            outI[q, t] = Is[best, q, pos[best]]
            pos[best] += 1
    return outD, outI


def _merge_batch(k: int, metric: str, n_shards: int, with_distances: bool, *parts_and_results):
    """Merge the shards' candidates of one batch and drop each query's own row, as the local builder does.

    Takes the shards' query parts (for the query ids, in search order) then their search results.
    """
    meta = _qmeta(*parts_and_results[:n_shards])
    results = parts_and_results[n_shards:]
    if meta is None:
        return np.empty(0, np.int64), np.empty((0, k), np.int32), np.empty((0, k), np.float32)
    qids, I, D = _merged(k, metric, meta, results)
    return (qids, I, D) if with_distances else (qids, I)  # the HAC reads only the lists


def _merged(k, metric, meta, results):
    """The best k + 1 per query over the shards' sorted candidates, own row dropped: ``(qids, I, D)``."""
    import faiss

    qids, qcounts = meta

    ip = L._faiss_metric(metric) == faiss.METRIC_INNER_PRODUCT
    Ds = np.stack([r[0] for r in results])
    Ks = np.stack([r[1] for r in results])
    Is = np.stack([r[2] for r in results])
    kk = Ds.shape[2]
    D, I = _merge_sorted(Ds, Ks, Is, kk, ip)
    if results[0][3] is None:  # flat: every query has n - 1 >= k candidates
        I, D = L._drop_self(I, D, qids, k)
        return qids, I.astype(np.int32), D
    ncand = sum(r[3] for r in results)
    per_q = np.repeat(ncand, qcounts)
    full = per_q >= k + 1
    outI = np.full((qids.shape[0], k), -1, dtype=np.int32)
    outD = np.full((qids.shape[0], k), np.inf, dtype=np.float32)
    if full.any():
        i_, d_ = L._drop_self(I[full], D[full], qids[full], k)
        outI[full] = i_
        outD[full] = d_
    for r in np.flatnonzero(~full):  # fewer candidates than k + 1: drop self, pad (the local rule)
        m = int(per_q[r])
        g, dd = I[r, :m], D[r, :m]
        keep = g != qids[r]
        g, dd = g[keep], dd[keep]
        mm = min(k, g.shape[0])
        outI[r, :mm] = g[:mm]
        outD[r, :mm] = dd[:mm]
    return qids, outI, outD


def ray_knn(source, k: int = 50, *, metric: str = "cosine", method: str = "auto", nprobe: int = L.DEFAULT_NPROBE,
            nlist: int | None = None, exact_max_rows: int = L.EXACT_MAX_ROWS, centroids=None, random_state=0,
            n_actors: int = 2, progress: bool = False, keep_chunks: bool = False):
    """Directed kNN lists of the source's rows, searched by Ray actors.

    Parameters as :func:`batchal.clustering.knn.knn_graph`; ``centroids`` gives
    a trained coarse quantizer (nlist, d) instead of training one. With
    ``keep_chunks`` the lists stay in the object store as ``(row ids, lists)``
    chunks (what :func:`batchal.engines.ray.rac.ray_rac` reads) instead of
    being gathered into (n, k) arrays.

    Returns
    -------
    KNNResult (or, with ``keep_chunks``, ``(chunks, info)``).
    """
    import ray
    from tqdm.auto import tqdm

    if metric not in L.METRICS:
        raise BatchalInputError(f"unknown metric {metric!r}; use one of {', '.join(L.METRICS)}")
    n = source.n
    first = source.read(source.blocks[0])
    if first.ndim != 2 or first.shape[1] == 0:
        raise BatchalInputError(f"embeddings must be a non-empty 2-d array; a block has shape {first.shape}")
    d = first.shape[1]
    del first
    k = L._check(_Shape(n, d), k, metric)
    t0 = time.perf_counter()
    if method == "auto":
        method = "flat" if n <= exact_max_rows else "ivf"
    if method not in ("flat", "ivf"):
        raise BatchalInputError(f"unknown kNN method {method!r}; use auto, flat or ivf")
    P = max(1, min(int(n_actors), len(source.blocks)))
    # contiguous shards at block boundaries, about n / P rows each
    bounds = np.array([b.start for b in source.blocks] + [n])
    cuts = [0] + [int(np.searchsorted(bounds, n * s / P)) for s in range(1, P)] + [len(source.blocks)]
    cuts = sorted(set(cuts))
    shards_blocks = [source.blocks[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    P = len(shards_blocks)
    Actor = ray.remote(num_cpus=0.5, scheduling_strategy="SPREAD")(KnnShard)
    src_ref = ray.put(source)
    actors = [Actor.remote(src_ref, blks, metric) for blks in shards_blocks]
    C = None
    try:
        ray.get([a.load.remote() for a in actors])  # every row read and checked before any training
        if method == "ivf":
            if centroids is not None:
                C = np.ascontiguousarray(centroids, dtype=np.float32)
                if C.ndim != 2 or C.shape[1] != d:
                    raise BatchalInputError(f"centroids must be (nlist, {d}); got {C.shape}")
            else:
                if nlist is None:
                    nlist = int(round(2 * math.sqrt(n)))
                nlist = max(1, min(int(nlist), n // 4 if n >= 8 else 1))
                rng = np.random.default_rng(random_state)
                C = L._train_cells(_RowsView(source, n, d), metric, nlist, rng, progress)
            C_ref = ray.put(C)
            counts = ray.get([a.assign.remote(C_ref) for a in actors])
        t1 = time.perf_counter()
        info = {"k": k, "method": method, "actors": P, "prepare_s": t1 - t0}
        kk = k + 1
        merge = ray.remote(num_cpus=0.5)(_merge_batch)
        if method == "ivf":
            import faiss

            nl = C.shape[0]
            npr = max(1, min(int(nprobe), nl))
            _, probe = faiss.knn(C, C, npr, metric=L._faiss_metric(metric))
            for c in range(nl):  # a cell always searches itself (as locally)
                if c not in probe[c]:
                    probe[c] = np.concatenate([[c], probe[c][:-1]])
            cnt = np.stack(counts)
            offsets = np.vstack([np.zeros(nl, dtype=np.int64), np.cumsum(cnt, axis=0)[:-1]])
            total = cnt.sum(axis=0)
            batches, a = [], 0
            while a < nl:  # runs of whole cells of about BATCH_ROWS queries
                b = a + 1
                acc = total[a]
                while b < nl and acc + total[b] <= BATCH_ROWS:
                    acc += total[b]
                    b += 1
                batches.append((a, b))
                a = b
            probe_ref = ray.put(probe)
            off_refs = [ray.put(offsets[s]) for s in range(P)]
            info.update(nlist=int(nl), nprobe=int(npr))
        else:
            batches = [(a, min(n, a + max(FLAT_STEP, BATCH_ROWS // FLAT_STEP * FLAT_STEP)))
                       for a in range(0, n, max(FLAT_STEP, BATCH_ROWS // FLAT_STEP * FLAT_STEP))]
            probe_ref, off_refs = None, [None] * P
            info.update(nlist=None, nprobe=None)
        out_chunks, pending = [], []
        I_all = D_all = None
        if not keep_chunks:
            I_all = np.empty((n, k), dtype=np.int32)
            D_all = np.empty((n, k), dtype=np.float32)
        bar = tqdm(total=n, desc=f"kNN ({method}, ray)", unit="rows", disable=not progress, leave=False,
                   mininterval=0.5)

        def collect(ref):
            if keep_chunks:  # stays in the object store; waited for, as the shards go away after the search
                ray.wait([ref], fetch_local=False)
                out_chunks.append(ref)
                bar.update(0)
                return
            qids, I, D = ray.get(ref)
            if not qids.shape[0]:
                return
            I_all[qids] = I
            D_all[qids] = D
            bar.update(qids.shape[0])

        with bar:
            for lo, hi in batches:
                qs = [a.queries.remote(lo, hi) for a in actors]
                res = [a.search.remote(lo, hi, kk, probe_ref, off_refs[s], *qs) for s, a in enumerate(actors)]
                pending.append(merge.remote(k, metric, P, not keep_chunks, *qs, *res))
                if len(pending) > 2 * P:
                    collect(pending.pop(0))
            while pending:
                collect(pending.pop(0))
        info["search_s"] = time.perf_counter() - t1
    finally:
        for a in actors:
            ray.kill(a)
    if keep_chunks:
        return out_chunks, info
    if metric == "cosine":
        D_all[I_all < 0] = -np.inf  # becomes +inf below, as locally
    L._to_distance(D_all, metric)
    return L.KNNResult(I_all, D_all, method, info)


class _Shape:
    """Only the shape, for the local argument check."""

    def __init__(self, n, d):
        self.shape = (n, d)
        self.ndim = 2


def _qmeta(*parts):
    """Ids and per-cell counts of a batch's queries, in the order the shards' search returns them."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    if parts[0][2] is None:
        return np.concatenate([p[1] for p in parts]), None
    counts = sum(p[2] for p in parts)
    starts = [np.concatenate(([0], np.cumsum(p[2]))) for p in parts]
    ids = [p[1][s[j]:s[j + 1]] for j in range(counts.shape[0]) for p, s in zip(parts, starts)]
    return np.concatenate(ids), counts

