"""The kNN graph on Ray: IVF cells trained once on the driver, rows sharded over actors by cell.

Same lists and distances as the local builder (:mod:`batchal.clustering.knn`)
for the same data, centroids and ``nprobe``. The local IVF search assigns each
row exactly to its nearest cell and gives it its ``nprobe - 1`` next-nearest
cells as probes, stores the rows in cell order (``Xp``), and computes dense
BLAS blocks: each cell against itself, then, per probe rank ``r``, the rows
whose ``r``-th probe is cell ``j`` (all of them, in ``Xp`` order) against cell
``j``. OpenBLAS's float bits of an entry depend on the shape of the product
it is part of and on its place in it (edge tiles, blocking; multiplying a
cell by a third of its rows changed the bits of about one entry in ten), so to
return the same bits the Ray search computes exactly these blocks, each on one
process with single-threaded BLAS (equal bits also need the same BLAS kernels,
i.e. the same library and CPU family, on the workers as on the local machine):

1. The driver trains the centroids on a row sample (the local sample and seed,
   read through :class:`_RowsView`), and puts them in the object store; with
   ``nprobe="auto"`` it also draws the local 500 query rows.
2. Each actor loads a contiguous shard of rows (prepared as locally: float32,
   unit rows for cosine), assigns them to cells with the local
   :func:`~batchal.clustering.knn._assign` in the local builder's row blocks,
   and sorts them by cell (stable, so by row id within a cell). With
   ``nprobe="auto"`` the same pass folds the shard's rows into the queries'
   top-k (fixed product shapes, so the local keys); the driver takes the best
   k of the shards' lists, measures the recall curve of 1..16 probes as the
   local builder does (:func:`_probe_curve`), chooses ``nprobe`` and the actors
   keep that many probes.
3. The cells are cut into one contiguous run per actor (about ``n / actors``
   rows each); every actor sends each owner its rows of the owner's cells, and
   the owner lays them out in ``Xp`` order (cell, then shard, then row), so it
   owns a contiguous range of ``Xp`` positions: whole cells. The rows travel in
   pieces of :data:`SEND_ROWS` rows, two rounds in flight, each piece let go
   once placed, rounds at least :data:`SEND_ROUND_S` apart (the raylet deletes
   released objects once a second), so the object store never holds more than
   a few of them (it keeps the pages it has used: sending the whole pool at
   once left 0.8 GB resident at 3M rows, through the HAC too); an actor's own
   rows of its own cells do not travel at all. An actor drops its first shard
   once the exchange is over.
4. Each owner searches its cells against themselves (as locally) into per-row
   top-k lists of (key, ``Xp`` position, original id).
5. Probe rounds stream batches of whole cells: in a round every owner takes its
   next batch of cells; every actor sends it its rows that probe these cells
   (with the probe rank); the owner forms the local builder's groups (rank,
   cell; rows in ``Xp`` order), multiplies each by the cell's rows and keeps the
   best k per query row (numba kernels of :mod:`batchal.clustering._knn_kernels`);
   the lists go back to each row's owner (an actor's own rows' queries and
   lists stay in it, not through the object store), which folds them into the row's
   running best k (int32 ``Xp`` positions and float32 keys, 8 bytes an entry
   as locally) with the local list kernel (:func:`~batchal.clustering.
   _knn_kernels.fold_lists`) under (key descending, ``Xp`` position
   ascending): the local builder's total order.
6. Each owner sorts its rows' lists once (the folds keep them in any order, as
   the local passes before the last do); distances are computed with the local
   builder's float32 operations, the positions become original row ids through
   the driver's map of the ``Xp`` order (int32, n), and the lists leave as ``(original row ids, lists, distances)``
   chunks. For the Ray RAC (``keep_chunks``) they stay in the actors, sorted and
   in original ids, and leave as ``(original row ids, lists)`` chunks when the
   graph's build reads them (:class:`LiveLists`: twice, a few chunks at a time).

Each actor holds its rows, their probes and running lists (O(n (d + nprobe + k)
/ actors)) and one batch's queries and results. Rounds end together: an
actor's calls run in submission order and each round's merges wait for every
owner's search. The flat route (small pools) searches query chunks against
every shard and folds the shards' lists with the same kernel. Every kernel
here is the local engine's: this module decides where a kernel runs, not how
it computes.
"""
from __future__ import annotations

import time

import numpy as np

from ..._validation import BatchalInputError, check_finite_block, iter_chunks
from ...clustering import knn as L
from ._session import trimmed

#: Query rows per search batch: for IVF, (row, probe) entries per owner and round (a run of whole
#: cells; one cell probed more often is a batch of its own); for flat, rows in 4,096-row chunks.
BATCH_ROWS = 1 << 15
#: The local flat search's query chunk.
FLAT_STEP = 4096
#: Rows per output chunk of an owner.
EMIT_ROWS = 1 << 16
#: Rows per piece of the shard exchange (per shard and owner; 16 MB at d = 64).
SEND_ROWS = 1 << 16
#: Least seconds per round of the shard exchange. A raylet deletes released objects in batches, once a
#: second (Ray's ``free_objects_period_milliseconds``), and the object store keeps every page it has used:
#: pieces sent faster than that all stay resident (at 3M rows the exchange, 0.4 GB across 2 actors, went
#: through in a couple of seconds and set the store's high-water mark for the whole job, issue 23).
SEND_ROUND_S = 0.5


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
        # max_calls=1: each task's worker exits once it has returned, not left resident (idle, ~0.1 GB with
        # what the read loaded) through the rest of the job (issue 23); so that few workers start (about
        # a second each), a task reads several blocks: at most one task per CPU of the cluster
        task = ray.remote(num_cpus=0.5, max_calls=1)(_take)
        src = ray.put(self.source)
        js = np.unique(which)
        T = min(js.shape[0], max(1, int(ray.cluster_resources().get("CPU", 1))))
        groups = [js[t::T] for t in range(T)]
        refs, sels = [], []
        for g in groups:
            sel = [np.flatnonzero(which == j) for j in g]
            refs.append(task.remote(src, [self.source.blocks[j] for j in g],
                                    [rows[q] - self.source.blocks[j].start for j, q in zip(g, sel)]))
            sels.append(sel)
        out = None
        for sel, parts in zip(sels, ray.get(refs)):
            for q, part in zip(sel, parts):
                if out is None:
                    out = np.empty((rows.shape[0], part.shape[1]), dtype=part.dtype)
                out[q] = part
        return out


def _take(source, blocks, local_rows):
    """``source``'s rows ``local_rows[i]`` of ``blocks[i]``, block by block."""
    return [np.asarray(source.read(b))[r] for b, r in zip(blocks, local_rows)]


def _split_out(out: list):
    """An actor method's several returns (a lone value when there is one)."""
    return tuple(out) if len(out) > 1 else out[0]


def _to_positions(I, s0: int, step: int = 1 << 14):
    """Local list positions ``I`` (-1 = none) made ``Xp`` positions ``s0 + I`` in place, a block of rows at a
    time (no (m, k) temporaries). The running lists keep these int32 positions (the order's tie-break, as the
    local builder's ids) with float32 keys: 8 bytes an entry, as locally; :meth:`KnnShard.emit` maps them to
    original row ids through the whole ``Xp`` order."""
    if s0:
        for a in range(0, I.shape[0], step):
            blk = I[a:a + step]
            np.add(blk, s0, out=blk, where=blk >= 0)
    return I


class KnnShard:
    """An actor: first a contiguous shard of rows (prepared as locally), then (IVF) the rows of a run of cells."""

    def __init__(self, source, blocks, metric: str, chunk_rows: int = L.CHUNK_ROWS):
        self.metric = metric
        self.l2 = metric != "cosine"
        self.chunk_rows = chunk_rows
        self.fm = L._faiss_metric(metric)
        self.source, self.blocks = source, blocks
        self.nt = 1

    def node(self):
        """This actor's node and its CPU count (the driver splits each node's CPUs among its actors)."""
        import ray

        return ray.get_runtime_context().get_node_id(), L._n_threads()

    def set_threads(self, nt: int):
        self.nt = max(1, int(nt))

    @trimmed
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
        self.X, self.ids = Xp, np.arange(self.lo, self.lo + self.m, dtype=np.int64)
        return self.m

    def _map(self, fn, items):
        """``fn`` over ``items`` in this actor's threads (BLAS single-threaded in each, as locally)."""
        from concurrent.futures import ThreadPoolExecutor

        if self.nt <= 1 or len(items) <= 1:
            return sum(fn(it) for it in items)
        with ThreadPoolExecutor(self.nt) as ex:
            return sum(ex.map(fn, items, chunksize=4))

    # ------------------------------------------------------------------ flat
    def flat_queries(self, lo: int, hi: int):
        """This shard's rows ``[lo, hi)`` (flat), with their ids."""
        a, b = max(lo, self.lo) - self.lo, min(hi, self.lo + self.m) - self.lo
        if b <= a:
            return None
        return self.X[a:b], self.ids[a:b], None

    def flat_search(self, kk: int, *parts):
        """Flat: the best ``kk`` of this shard's rows for every query of the batch.

        Returns ``(score, id)`` arrays (queries, kk), padded with the worst score and id -1.
        """
        import faiss

        ip = self.fm == faiss.METRIC_INNER_PRODUCT
        worst = -np.inf if ip else np.inf
        Q = np.concatenate([p[0] for p in parts if p is not None])
        nq = Q.shape[0]
        kt = min(kk, self.m)
        D = np.full((nq, kk), worst, dtype=np.float32)
        KEY = np.full((nq, kk), -1, dtype=np.int64)
        d_, i_ = faiss.knn(Q, self.X, kt, metric=self.fm)
        D[:, :kt] = d_
        KEY[:, :kt] = np.where(i_ >= 0, self.lo + i_, -1)
        return D, KEY

    # ------------------------------------------------------------------ IVF
    @trimmed
    def assign(self, C, nprobe: int, n: int, queries=None, k: int = 0):
        """Cell and probes of the shard's rows, then the rows sorted by cell (stable).

        The rows go through :func:`~batchal.clustering.knn._assign` in the local
        builder's row blocks (its chunks of ``chunk_rows`` rows of the whole
        pool); a chunk the shard holds only in part is completed with zero rows,
        so every product has the local shape and gives the local bits.
        ``queries = (Q, qids)`` (``nprobe="auto"``): the shard's rows are folded
        into the queries' top-k in the same pass, as locally.
        Returns ``(rows per cell, probe entries per cell, query part)``; the query
        part (None without queries) is ``(ids, keys, cells of the ids, held, cells
        and probes of the held queries)``, see :func:`_probe_curve`.
        """
        nc = C.shape[0]
        p = max(1, min(int(nprobe), nc))
        m, d, lo, hi, cr = self.m, self.X.shape[1], self.lo, self.lo + self.m, self.chunk_rows
        cell = np.empty(m, dtype=np.int32)
        probes = np.empty((m, p - 1), dtype=np.int16 if nc < 32768 else np.int32) if p > 1 else None
        acc = L._QueryTopK(queries[0], queries[1], k, self.metric) if queries is not None else None

        def run(piece, a, b, off):
            c_, p_ = L._assign(piece, C, self.metric, cr, False, p, prepared=True, queries=acc, row0=a - off,
                               valid=(off, off + b - a))
            cell[a - lo:b - lo] = c_[off:off + b - a]
            if probes is not None:
                probes[a - lo:b - lo] = p_[off:off + b - a]

        a = lo
        while a < hi:
            ca = a // cr * cr
            ce = min(ca + cr, n)
            if a == ca and ce <= hi:  # a run of whole chunks
                e = ce
                while e < hi and min(e + cr, n) <= hi:
                    e = min(e + cr, n)
                run(self.X[a - lo:e - lo], a, e, 0)
                a = e
            else:  # part of a chunk: the whole chunk, zero rows outside the shard
                b = min(hi, ce)
                piece = np.zeros((ce - ca, d), dtype=np.float32)
                piece[a - ca:b - ca] = self.X[a - lo:b - lo]
                run(piece, a, b, a - ca)
                a = b
        qpart = None
        if acc is not None:
            Iq, Kq = acc.result()
            Icell = np.where(Iq >= 0, cell[np.maximum(Iq - lo, 0)], -1)
            qids = np.asarray(queries[1])
            held = np.flatnonzero((qids >= lo) & (qids < hi))
            own = cell[qids[held] - lo, None]
            if probes is not None:
                own = np.concatenate([own, probes[qids[held] - lo]], axis=1)
            qpart = (Iq, Kq, Icell, held, own)
        order = np.argsort(cell, kind="stable")
        self.X = self.X[order]
        self.ids = self.ids[order]
        self.probes = probes[order] if probes is not None else None
        self.counts = np.bincount(cell, minlength=nc).astype(np.int64)
        return self.counts, self._probe_entries(nc), qpart

    def _probe_entries(self, nc: int):
        if self.probes is None:
            return np.zeros(nc, dtype=np.int64)
        return np.bincount(self.probes.ravel(), minlength=nc).astype(np.int64)

    def keep_probes(self, nprobe: int, nc: int):
        """Keep the first ``nprobe - 1`` probes of each row (after ``nprobe="auto"`` chose); probe entries per cell."""
        if self.probes is not None:
            self.probes = np.ascontiguousarray(self.probes[:, :nprobe - 1]) if nprobe > 1 else None
        return self._probe_entries(nc)

    @trimmed
    def expect(self, c0: int, c1: int, s0: int, d: int, k: int, nprobe: int, counts, me: int = -1):
        """Own cells ``[c0, c1)`` (``Xp`` positions ``s0 ..``): room for their rows, which :meth:`take` fills.

        ``counts[s]``: shard ``s``'s rows in each owned cell. This actor's own shard is kept (for
        :meth:`send`) until :meth:`settle`. ``me``: this actor's shard; its rows of the owned cells are
        placed here at once, not sent through the object store (see :meth:`send`).
        """
        self.shard = (self.X, self.ids, self.probes, self.counts)
        self.c0, self.c1, self.s0, self.k, self.p = c0, c1, int(s0), k, nprobe
        counts = np.asarray(counts, np.int64).reshape(-1, c1 - c0)
        total = counts.sum(axis=0)
        self.cptr = np.concatenate(([0], np.cumsum(total))).astype(np.int64)
        m = self.m = int(self.cptr[-1])
        self.X = np.empty((m, d), dtype=np.float32)
        self.orig = np.empty(m, dtype=np.int64)
        self.probes = np.empty((m, nprobe - 1), dtype=np.int32) if nprobe > 1 else None
        # where each shard's rows of the owned cells go: Xp order is cell, then shard, then row
        self.dest, before = [], np.zeros(c1 - c0, np.int64)
        for c in counts:
            first = np.concatenate(([0], np.cumsum(c)[:-1]))
            self.dest.append(np.repeat(self.cptr[:-1] + before - first, c) + np.arange(int(c.sum())))
            before += c
        if me >= 0:  # this shard's own rows of the owned cells: where they lie already
            X, ids, probes, cnt = self.shard
            ptr = np.concatenate(([0], np.cumsum(cnt)))
            a, b = int(ptr[c0]), int(ptr[c1])
            for lo in range(a, b, SEND_ROWS):  # in pieces, as received: no (rows, d) temporary of the whole
                hi = min(b, lo + SEND_ROWS)
                self.take(lo - a, *[(X[lo:hi], ids[lo:hi], None if probes is None else probes[lo:hi])
                                    if s == me else None for s in range(len(self.dest))])
        return m

    def send(self, cell_bounds, lo: int, hi: int, me: int = -1):
        """Rows ``[lo, hi)`` of this shard's rows of each owner's cells ``[cell_bounds[o], cell_bounds[o + 1])``.

        Pieces ``(rows, ids, probes)`` (None when empty), one return per owner: the rows travel in
        bounded pieces, each let go once placed, so the object store never holds the whole pool.
        None for owner ``me`` (this actor: :meth:`expect` placed those rows). The object store keeps
        the pages it has used and takes seconds to reuse freed ones, so what passes through it in
        a short while stays resident: at 3M rows on 2 actors the whole exchange left 0.67 GB, through
        the HAC too (issue 23); each actor's own rows, half of it there, no longer pass.
        """
        X, ids, probes, counts = self.shard
        ptr = np.concatenate(([0], np.cumsum(counts)))
        out = []
        for o in range(len(cell_bounds) - 1):
            if o == me:
                out.append(None)
                continue
            a, b = int(ptr[int(cell_bounds[o])]), int(ptr[int(cell_bounds[o + 1])])
            a2, b2 = a + lo, min(b, a + hi)
            out.append(None if b2 <= a2 else (X[a2:b2], ids[a2:b2], None if probes is None else probes[a2:b2]))
        return _split_out(out)

    def take(self, lo: int, *pieces):
        """Place each shard's piece (its rows ``lo ..`` of the owned cells, :meth:`send`) in ``Xp`` order."""
        for s, pc in enumerate(pieces):
            if pc is not None:
                dest = self.dest[s][lo:lo + pc[0].shape[0]]
                self.X[dest] = pc[0]
                self.orig[dest] = pc[1]
                if self.probes is not None:
                    self.probes[dest] = pc[2]
        return 0

    @trimmed
    def settle(self, nlist: int):
        """The exchange is over: the shard goes; the probe entries' index. Returns the owned rows' original
        ids (int32), for the driver's map of ``Xp`` positions to row ids."""
        self.shard = self.dest = None
        m = self.m
        self.half = np.zeros(1, dtype=np.float32)
        if self.l2:  # as the local search computes them
            self.half = np.empty(m, dtype=np.float32)
            for a, b in iter_chunks(m, L.CHUNK_ROWS):
                self.half[a:b] = 0.5 * np.einsum("ij,ij->i", self.X[a:b], self.X[a:b])
        if self.probes is not None:  # the (row, rank) entries probing each cell, by cell then row
            flat = self.probes.reshape(-1)
            order = np.argsort(flat, kind="stable")
            self.pe_ptr = np.searchsorted(flat[order], np.arange(nlist + 1))
            self.pe_order = order.astype(np.int32) if order.shape[0] < (1 << 31) else order
            del order
        return self.orig.astype(np.int32)

    @trimmed
    def own_cells(self):
        """Each owned cell against itself (the local builder's first pass) into the running lists."""
        from threadpoolctl import threadpool_limits

        k, m = self.k, self.m
        I = np.empty((m, k), dtype=np.int32)
        self.K = np.empty((m, k), dtype=np.float32)
        X, half, l2, cptr = self.X, self.half, self.l2, self.cptr

        def one(c):  # the local builder's own-cell block: the same product, so the same bits
            return L.own_cell_block(X, int(cptr[c]), int(cptr[c + 1]), half, l2, k, I, self.K)

        sizes = np.diff(cptr)
        with threadpool_limits(1, user_api="blas"):
            done = self._map(one, np.argsort(-sizes, kind="stable").tolist())
        self.PI = _to_positions(I, self.s0)
        return done

    def _probe_piece(self, bt):
        """This actor's rows probing the cells ``bt = [j0, j1)`` (or None): see :meth:`probe_queries`."""
        if bt is None or self.probes is None:
            return None
        npr = self.p - 1
        f = self.pe_order[self.pe_ptr[bt[0]]:self.pe_ptr[bt[1]]].astype(np.int64)
        if f.shape[0] == 0:
            return None
        rows = f // npr
        thr = self.K[rows].min(axis=1)
        return self.X[rows], rows, (f % npr).astype(np.int32), self.probes.reshape(-1)[f], thr

    @trimmed
    def probe_queries(self, batches, me: int = -1):
        """Per owner's batch of cells ``[j0, j1)`` (or None): the rows of this actor probing them.

        Pieces ``(rows (e, d), local row, probe rank, probed cell, threshold)``, by cell then row; the
        threshold is the row's current k-th best key (its smallest: the running lists are kept in any
        order until :meth:`emit`; -inf while it has fewer than k): the owner's search keeps only
        candidates at least as near, as the local search starts from the row's best k.

        None for owner ``me`` (this actor): its :meth:`search` makes that piece itself (the same
        numbers: nothing runs on this actor between the two calls) instead of reading it from the
        object store.
        """
        return _split_out([None if o == me else self._probe_piece(bt) for o, bt in enumerate(batches)])

    @trimmed
    def search(self, j0: int, j1: int, me: int, *parts):
        """The probe groups of the owned cells ``[j0, j1)``: per (rank, cell), the rows probing that
        cell at that rank (from every actor, in ``Xp`` order) against its rows; the best ``k`` per entry.

        Returns per actor ``(its local rows, keys, Xp positions)`` (None when it sent nothing). With
        ``me >= 0`` this actor is actor ``me``: its own piece is made here (``parts[me]`` is None, see
        :meth:`probe_queries`) and its own rows' lists are folded here (its return there is None), so
        neither passes through the object store.
        """
        from threadpoolctl import threadpool_limits

        from ...clustering import _knn_kernels as KK

        if me >= 0:
            parts = list(parts)
            parts[me] = self._probe_piece((j0, j1))
        P = len(parts)
        if not any(pc is not None for pc in parts):
            return _split_out([None] * P)
        sizes = [0 if pc is None else pc[1].shape[0] for pc in parts]
        live = [pc for pc in parts if pc is not None]
        k, npr, cap = self.k, self.p - 1, L.BUFFER_PER_K * self.k
        E = int(sum(sizes))
        Q = np.concatenate([pc[0] for pc in live])
        rank = np.concatenate([pc[2] for pc in live]).astype(np.int64)
        cell = np.concatenate([pc[3] for pc in live]).astype(np.int64)
        thr0 = np.concatenate([pc[4] for pc in live])
        key = (cell - j0) * npr + rank
        order = np.argsort(key, kind="stable")  # each group in the senders' order: Xp order
        bounds = np.searchsorted(key[order], np.arange((j1 - j0) * npr + 1))
        Rl = np.empty((E, k), dtype=np.int32)
        Rk = np.empty((E, k), dtype=np.float32)
        X, half, l2, cptr, c0 = self.X, self.half, self.l2, self.cptr, self.c0
        groups = []
        for g in range((j1 - j0) * npr):
            if bounds[g + 1] > bounds[g]:
                groups.append((j0 + g // npr, order[bounds[g]:bounds[g + 1]]))

        def one(item):
            j, rows = item
            mm = rows.shape[0]
            a, b = int(cptr[j - c0]), int(cptr[j - c0 + 1])
            Bk = np.empty((mm, cap), dtype=np.float32)
            Bi = np.empty((mm, cap), dtype=np.int32)
            cnt = np.zeros(mm, dtype=np.int64)
            thr = thr0[rows]
            if b > a:
                blk = Q[rows] @ X[a:b].T  # the local group's product
                KK.heap_update(blk, np.arange(mm), np.full(mm, -1, np.int64), a, half, l2, Bk, Bi, cnt, thr, k)
            KK.buf_finish(Bk, Bi, cnt, k, rows, Rl, Rk)
            return mm

        groups.sort(key=lambda g: -g[1].shape[0] * int(cptr[g[0] - c0 + 1] - cptr[g[0] - c0]))
        with threadpool_limits(1, user_api="blas"):
            self._map(one, groups)
        _to_positions(Rl, self.s0)
        out, a = [], 0
        for s in range(P):
            b = a + sizes[s]
            out.append(None if b == a else (parts[s][1], Rk[a:b], Rl[a:b]))
            a = b
        if me >= 0 and out[me] is not None:  # this actor's own rows: folded here (fold gets None for them)
            KK.fold_lists(out[me][0], out[me][2], out[me][1], self.PI, self.K, False)
            out[me] = None
        return _split_out(out)

    @trimmed
    def fold(self, *results):
        """Fold the owners' lists for this actor's rows into their running lists (the local kernel)."""
        from ...clustering import _knn_kernels as KK

        done = 0
        for res in results:
            if res is not None:
                KK.fold_lists(res[0], res[2], res[1], self.PI, self.K, False)
                done += res[0].shape[0]
        return done

    @trimmed
    def emit(self, a: int, b: int, with_distances: bool, pos2orig):
        """``(original ids, lists in original ids[, distances])`` of owned rows ``[a, b)``, as locally.

        ``pos2orig``: every ``Xp`` position's original row id (int32, n; the driver's, from :meth:`settle`).

        The lists are sorted here, nearest first (ties by position): the folds kept them in any order.
        The search is over: the rows and probes go first (at 3M, 0.4 GB an actor beside the emitted lists).
        """
        self.X = self.probes = self.pe_order = self.pe_ptr = None
        from ...clustering import _knn_kernels as KK

        KK.fold_lists(np.arange(a, b), np.empty((b - a, 0), np.int32), np.empty((b - a, 0), np.float32), self.PI,
                      self.K, True)
        P = self.PI[a:b]
        qids, I = self.orig[a:b].astype(np.int32), np.where(P >= 0, pos2orig[np.maximum(P, 0)], -1).astype(np.int32)
        if not with_distances:
            return qids, I
        D = self.K[a:b].copy()
        if self.metric == "cosine":
            np.subtract(1.0, D, out=D)
        else:
            np.multiply(D, -2.0, out=D)
            D += 2.0 * self.half[a:b, None]
        np.maximum(D, 0.0, out=D)
        if self.metric == "euclidean":
            np.sqrt(D, out=D)
        D[I < 0] = np.inf
        return qids, I, D


    @trimmed
    def finish_ids(self, pos2orig):
        """The search is over: every owned row's list sorted (nearest first, ties by position) and its
        positions made original row ids in place; the rows, probes and keys go. :meth:`emit_ids` then hands
        out ``(original ids, lists)`` chunks, the same as :meth:`emit` without distances, as often as asked.

        Held so, the lists reach the RAC actors' graph build chunk by chunk, once for its count pass and
        once for its fill pass, instead of all sitting in the object store at once (whose resident pages
        stay at their high-water mark: 0.67 GB at 3M rows through the whole HAC, issue 23). What an actor
        keeps is 4 bytes a list entry (300 MB at 3M rows on 2 actors).
        """
        from ...clustering import _knn_kernels as KK

        self.X = self.probes = self.pe_order = self.pe_ptr = self.half = None
        for a, b in iter_chunks(self.m, EMIT_ROWS):
            KK.fold_lists(np.arange(a, b), np.empty((b - a, 0), np.int32), np.empty((b - a, 0), np.float32),
                          self.PI, self.K, True)
            P = self.PI[a:b]
            P[...] = np.where(P >= 0, pos2orig[np.maximum(P, 0)], -1)
        self.K = None
        self.qids, self.orig = self.orig.astype(np.int32), None
        return self.m

    def emit_ids(self, a: int, b: int):
        """``(original ids, lists in original ids)`` of owned rows ``[a, b)``, after :meth:`finish_ids`."""
        return self.qids[a:b], self.PI[a:b]


class LiveLists:
    """The kNN lists left in the search's live actors (:meth:`KnnShard.finish_ids`), emitted on demand.

    :meth:`chunks` asks the actors for their lists chunk by chunk, anew at every call, as items
    ``(None, ObjectRef of (row ids, lists))``: a reader that lets each chunk go once read (the RAC graph
    build, twice: count and fill) keeps only a few of them in the object store at a time. :meth:`close`
    ends the actors (the owner of this object must, once the lists are read).
    """

    def __init__(self, actors, spans):
        self.actors = list(actors)
        self.spans = spans  # (actor, first row, end row): the owners' chunks, interleaved

    def __len__(self):
        return len(self.spans)

    def chunks(self):
        for o, a, b in self.spans:
            if not self.actors:
                raise RuntimeError("the kNN actors were closed")
            yield None, self.actors[o].emit_ids.remote(a, b)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


def _merge_batch(k: int, metric: str, n_shards: int, with_distances: bool, *parts_and_results):
    """Flat: merge the shards' candidates of one query chunk and drop each query's own row, as locally.

    Takes the shards' query parts (for the query ids, in search order) then their search results.
    """
    import faiss

    from ...clustering import _knn_kernels as KK

    parts = [p for p in parts_and_results[:n_shards] if p is not None]
    results = parts_and_results[n_shards:]
    if not parts:
        return np.empty(0, np.int64), np.empty((0, k), np.int32), np.empty((0, k), np.float32)
    qids = np.concatenate([p[1] for p in parts])
    ip = L._faiss_metric(metric) == faiss.METRIC_INNER_PRODUCT
    # the shards' lists folded by the local list kernel, on "larger is nearer" keys (negated exactly
    # for distances); flat lists' ids are row ids, so ties go to the smaller id, as in faiss's merge
    nq, kk = results[0][0].shape
    I = np.full((nq, kk), -1, dtype=np.int64)
    Kk = np.full((nq, kk), -np.inf, dtype=np.float32)
    rows = np.arange(nq)
    for s, r in enumerate(results):
        KK.fold_lists(rows, r[1], r[0] if ip else -r[0], I, Kk, s == len(results) - 1)
    D = Kk if ip else -Kk
    I, D = L._drop_self(I, D, qids, k)  # every query has n - 1 >= k candidates
    I = I.astype(np.int32)
    return (qids, I, D) if with_distances else (qids, I)  # the HAC reads only the lists


def _probe_curve(parts, k: int) -> np.ndarray:
    """The recall curve of 1, 2, ... probes from the shards' query parts (as the local pass measures it).

    Each shard gives its rows' best k for every query (ids, keys, their cells)
    and the own cell and probes of the queries it holds. The best k of their
    union by (key descending, id ascending) is the local builder's exact top-k.
    """
    I = np.concatenate([p[0] for p in parts], axis=1).astype(np.int64)
    K = np.concatenate([p[1] for p in parts], axis=1)
    Cc = np.concatenate([p[2] for p in parts], axis=1)
    nq = I.shape[0]
    big = np.iinfo(np.int64).max
    order = np.lexsort((np.where(I >= 0, I, big), -K.astype(np.float64)), axis=1)[:, :k]
    top, topc = np.take_along_axis(I, order, 1), np.take_along_axis(Cc, order, 1)
    own = np.empty((nq, parts[0][4].shape[1]), dtype=np.int64)
    for p in parts:
        own[p[3]] = p[4]
    return L.probe_recall(np.where(top >= 0, top, -1), own, np.where(top >= 0, topc, -1))


def _training_draws(rng, n: int, nlist: int) -> None:
    """Advance ``rng`` as :func:`~batchal.clustering.knn._train_cells` does (its sample, then its seed),
    so that given centroids are followed by the local ``nprobe="auto"`` estimate."""
    n_train = min(n, max(nlist * L.TRAIN_PER_CELL, 10_000))
    rng.choice(n, size=min(n, n_train), replace=False)
    rng.integers(2**31 - 1)


def _call(method, nret: int, *args) -> list:
    """An actor method's returns as a list of refs, however many there are."""
    r = method.options(num_returns=nret).remote(*args)
    return list(r) if nret > 1 else [r]


def _cell_batches(c0: int, c1: int, weight: np.ndarray, cap: int) -> list:
    """Runs of whole cells ``[a, b)`` of ``[c0, c1)`` with a total weight of about ``cap``; weightless runs skipped."""
    out, a = [], c0
    while a < c1:
        b, acc = a + 1, int(weight[a])
        while b < c1 and acc + weight[b] <= cap:
            acc += int(weight[b])
            b += 1
        if acc:
            out.append((a, b))
        a = b
    return out


def ray_knn(source, k: int = 50, *, metric: str = "cosine", method: str = "auto", nprobe=L.DEFAULT_NPROBE,
            nlist: int | None = None, exact_max_rows: int = L.EXACT_MAX_ROWS, centroids=None, random_state=0,
            n_actors: int = 2, progress: bool = False, keep_chunks: bool = False,
            chunk_rows: int = L.CHUNK_ROWS):
    """Directed kNN lists of the source's rows, searched by Ray actors.

    Parameters as :func:`batchal.clustering.knn.knn_graph`; ``centroids`` gives
    a trained coarse quantizer (nlist, d) instead of training one (with
    ``nprobe="auto"`` the estimate then draws from the random stream as if the
    centroids had been trained here). With ``keep_chunks`` the lists are not
    gathered into (n, k) arrays but kept for :func:`batchal.engines.ray.rac.ray_rac`:
    IVF, in the live actors, which emit them chunk by chunk when read (a
    :class:`LiveLists`; whoever reads it must :meth:`~LiveLists.close` it);
    flat (small pools), as ``(row ids, lists)`` chunks in the object store.

    Returns
    -------
    KNNResult (or, with ``keep_chunks``, ``(LiveLists or chunks, info)``).
    """
    import ray

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
    if method == "ivf":
        L._check_nprobe(nprobe)  # the local engine's check: the same contract on both engines
        if centroids is not None:
            centroids = np.ascontiguousarray(centroids, dtype=np.float32)
            if centroids.ndim != 2 or centroids.shape[1] != d or centroids.shape[0] == 0:
                raise BatchalInputError(f"centroids must be (nlist, {d}); got {centroids.shape}")
    P = max(1, min(int(n_actors), len(source.blocks)))
    # contiguous shards at block boundaries, about n / P rows each
    bounds = np.array([b.start for b in source.blocks] + [n])
    cuts = [0] + [int(np.searchsorted(bounds, n * s / P)) for s in range(1, P)] + [len(source.blocks)]
    cuts = sorted(set(cuts))
    shards_blocks = [source.blocks[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    P = len(shards_blocks)
    Actor = ray.remote(num_cpus=0.5, scheduling_strategy="SPREAD")(KnnShard)
    src_ref = ray.put(source)
    actors = [Actor.remote(src_ref, blks, metric, chunk_rows) for blks in shards_blocks]
    try:
        ray.get([a.load.remote() for a in actors])  # every row read and checked before any training
        where = ray.get([a.node.remote() for a in actors])
        nodes = [w[0] for w in where]
        if method == "ivf":
            # each node's CPUs shared among its actors (the local search uses all of the machine's)
            per_node = {node: nodes.count(node) for node in nodes}
            ray.get([a.set_threads.remote(max(1, cpus // per_node[node])) for a, (node, cpus) in zip(actors, where)])
            result = _ivf(actors, source, n, d, k, metric, nprobe, nlist, centroids, random_state, progress,
                          keep_chunks, t0, nodes)
        else:
            result = _flat(actors, n, k, metric, progress, keep_chunks, t0)
        info = result[1] if keep_chunks else result.info
        info["actor_nodes"] = nodes  # where the actors ran (Ray node ids): several nodes, data crossed them
        info["nodes"] = len(set(nodes))
    except BaseException:
        for a in actors:
            ray.kill(a)
        raise
    if not (keep_chunks and isinstance(result[0], LiveLists)):  # live lists: their reader ends the actors
        for a in actors:
            ray.kill(a)
    return result


def _ivf(actors, source, n, d, k, metric, nprobe, nlist, centroids, random_state, progress, keep_chunks, t0,
         nodes):
    """The IVF route of :func:`ray_knn` (module docstring, steps 1-6); ``nodes``: each actor's Ray node."""
    import ray
    from tqdm.auto import tqdm

    P = len(actors)
    rng = np.random.default_rng(random_state)
    t_train = time.perf_counter()
    if centroids is not None:
        C = centroids
        if nprobe == "auto":
            _training_draws(rng, n, C.shape[0])
    else:
        nlist = L.default_nlist(n) if nlist is None else nlist
        nlist = max(1, min(int(nlist), n // 4 if n >= 8 else 1))
        C = L._train_cells(_RowsView(source, n, d), metric, nlist, rng, progress)
    info = {"k": k, "method": "ivf", "actors": P}
    extra = {}
    nl = C.shape[0]
    t_assign = time.perf_counter()
    C_ref = ray.put(C)
    if nprobe == "auto":  # the same sample and random stream as locally; its top-k found in the assignment
        q_ref = ray.put(L.sample_queries(_RowsView(source, n, d), metric, rng))
        got = ray.get([a.assign.remote(C_ref, L.AUTO_MAX_NPROBE, n, q_ref, k) for a in actors])
        del q_ref
        rec = _probe_curve([g[2] for g in got], k)
        npr = int(min(L.choose_nprobe(rec), nl))
        extra = {"nprobe_recall": [round(float(r), 4) for r in rec], "nprobe_estimated_recall": float(rec[npr - 1]),
                 "nprobe_queries": int(sum(g[2][3].shape[0] for g in got))}
        pins = ray.get([a.keep_probes.remote(npr, nl) for a in actors])
    else:
        npr = int(max(1, min(int(nprobe), nl)))
        got = ray.get([a.assign.remote(C_ref, npr, n) for a in actors])
        pins = [g[1] for g in got]
    del C_ref
    cnt = np.stack([g[0] for g in got])
    pin = np.sum(pins, axis=0)
    total = cnt.sum(axis=0)
    cell_ptr = np.concatenate(([0], np.cumsum(total))).astype(np.int64)
    # owners: contiguous runs of whole cells, about n / P rows each
    cb = np.array([0] + [int(np.searchsorted(cell_ptr, n * o / P)) for o in range(1, P)] + [nl])
    cb = np.maximum.accumulate(np.minimum(cb, nl))
    # rows of the shard exchange (step 3) whose owner runs on another node than their first shard: what
    # crosses the network besides the probe rounds' queries and lists
    csum = np.concatenate([np.zeros((P, 1), np.int64), np.cumsum(cnt, axis=1)], axis=1)
    owned = csum[:, cb[1:]] - csum[:, cb[:-1]]  # rows of shard s in owner o's cells
    info["cross_node_rows"] = int(sum(owned[s, o] for s in range(P) for o in range(P) if nodes[s] != nodes[o]))
    # the shard exchange (step 3) in pieces of SEND_ROWS rows per (shard, owner), at most two rounds in flight
    # (each actor's own rows of its own cells are placed by expect: they do not pass through the store)
    ray.get([actors[o].expect.remote(int(cb[o]), int(cb[o + 1]), int(cell_ptr[cb[o]]), d, k, npr,
                                     cnt[:, cb[o]:cb[o + 1]], o) for o in range(P)])
    pending = []
    sent = owned[~np.eye(P, dtype=bool)] if P > 1 else np.zeros(0, np.int64)
    last = time.perf_counter()
    for lo in range(0, int(sent.max()) if sent.size else 0, SEND_ROWS):
        pieces = [_call(a.send, P, cb, lo, lo + SEND_ROWS, s) for s, a in enumerate(actors)]
        pending.append([actors[o].take.remote(lo, *[pieces[s][o] for s in range(P)]) for o in range(P)])
        del pieces
        if len(pending) > 1:
            ray.get(pending.pop(0))
            time.sleep(max(0.0, SEND_ROUND_S - (time.perf_counter() - last)))  # let the raylet free them
            last = time.perf_counter()
    for p_ in pending:
        ray.get(p_)
    del pending
    pos2orig = np.empty(n, dtype=np.int32)  # Xp position -> original row id, for the emitted lists
    for o, orig in enumerate(ray.get([a.settle.remote(nl) for a in actors])):
        pos2orig[cell_ptr[cb[o]]:cell_ptr[cb[o + 1]]] = orig
    pos2orig = ray.put(pos2orig)
    t1 = time.perf_counter()
    info.update({"nlist": int(nl), "nprobe": npr, **extra, "train_s": t_assign - t_train,
                 "assign_s": t1 - t_assign, "prepare_s": t1 - t0})
    bar = tqdm(total=n * npr, desc="kNN (ivf, ray)", unit="rows", disable=not progress, leave=False,
               mininterval=0.5)
    with bar:
        bar.update(sum(ray.get([a.own_cells.remote() for a in actors])))
        batches = [_cell_batches(int(cb[o]), int(cb[o + 1]), pin, BATCH_ROWS) for o in range(P)]
        rounds = max((len(b) for b in batches), default=0) if npr > 1 else 0
        pending = []
        for t in range(rounds):
            bl = [b[t] if t < len(b) else None for b in batches]
            # an actor's own queries and lists stay in it (search makes and folds them): not through the store
            qs = [_call(a.probe_queries, P, bl, s) for s, a in enumerate(actors)]
            res = {o: _call(actors[o].search, P, *bl[o], o, *[qs[s][o] for s in range(P)])
                   for o in range(P) if bl[o] is not None}
            pending.append([actors[s].fold.remote(*[r[s] for r in res.values()]) for s in range(P)])
            del qs, res
            if len(pending) > 2:  # two rounds in flight
                bar.update(sum(ray.get(pending.pop(0))))
        while pending:
            bar.update(sum(ray.get(pending.pop(0))))
        sizes = np.diff(cell_ptr[cb])
        if keep_chunks:  # the lists stay in the actors, emitted chunk by chunk when read (LiveLists)
            ray.get([a.finish_ids.remote(pos2orig) for a in actors])
            spans = [[(o, a, b) for a, b in iter_chunks(int(sizes[o]), EMIT_ROWS)] for o in range(P)]
            spans = [sp for t in range(max(map(len, spans), default=0)) for per in spans if t < len(per)
                     for sp in [per[t]]]  # the owners' chunks interleaved: both emit while one pass reads
            info["search_s"] = time.perf_counter() - t1
            return LiveLists(actors, spans), info
        refs = [actors[o].emit.remote(a, b, True, pos2orig) for o in range(P)
                for a, b in iter_chunks(int(sizes[o]), EMIT_ROWS)]
        I_all = np.empty((n, k), dtype=np.int32)
        D_all = np.empty((n, k), dtype=np.float32)
        for ref in refs:
            qids, I, D = ray.get(ref)
            I_all[qids] = I
            D_all[qids] = D
    info["search_s"] = time.perf_counter() - t1
    return L.KNNResult(I_all, D_all, "ivf", info)


def _flat(actors, n, k, metric, progress, keep_chunks, t0):
    """The exact route of :func:`ray_knn`: query chunks against every shard, the shards' lists merged."""
    import ray
    from tqdm.auto import tqdm

    P = len(actors)
    t1 = time.perf_counter()
    info = {"k": k, "method": "flat", "actors": P, "prepare_s": t1 - t0, "nlist": None, "nprobe": None}
    kk = k + 1
    merge = ray.remote(num_cpus=0.5)(_merge_batch)
    step = max(FLAT_STEP, BATCH_ROWS // FLAT_STEP * FLAT_STEP)
    out_chunks, pending = [], []
    I_all = D_all = None
    if not keep_chunks:
        I_all = np.empty((n, k), dtype=np.int32)
        D_all = np.empty((n, k), dtype=np.float32)
    bar = tqdm(total=n, desc="kNN (flat, ray)", unit="rows", disable=not progress, leave=False, mininterval=0.5)

    def collect(ref):
        if keep_chunks:  # stays in the object store; waited for, as the shards go away after the search
            ray.wait([ref], fetch_local=False)
            out_chunks.append(ref)
            return
        qids, I, D = ray.get(ref)
        I_all[qids] = I
        D_all[qids] = D
        bar.update(qids.shape[0])

    with bar:
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            qs = [a.flat_queries.remote(lo, hi) for a in actors]
            res = [a.flat_search.remote(kk, *qs) for a in actors]
            pending.append(merge.remote(k, metric, P, not keep_chunks, *qs, *res))
            if len(pending) > 2 * P:
                collect(pending.pop(0))
        while pending:
            collect(pending.pop(0))
    info["search_s"] = time.perf_counter() - t1
    if keep_chunks:
        return out_chunks, info
    L._to_distance(D_all, metric)
    return L.KNNResult(I_all, D_all, "flat", info)


class _Shape:
    """Only the shape, for the local argument check."""

    def __init__(self, n, d):
        self.shape = (n, d)
        self.ndim = 2
