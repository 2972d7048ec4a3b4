"""Graph HAC on Ray: reciprocal-nearest-neighbour (RAC) rounds over actors that own clusters by hash of id.

Every cluster keeps the id of its smaller-numbered child (as in the local
kernel) and lives on actor ``owner(id)``, a hash of the id: a cluster's
statistics (size, vector sum, sum of squared norms), its neighbour list (ids
only, unsorted, no weight per entry) and its certified ranking (its best
``TOP_M`` links and a threshold, as the local merge keeps them) sit on one
actor, so an actor holds O(its share of n k) memory. One round, driven by the
driver in bulk-synchronous steps whose messages go actor to actor through the
object store:

1. *propose*: every cluster whose ranking changed takes its nearest neighbour
   (the ranking's first: smallest linkage, ties to the smaller id) and tells
   the neighbour's owner;
2. *match*: an owner that sees ``x -> y`` with ``nn(y) = x`` has a reciprocal
   pair and confirms it to ``x``'s owner;
3. *rename*: the larger id ``b`` of each pair is renamed to the smaller ``a``
   in the lists of b's neighbours (their owners are told; b leaves their rankings);
4. *move*: b's statistics and list move to the owner of ``a``;
5. *merge*: the owner of ``a`` records the merge at the exact average linkage
   of the statistics, sums them and unites the two lists (each id once);
6. *visit and push*: each merged cluster sends its statistics once to every
   owner of some of its neighbours, which compute the linkages (the local
   engine's kernel on the same numbers), push each into the neighbour's
   ranking (the local ``_push``) and reply the best ``TOP_M`` of them per
   cluster, from which the merged cluster's ranking is made; then the clusters
   whose ranking ran out are visited in full the same way (without the push),
   as the local engine revisits them.

The pairs merged per round are exactly those of the local kernel on the same
graph, so the tree is the same. Clusters the graph leaves apart are joined on
the driver from their statistics, as the local engine does.
"""
from __future__ import annotations

import functools
import itertools
import math
import time

import numpy as np

from ..._validation import BatchalInputError, iter_chunks
from ...clustering import _graph_kernels as K
from ...clustering.graph import MERGE_SLACK
from . import _rac_kernels as R
from ._checkpoint import CHECKPOINT_EVERY_S
from ..base import StageFailed
from ._session import fixed_mmap_threshold, lost_worker, trimmed

#: CPUs an actor reserves: half, so tasks (the kNN stage's reads) can run beside one actor per CPU.
ACTOR_CPUS = 0.5
#: Clusters whose statistics travel in one push message (bounds the messages and the scratch rows: at
#: 1 << 16 and d = 64 the visits in flight held about 0.4 GB of the object store at 1M, issue 23).
PUSH_ROWS = 1 << 14
#: Merged pairs whose lists are united at a time (each group's room made first: a compaction between groups).
UNION_ROWS = 1 << 12
#: Virtual room reserved for an actor's merge lists, in multiples of its edges (touched only as used).
RESERVE = 2.5
_NO_WEIGHTS = np.empty(0, dtype=np.float64)  # the lists keep no weight per entry (K.make_room moves none)
_NO_IDS = np.empty(0, dtype=np.int32)  # R.own_edges counting: no arena
#: kNN chunks per call of an actor's count / fill (what its node fetches at once).
CHUNKS_PER_CALL = 4
# Fault injection at a known moment: a callable(rounds completed) the driver runs after every RAC round, or
# None. The tests kill an actor from it, since a timed kill misses a stage that is over in under a second.
_after_round = None


@functools.lru_cache(maxsize=8)
def _multiplier(n: int) -> int:
    """A multiplier coprime to ``n`` near ``n / golden ratio``: ``id -> id A mod n`` permutes ``[0, n)`` and
    spreads any run of ids (the small ids that survive merges among them) over the whole range."""
    a = max(int(n * 0.6180339887498949) | 1, 1)
    while math.gcd(a, n) != 1:
        a += 2
    return a


def owner_of(ids: np.ndarray, n_actors: int, n: int) -> np.ndarray:
    """The actor that owns each cluster id: ``(id A mod n) mod n_actors``, ``A`` = :func:`_multiplier`.

    The same permutation gives the cluster's row on its owner, ``(id A mod n) // n_actors``
    (:meth:`RacActor._loc`): an O(1) computation, no search and no table of all n ids.
    """
    ids = np.ascontiguousarray(ids)
    out = np.empty(ids.shape[0], dtype=np.int64)
    R.owners(ids, _multiplier(n), n, n_actors, out)
    return out


def _split(dest: np.ndarray, n_actors: int, *arrays):
    """Group the rows of ``arrays`` by destination actor (stable): one tuple of arrays per actor, or None."""
    # a counting sort, O(entries): 5M destinations among 4 actors in 0.03 s, against 0.32 s for
    # numpy's stable argsort (every push and proposal groups its entries)
    order, bounds = R.group_by(np.asarray(dest, dtype=np.int64), n_actors)
    out = []
    for q in range(n_actors):
        sel = order[bounds[q]:bounds[q + 1]]
        out.append(tuple(a[sel] for a in arrays) if sel.shape[0] else None)
    return out


def _busy(fn):
    """Count the seconds an actor spends inside ``fn`` (``RacActor.busy``: wall and CPU seconds). The rest
    of a stage's wall time is the messages (fetching the arguments, storing the returns), the driver's
    scheduling and waiting. CPU seconds (all the actor's threads) stay comparable on a loaded machine."""
    import functools

    @functools.wraps(fn)
    def timed(self, *args):
        t, c = time.perf_counter(), time.process_time()
        try:
            return fn(self, *args)
        finally:
            w0, c0 = self.busy.get(fn.__name__, (0.0, 0.0))
            self.busy[fn.__name__] = (w0 + time.perf_counter() - t, c0 + time.process_time() - c)

    return timed


class RacActor:
    """One actor's clusters: statistics, neighbour lists, rankings of their best links, its merge records.

    The graph's build and each round's rename, move and merge give the heap's free pages back when done
    (:func:`~._session.trimmed`: their temporaries are the large ones); the many push, propose and match
    calls do not (with a trim after every call their actor CPU seconds at 3M rose from 57 to 70, issue 23).
    """

    def __init__(self, rank: int, n_actors: int, n: int, metric_code: int, stats_dtype: str):
        fixed_mmap_threshold()
        self.rank = rank
        self.P = n_actors
        self.n = n
        self.metric = metric_code
        self.dtype = np.dtype(stats_dtype)
        # this actor's clusters: the ids whose permuted value is rank, rank + P, rank + 2 P, ... (row 0, 1, ...)
        self.A = _multiplier(n)
        # cluster ids and tree nodes (below 2 n) in int32 where they fit: the per-cluster arrays are an actor's
        # third largest part after its statistics and lists (9 of them, 36 bytes a cluster less: 54 MB an actor
        # at 3M rows, issue 23)
        self.idt = np.dtype(np.int32) if 2 * n < (1 << 31) else np.dtype(np.int64)
        self.gid = ((np.arange(rank, n, n_actors, dtype=np.int64) * pow(self.A, -1, n)) % n if n > 1 else
                    np.arange(rank, n, n_actors, dtype=np.int64)).astype(self.idt)
        self.m = self.gid.shape[0]
        self.counts = np.zeros(self.m, dtype=np.int64)
        self.bytes_sent = 0
        self.bytes_to = np.zeros(n_actors, dtype=np.int64)  # per receiving actor: what crosses nodes
        self.busy = {}  # seconds inside each method (_busy)

    def _loc(self, g):
        """Row of each owned cluster id here (see :func:`owner_of`)."""
        g = np.ascontiguousarray(g)
        out = np.empty(g.shape[0], dtype=np.int64)
        R.rows_of(g, self.A, self.n, self.P, out)
        return out

    def _sent(self, outs, *extra):
        """Count the bytes of the outboxes; return them (and ``extra``) as the method's several returns."""
        for q, o in enumerate(outs):
            if o is not None:
                b = sum(a.nbytes for a in o)
                self.bytes_sent += b
                self.bytes_to[q] += b
        vals = (*outs, *extra)
        return vals[0] if len(vals) == 1 else vals

    # ------------------------------------------------------------ building the graph
    def _own_edges(self, starts, lists, fill, nbr, count_only: bool):
        """This actor's entries of kNN chunks (:func:`_rac_kernels.own_edges`); ``starts[i]`` is chunk i's
        first row id, or None when the chunk is a kNN stage's ``(row ids, lists, ...)``."""
        for s, obj in zip(starts, lists):
            if s is None:
                rows, I = obj[0], obj[1]
            else:
                I = np.asarray(obj)
                rows = np.arange(int(s), int(s) + I.shape[0], dtype=np.int64)
            if I.shape[0]:
                R.own_edges(I, rows, self.A, self.n, self.P, self.rank, fill, nbr, count_only)

    @_busy
    @trimmed
    def count(self, starts, *lists):
        """Count this actor's entries of some kNN chunks (both directions), per owned cluster."""
        self._own_edges(starts, lists, self.counts, _NO_IDS, True)
        return True

    def alloc(self, slack: float, reserve: float = RESERVE):
        self.ptr = np.zeros(self.m + 1, dtype=np.int64)
        np.cumsum(self.counts, out=self.ptr[1:])
        self.raw = np.empty(int(self.ptr[-1]), dtype=np.int32)
        self.fill = self.ptr[:-1].copy()
        self.slack = slack
        self.reserve = max(float(reserve), slack)
        self.arena_events = {"compactions": 0, "grown": 0, "copied": 0}
        del self.counts
        return True

    @_busy
    @trimmed
    def fill_edges(self, starts, *lists):
        """Append this actor's entries of some kNN chunks to its lists (after :meth:`count` and :meth:`alloc`)."""
        self._own_edges(starts, lists, self.fill, self.raw, False)
        return True

    @_busy
    @trimmed
    def finish_graph(self):
        """Sort and dedupe every list (the symmetric graph), then leave room to grow."""
        uniq = np.zeros(self.m, dtype=np.int64)
        R.sort_unique_rows(self.raw, self.ptr, uniq)
        indptr = np.zeros(self.m + 1, dtype=np.int64)
        np.cumsum(uniq, out=indptr[1:])
        R.pack_rows(self.raw, self.ptr, indptr, uniq)
        nnz = int(indptr[-1])
        # The arena is reserved at RESERVE x the edges but only its used front is ever
        # written: untouched pages of np.empty cost no memory, so growing the arena is
        # moving a bound, not a copy with old and new alive together (that copy took two
        # 10M actors past 21 GB, BENCHMARKS.md). realloc would copy here too (measured).
        self.cap = max(int(nnz * self.slack) + self.m + 1, 16)  # the local merge's room: slack x E + n
        reserve = max(int(nnz * self.reserve) + 1, self.cap)
        self.nbr = np.empty(reserve, dtype=np.int32)
        self.nbr[:nnz] = self.raw[:nnz]
        del self.raw, self.fill, self.ptr
        self.start = indptr[:-1].copy()
        self.length = np.diff(indptr)
        self.end = nnz
        return nnz

    # ------------------------------------------------------------ statistics
    @_busy
    @trimmed
    def init_stats(self, source, code_cosine: bool):
        """Each owned row's statistics, prepared exactly as the local engine prepares them."""
        from ...clustering.knn import _prep_chunk

        d = None
        rows_out = None
        for blk in source.blocks:
            ids = np.arange(blk.start, blk.start + blk.rows, dtype=np.int64)
            sel = np.flatnonzero(owner_of(ids, self.P, self.n) == self.rank)
            if not sel.shape[0]:
                continue
            locs = self._loc(ids[sel])
            X = source.read(blk)
            if rows_out is None:
                d = X.shape[1]
                rows_out = np.empty((self.m + PUSH_ROWS, d), dtype=self.dtype)
            for a, b in iter_chunks(sel.shape[0]):
                rows = X[sel[a:b]]
                if self.dtype == np.float64:
                    blk64 = np.asarray(rows, dtype=np.float64)
                    if code_cosine:
                        blk64 /= np.linalg.norm(blk64, axis=1)[:, None]
                    rows_out[locs[a:b]] = blk64
                else:
                    rows_out[locs[a:b]] = _prep_chunk(rows, "cosine" if code_cosine else "sqeuclidean", 0)
        if rows_out is None:
            raise RuntimeError("an actor owns no rows")
        self.S = rows_out
        ext = self.m + PUSH_ROWS
        self.size = np.ones(ext, dtype=np.float64)
        if code_cosine:
            self.sq = np.ones(ext, dtype=np.float64)
        else:
            self.sq = np.empty(ext, dtype=np.float64)
            for a, b in iter_chunks(self.m):
                blk = self.S[a:b].astype(np.float64)
                self.sq[a:b] = np.einsum("ij,ij->i", blk, blk)
        self.alive = np.ones(self.m, dtype=bool)
        self.node = self.gid.copy()  # current tree node of each cluster (leaves: their row)
        self.nn = np.full(self.m, -1, dtype=self.idt)
        self.dirty = np.zeros(self.m, dtype=np.uint8)
        self.partner = np.full(self.m, -1, dtype=self.idt)
        # each cluster's certified ranking, as the local merge keeps it: its best TOP_M links (ids, linkages)
        # and a threshold (tw, ty) every other entry of its list ranks after; no weight per list entry
        M = K.TOP_M
        self.topi = np.full((self.m, M), -1, dtype=self.idt)
        self.topw = np.full((self.m, M), np.inf)
        self.topc = np.zeros(self.m, dtype=np.int32)
        self.tw = np.full(self.m, np.inf)
        self.ty = np.full(self.m, self.n, dtype=self.idt)
        self.seen = np.zeros(self.m, dtype=np.int32)  # targets counted so far in a cluster's visit
        self.stamp = np.full(self.m, -1, dtype=np.int32)  # the round a cluster last merged in
        self.round = 0
        self.phase = None  # the visits under way: (round, kind)
        self.todo = np.empty(0, dtype=np.int64)
        self.push_at = 0
        self.merged = np.empty(0, dtype=np.int64)
        self.records = []
        return d

    # ------------------------------------------------------------ one round
    @_busy
    def propose(self, label_base: int):
        """Number last round's merges (the driver knows the offsets now); nearest neighbour of dirty clusters."""
        if self.merged.shape[0]:
            self.node[self.merged] = label_base + np.arange(self.merged.shape[0])
            self.merged = np.empty(0, dtype=np.int64)
        xs = np.flatnonzero(self.dirty & self.alive).astype(np.int64)
        # the nearest neighbour is the ranking's first (after the visits, a ranking is empty only with its list)
        self.nn[xs] = np.where(self.topc[xs] > 0, self.topi[xs, 0], -1)
        self.dirty[:] = 0
        xs = xs[self.nn[xs] >= 0]
        y = self.nn[xs]
        return self._sent(_split(owner_of(y, self.P, self.n), self.P, self.gid[xs], y))

    @_busy
    def match(self, *inbox):
        """Reciprocal pairs among the proposals ``x -> y`` this actor's ``y`` received; confirm to x's owner."""
        xs, ys = [], []
        for msg in inbox:
            if msg is None:
                continue
            x, y = msg
            yl = self._loc(y)
            ok = self.nn[yl] == x
            xs.append(x[ok])
            ys.append(y[ok])
            self.partner[yl[ok]] = x[ok]
        x = np.concatenate(xs) if xs else np.empty(0, np.int64)
        y = np.concatenate(ys) if ys else np.empty(0, np.int64)
        return self._sent(_split(owner_of(x, self.P, self.n), self.P, x, y), int(x.shape[0]))

    @_busy
    @trimmed
    def rename(self, *inbox):
        """Confirmations in; each pair's larger id b tells the owners of its neighbours ``b -> a``."""
        for msg in inbox:
            if msg is not None:
                x, y = msg
                self.partner[self._loc(x)] = y
        bl = np.flatnonzero((self.partner >= 0) & (self.partner < self.gid))
        self.bl = bl
        R.dedupe_lists(bl, self.gid, self.start, self.length, self.nbr)  # each neighbour told once
        # per owner: the list entries x (4 bytes a rename) and each b once with its a and count
        xs, xb, bs, as_, cnt, bb = R.renames_by_owner(bl, self.gid, self.partner, self.start, self.length, self.nbr,
                                                      self.A, self.n, self.P)
        outs = [(xs[xb[q]:xb[q + 1]], bs[bb[q]:bb[q + 1]], as_[bb[q]:bb[q + 1]], cnt[bb[q]:bb[q + 1]])
                if xb[q + 1] > xb[q] else None for q in range(self.P)]
        return self._sent(outs)

    @_busy
    @trimmed
    def move(self, *inbox):
        """Apply the renames to the lists here; send each b's statistics and list to the owner of its a."""
        parts = [m for m in inbox if m is not None]
        if parts:  # the inboxes' groups in order: (entries x, b, a, count) as rename() sent them
            x, bs, as_, cnt = (np.concatenate([p[i] for p in parts]) for i in range(4))
            R.apply_renames(x, bs, as_, cnt, self.A, self.n, self.P, self.start, self.length, self.nbr, self.topi,
                            self.topw, self.topc, self.dirty)
            del x, bs, as_, cnt
        bl = self.bl
        a = self.partner[bl]
        dest = owner_of(a, self.P, self.n)
        outs = []
        for q in range(self.P):
            sel = np.flatnonzero(dest == q)
            if not sel.shape[0]:
                outs.append(None)
                continue
            bq = bl[sel]
            lists = R.gather_lists(bq, self.start, self.length, self.nbr)
            qptr = np.concatenate(([0], np.cumsum(self.length[bq])))
            outs.append((a[sel], self.gid[bq], self.S[bq], self.size[bq], self.sq[bq], self.node[bq], qptr, lists))
        self.alive[bl] = False
        self.length[bl] = 0
        self.nn[bl] = -1
        self.partner[:] = -1
        self.bl = None
        return self._sent(outs)

    @_busy
    @trimmed
    def merge(self, *inbox):
        """Merge each arriving b into its a (exact linkage, summed statistics, united lists); start the push."""
        parts = [m for m in inbox if m is not None]
        merged, recs = [], []
        self.round += 1  # this round's merged clusters carry its stamp (every actor counts every round)
        if parts:
            a = np.concatenate([p[0] for p in parts])
            order = np.argsort(a, kind="stable")  # merges numbered in id order: deterministic
            a = a[order]
            # the b's in a's order, each taken where it arrived (its part of the inbox, its row there): their
            # statistics chunk by chunk into the scratch rows and their lists group by group, so no copy of
            # the inbox's statistics or lists is made (at 3M rows, 0.15 GB an actor in the first round, issue 23)
            src = np.concatenate([np.full(p[0].shape[0], i, np.int64) for i, p in enumerate(parts)])[order]
            row = np.concatenate([np.arange(p[0].shape[0], dtype=np.int64) for p in parts])[order]
            node_b = np.concatenate([p[5] for p in parts])[order]
            lens = np.concatenate([np.diff(p[6]) for p in parts])[order]
            b_at = np.concatenate(([0], np.cumsum(lens)))
            al = self._loc(a)
            node_a = self.node[al].copy()
            heights = np.empty(a.shape[0])
            sizes = np.empty(a.shape[0])
            scr = self.m
            for s0, s1 in iter_chunks(a.shape[0], PUSH_ROWS):
                for i, p in enumerate(parts):
                    sel = np.flatnonzero(src[s0:s1] == i)
                    r = row[s0:s1][sel]
                    self.S[scr + sel] = p[2][r]
                    self.size[scr + sel] = p[3][r]
                    self.sq[scr + sel] = p[4][r]
                R.merge_pairs(al[s0:s1], scr, self.S, self.size, self.sq, self.metric, heights[s0:s1], sizes[s0:s1])
            # united a few thousand pairs at a time, as the local merge unites pair by pair: a compaction
            # between two groups drops the lists they replaced, so the arena's touched room stays near
            # slack x its edges (the whole round at once made it grow by a quarter, issue 23)
            for s0, s1 in iter_chunks(a.shape[0], UNION_ROWS):
                b_ptr = b_at[s0:s1 + 1] - b_at[s0]
                b_nbr = np.empty(int(b_ptr[-1]), dtype=self.nbr.dtype)
                for i, p in enumerate(parts):
                    sel = np.flatnonzero(src[s0:s1] == i)
                    R.copy_segments(p[7], p[6], row[s0:s1][sel], b_nbr, b_ptr[sel])
                self._room(int(self.length[al[s0:s1]].sum() + b_ptr[-1]))
                self.end = R.union_lists(al[s0:s1], a[s0:s1], b_ptr, b_nbr, self.start, self.length, self.nbr,
                                         self.end)
            del parts
            self.dirty[al] = 1
            self.stamp[al] = self.round
            self._unrank(al)  # ranked again by their visits (an empty list: no neighbour, no ranking)
            merged = al
            recs = np.stack([np.minimum(node_a, node_b), np.maximum(node_a, node_b)]).T
            self.records.append((recs, heights, sizes))
        self.merged = np.asarray(merged, dtype=np.int64)
        return int(self.merged.shape[0]), self.bytes_sent

    def _room(self, need: int):
        """Room for ``need`` entries at the arena's end: the local merge's rule (compact, then grow by a quarter)."""
        self.nbr, _, self.end, self.cap, event = K.make_room(self.start, self.length, self.nbr, _NO_WEIGHTS,
                                                             self.end, need, self.cap)
        for name, at in (("compactions", 1), ("grown", 2), ("copied", 3)):
            self.arena_events[name] += event >= at

    def _begin(self, phase):
        """Start the visits of ``phase = (round, kind)``: kind ``initial`` (every cluster, after the graph is
        built), ``merged`` (this round's merged clusters; their linkages are pushed into the targets' rankings)
        or ``revisit`` (clusters whose ranking ran out, as the local ``_nearest_or_visit``)."""
        self.phase = phase
        kind = phase[1]
        if kind == "initial":
            todo = np.flatnonzero(self.length > 0)
        elif kind == "merged":
            todo = self.merged[self.length[self.merged] > 0]
        else:
            todo = np.flatnonzero(self.dirty.astype(bool) & self.alive & (self.topc == 0) & (self.length > 0))
            R.dedupe_lists(todo, self.gid, self.start, self.length, self.nbr)  # renames may repeat an id
        todo = todo.astype(np.int64)
        self._unrank(todo)
        self.dirty[todo] = 1
        self.todo = todo
        self.push_at = 0
        self.update = kind == "merged"

    def _unrank(self, xs):
        """Empty the rankings of ``xs`` (before their visit)."""
        self.topc[xs] = 0
        self.topi[xs] = -1
        self.topw[xs] = np.inf
        self.tw[xs] = np.inf
        self.ty[xs] = self.n
        self.seen[xs] = 0

    @_busy
    def push(self, phase, *inbox):
        """Visits in chunks: linkages of visiting clusters to targets here, replied as partial rankings; the
        replies merged into the visitors' rankings; then the next chunk of this actor's own visits.

        A visit sends a cluster's statistics once to each actor owning some of its
        neighbours (``("visit", sender, update, ids, S, size, sq, ptr, targets)``);
        that actor computes each linkage, pushes it into the target's ranking
        (``update``) and replies per cluster the count of targets and their best
        ``TOP_M`` (``("reply", ids, count, kept, ranked ids, linkages)``), so no
        list entry keeps a weight and a reply is a few entries per cluster, not
        one per edge. Returns the outboxes and the number of messages sent.
        """
        if phase != self.phase:
            self._begin(phase)
        outs = [[] for _ in range(self.P)]
        M = K.TOP_M
        for msg in inbox:
            if msg is None:
                continue
            for part in msg:
                if part[0] == "reply":
                    _, c, cnt, kept, ri, rw = part
                    R.take_rankings(self._loc(c), cnt, kept, ri, rw, self.topi, self.topw, self.topc, self.tw,
                                    self.ty, self.seen)
                    continue
                _, sender, update, c, Sc, size_c, sq_c, ptr, ys = part
                scr = self.m
                k = c.shape[0]
                self.S[scr:scr + k] = Sc
                self.size[scr:scr + k] = size_c
                self.sq[scr:scr + k] = sq_c
                cnt = np.empty(k, dtype=np.int32)
                kept = np.empty(k, dtype=np.int8)
                ri = np.empty((k, M), dtype=self.idt)
                rw = np.empty((k, M), dtype=np.float64)
                R.visit_targets(c, scr, ptr, ys, self._loc(ys), self.S, self.size, self.sq, self.metric, update,
                                self.stamp, self.round, self.topi, self.topw, self.topc, self.tw, self.ty,
                                self.dirty, cnt, kept, ri, rw)
                outs[sender].append(("reply", c, cnt, kept, ri, rw))
        if self.push_at < self.todo.shape[0]:
            chunk = self.todo[self.push_at:self.push_at + PUSH_ROWS]
            self.push_at += chunk.shape[0]
            who, ys, bounds = R.gather_by_owner(chunk, self.start, self.length, self.nbr, self.A, self.n, self.P)
            for q in range(self.P):
                if bounds[q + 1] == bounds[q]:
                    continue
                w, y = who[bounds[q]:bounds[q + 1]], ys[bounds[q]:bounds[q + 1]]  # stably: cluster by cluster
                first = np.flatnonzero(np.concatenate(([True], w[1:] != w[:-1])))
                cl = chunk[w[first]]
                ptr = np.concatenate((first, [w.shape[0]]))
                outs[q].append(("visit", self.rank, self.update, self.gid[cl], self.S[cl], self.size[cl],
                                self.sq[cl], ptr, y))
        n_msgs = sum(len(o) for o in outs)
        for q, o in enumerate(outs):
            for part in o:
                b = sum(a.nbytes for a in part if isinstance(a, np.ndarray))
                self.bytes_sent += b
                self.bytes_to[q] += b
        vals = (*[tuple(o) if o else None for o in outs], n_msgs)
        return vals[0] if len(vals) == 1 else vals

    # ------------------------------------------------------------ results
    def roots(self):
        """Clusters left alive: ids, statistics, current node."""
        r = np.flatnonzero(self.alive)
        return self.gid[r], self.S[r], self.size[r], self.sq[r], self.node[r]

    def take_records(self):
        out = self.records
        self.records = []
        return out

    def memory(self):
        """This actor's peak RSS (bytes), the bytes it has sent, its arena's compactions and growths, the bytes
        it has sent to each actor and its Ray node."""
        import resource

        import ray

        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, self.bytes_sent, self.arena_events,
                self.bytes_to, ray.get_runtime_context().get_node_id(), self.busy)

    def ping(self):
        return self.rank

    # ------------------------------------------------------------ checkpoints
    def save(self, path: str):
        """Write this actor's whole state to ``path`` (atomically), between rounds.

        The arena is written up to its end only; :meth:`load` reserves its
        full length again (untouched pages cost nothing).
        """
        from ._checkpoint import save_pickle

        state = dict(self.__dict__)
        state["nbr"] = self.nbr[:self.end]
        state["reserved"] = self.nbr.shape[0]
        save_pickle(path, state)
        return True

    def load(self, path: str):
        """Take the state :meth:`save` wrote (this actor replaces one that died, or a killed job's)."""
        from ._checkpoint import load_pickle

        state = load_pickle(path)
        reserved = state.pop("reserved")
        full = np.empty(reserved, dtype=state["nbr"].dtype)
        full[:state["end"]] = state["nbr"]
        state["nbr"] = full
        self.__dict__.update(state)
        return True


# ---------------------------------------------------------------- the driver
def join_components(S, size, sq, node, n: int, zc: int, metric: str, code: int, random_state=0):
    """Join the clusters a graph left apart, as the local engine does, on their statistics alone.

    ``S``, ``size``, ``sq``, ``node`` hold the m roots in increasing cluster id
    (the order of the local engine's slots). Returns the merge rows (m - 1, 4)
    numbering new nodes from ``n + zc``.
    """
    from ...clustering.graph import join_lists

    m = S.shape[0]
    Z = np.empty((max(m - 1, 0), 4), dtype=np.float64)
    if m <= 1:
        return Z
    S = np.ascontiguousarray(S)
    parent = np.arange(m, dtype=np.int32)
    alive = np.ones(m, dtype=np.uint8)
    node_id = np.asarray(node, dtype=np.int64).copy()
    stamp = np.full(m, -1, dtype=np.int32)
    built = np.full(m, -1, dtype=np.int32)
    start = np.zeros(m, dtype=np.int64)
    length = np.zeros(m, dtype=np.int64)
    nbr = np.empty(1, dtype=np.int32)
    roots = np.arange(m, dtype=np.int32)
    z, it = 0, 0
    while roots.shape[0] > 1:
        nbr, off = join_lists(roots, S, size, metric, random_state, nbr, start, length, built)
        nbr, _, z, it, _, _ = K.rac(S, size, sq, parent, alive, node_id, stamp, built, start, length, nbr, off,
                                    roots, Z, z, n + zc, code, it)
        roots = np.flatnonzero(alive).astype(np.int32)
    return Z


class ChunkStream:
    """Directed kNN lists (an (n, k) array or memory map) as a stream for :func:`ray_rac`: each call of
    :meth:`chunks` puts them in the object store anew, ``rows`` rows at a time, as they are read."""

    def __init__(self, lists, rows: int = 1 << 16):
        self.lists, self.rows = lists, int(rows)

    def chunks(self):
        import ray

        for a in range(0, self.lists.shape[0], self.rows):
            yield a, ray.put(np.ascontiguousarray(self.lists[a:a + self.rows], dtype=np.int32))

    def close(self) -> None:
        self.lists = None


def ray_rac(source, knn_chunks, n: int, *, metric: str = "cosine", n_actors: int = 2, stats_dtype: str = "auto",
            random_state=0, progress: bool = False, slack: float = MERGE_SLACK, reserve: float = RESERVE, checkpoint=None,
            checkpoint_s: float = CHECKPOINT_EVERY_S, restarts: int = 2):
    """The average-linkage tree of a kNN graph, merged in RAC rounds over Ray actors.

    Parameters
    ----------
    source : RowSource
        The rows (for the statistics), read by the actors.
    knn_chunks : list, stream or callable
        The graph as directed kNN lists (original row ids, -1 = none): items
        ``(row_start, lists (m, k) or an ObjectRef of them)``, or ObjectRefs of
        ``(row ids, lists, ...)`` as :func:`batchal.engines.ray.knn.ray_knn` keeps them;
        or a stream, whose ``chunks()`` makes such items anew at each call (the kNN
        stage's live actors, :class:`batchal.engines.ray.knn.LiveLists`, or
        :class:`ChunkStream` over an array): read a few chunks at a time, once to count
        and once to fill, so the object store never holds all the lists;
        or a callable that returns a list or a stream, called at every build of the graph
        (the first, and a restart that finds no checkpoint): the lists are then let
        go as soon as the actors hold their graph, so they leave the object store
        before the rounds (208 MB at 1M, k = 50), and the caller must hold none of them;
        a stream it returns is closed then (the kNN actors end).
    n : int
    metric : {"cosine", "euclidean", "sqeuclidean"}
    n_actors : int
    stats_dtype : {"auto", "float64", "float32"}
        As in the local engine (``auto``: float64 while n d 8 <= 512 MiB).
    slack, reserve : float
        Each actor's merge lists start with room for ``slack`` x its edges (the
        local merge's ``MERGE_SLACK``, 1.05: at 1.3 the room the first rounds
        touched was 70 MB more at 1M, issue 23) and grow (after a compaction) by
        a quarter, within ``reserve`` x its edges without a copy; only the room
        used is ever resident.
    checkpoint : JobCheckpoint, optional
        Where every actor's state is written after the first linkages and then
        between rounds every ``checkpoint_s`` seconds (0: every round), or less
        often when writing one takes over a ninth of that; a checkpoint found
        there (a killed job's) is resumed instead of building the graph.
    restarts : int
        When a worker dies (an actor's process, its node), every actor is
        replaced and reloads the last checkpoint (without one: the stage starts
        over), at most this many times; then :class:`StageFailed` says how to
        resume. Rounds are deterministic, so the tree is the same either way.

    Returns
    -------
    Z : (n - 1, 4) scipy linkage, monotone, leaves in the original numbering.
    info : dict
        Timings, rounds, merges and bytes sent per round, edges, components, peak RSS per actor,
        the actors' nodes and the bytes that crossed nodes, checkpoints written and restarts.
    """
    import ray
    from tqdm.auto import tqdm

    from ...clustering.graph import STATS_F64_MAX_BYTES, _finish_tree, _metric_code

    code = _metric_code(metric)
    t0 = time.perf_counter()
    P = int(n_actors)
    info: dict = {"actors": P}
    Actor = ray.remote(num_cpus=ACTOR_CPUS, scheduling_strategy="SPREAD")(RacActor)
    if n >= 1 << 31:
        raise BatchalInputError(f"the ray graph HAC holds ids as int32: n must be below 2**31, got {n}")
    # the kNN chunks as (first row id or None, ref): each actor reads every chunk where it lies and takes
    # its own entries (no task cuts them into pieces: no worker process left holding its memory, and no
    # pieces in the object store, 16 bytes per list entry; an actor on another node fetches 4)
    def chunk_items(chunks):
        return [(None, it) if isinstance(it, ray.ObjectRef) else
                (int(it[0]), it[1] if isinstance(it[1], ray.ObjectRef) else ray.put(np.asarray(it[1])))
                for it in chunks]

    fresh = callable(knn_chunks)
    items = None if fresh else knn_chunks if hasattr(knn_chunks, "chunks") else chunk_items(knn_chunks)
    if stats_dtype not in ("auto", "float64", "float32"):
        raise BatchalInputError(f"stats_dtype must be auto, float64 or float32; got {stats_dtype!r}")

    def call(method, nret, *args):
        """A method's returns as a list of refs, however many there are."""
        r = method.options(num_returns=nret).remote(*args)
        return r if nret > 1 else [r]

    def build():
        """The symmetric graph from the kNN chunks, the statistics and the first linkages: round 0's state."""
        # two passes over the chunks (count, fill): the edges are read twice instead of held twice. A stream
        # (the kNN stage's live actors, ChunkStream) makes its chunks anew for each pass, a few at a time,
        # each let go once the actors have read it: the object store never holds all the lists (its pages
        # stay at their high-water mark, so holding them left 0.67 GB resident through the HAC at 3M rows)
        got = knn_chunks() if fresh else items
        stream = hasattr(got, "chunks")
        if fresh and not stream:
            got = chunk_items(got)
        try:
            for step in ("count", "fill"):
                if step == "fill":
                    ray.get([a.alloc.remote(slack, reserve) for a in actors])
                seq = got.chunks() if stream else iter(got)
                waits = []
                while True:
                    batch = list(itertools.islice(seq, CHUNKS_PER_CALL))
                    if not batch:
                        break
                    starts = [it[0] for it in batch]
                    waits += [(a.count if step == "count" else a.fill_edges).remote(starts, *[it[1] for it in batch])
                              for a in actors]
                    del batch
                    # bounded in flight: a few calls per actor (a stream's: the batch read and the next one made)
                    if len(waits) > (P if stream else 2 * P):
                        ray.get(waits[:-P])
                        waits = waits[-P:]
                ray.get(waits)
                del seq, waits
        finally:
            if stream and fresh:
                got.close()  # the kNN stage's actors end here: the graph is in the RAC actors (or the build failed)
        del got  # a callable's lists: none held now, they leave the object store before the rounds
        edges = sum(ray.get([a.finish_graph.remote() for a in actors]))
        src_ref = ray.put(source)
        ray.get([a.init_stats.remote(src_ref, code == K.COSINE) for a in actors])
        t1 = time.perf_counter()
        push_all((0, "initial"))
        b0 = sum(m[1] for m in ray.get([a.memory.remote() for a in actors]))
        return {"edges": edges // 2, "build_s": t1 - t0, "initial_weights_s": time.perf_counter() - t1,
                "initial_weights_bytes": int(b0), "b0": int(b0), "rounds": 0, "zc": 0, "label_base": [n] * P,
                "counts": [], "merges_per_round": [], "bytes_per_round": []}

    def push_all(phase):
        """Run the visits of ``phase = (round, kind)`` until no actor sends anything."""
        inbox = [[] for _ in range(P)]
        while True:
            outs = [call(a.push, P + 1, phase, *inbox[q]) for q, a in enumerate(actors)]
            del inbox  # held by the pushes until they have read it
            if sum(ray.get([o[P] for o in outs])) == 0:
                return
            inbox = [[outs[p][q] for p in range(P)] for q in range(P)]
            del outs

    def save(st):
        """Every actor's state and the driver's round state, as the job's current checkpoint; its seconds."""
        t = time.perf_counter()
        tmp = checkpoint.rac_begin(st["rounds"])
        ray.get([a.save.remote(str(tmp / f"actor-{p}.pkl")) for p, a in enumerate(actors)])
        checkpoint.rac_commit(tmp, st["rounds"], st)
        info["checkpoints"] += 1
        info["checkpoint_s"] = info.get("checkpoint_s", 0.0) + time.perf_counter() - t
        return time.perf_counter() - t

    def rounds_from(st, bar):
        """RAC rounds until no reciprocal pair is left, from the state ``st`` (updated in place)."""
        last_save, save_s = time.perf_counter(), 0.0
        while True:
            # each step's messages are let go once the next step is submitted (its tasks hold them while
            # they need them): a round's renames and moves do not sit in the object store through its visits
            outA = [call(a.propose, P, st["label_base"][p]) for p, a in enumerate(actors)]
            outB = [call(a.match, P + 1, *[outA[p][q] for p in range(P)]) for q, a in enumerate(actors)]
            del outA
            if sum(ray.get([o[P] for o in outB])) == 0:
                return
            outC = [call(a.rename, P, *[outB[q][p] for q in range(P)]) for p, a in enumerate(actors)]
            del outB
            outD = [call(a.move, P, *[outC[p][q] for p in range(P)]) for q, a in enumerate(actors)]
            del outC
            res = ray.get([a.merge.remote(*[outD[p][q] for p in range(P)]) for q, a in enumerate(actors)])
            del outD
            cnt = [r[0] for r in res]
            b1 = sum(r[1] for r in res)  # bytes sent so far (this round's pushes count in the next)
            st["counts"].append(cnt)
            st["label_base"] = [int(x) for x in n + st["zc"] + np.concatenate(([0], np.cumsum(cnt)[:-1]))]
            st["zc"] += sum(cnt)
            push_all((st["rounds"], "merged"))  # the merged clusters' linkages, pushed to their neighbours
            push_all((st["rounds"], "revisit"))  # then the clusters whose ranking ran out, in full
            st["rounds"] += 1
            if _after_round is not None:
                _after_round(st["rounds"])
            st["merges_per_round"].append(int(sum(cnt)))
            st["bytes_per_round"].append(int(b1 - st["b0"]))
            st["b0"] = int(b1)
            bar.update(int(sum(cnt)))
            # every checkpoint_s seconds, but at most a tenth of the time on checkpoints (a 10M pool's
            # actors write several GB each); checkpoint_s = 0: after every round
            gap = checkpoint_s and max(checkpoint_s, 9 * save_s)
            if checkpoint is not None and time.perf_counter() - last_save >= gap:
                save_s = save(st)
                last_save = time.perf_counter()

    d = int(source.read(source.blocks[0]).shape[1])
    if stats_dtype == "auto":
        stats_dtype = "float64" if n * d * 8 <= STATS_F64_MAX_BYTES else "float32"
    info["stats_dtype"] = stats_dtype
    info["checkpoints"] = 0
    info["restarts"] = 0
    info["resumed_from_round"] = None
    saved = checkpoint.rac_round() if checkpoint is not None else None
    if saved is not None:
        info["resumed_from_round"] = saved[1]["rounds"]
    actors = []
    while True:
        try:
            actors = [Actor.remote(p, P, n, code, stats_dtype) for p in range(P)]
            if saved is None:
                st = build()
                if checkpoint is not None:
                    save(st)  # the graph and the first linkages: the longest part of the stage to redo
            else:  # every actor back to the last completed checkpoint's round (the rounds are deterministic)
                where, st = saved
                ray.get([a.load.remote(str(where / f"actor-{p}.pkl")) for p, a in enumerate(actors)])
            t1 = time.perf_counter()
            bar = tqdm(total=n - 1, initial=st["zc"], desc="HAC rounds (ray)", unit="merges", disable=not progress,
                       leave=False, mininterval=0.5)
            with bar:
                rounds_from(st, bar)
            t2 = time.perf_counter()
            # the tree rows, numbered as the labels were given: round by round, actor by actor, id order
            Z = np.empty((n - 1, 4), dtype=np.float64)
            recs = ray.get([a.take_records.remote() for a in actors])
            taken = [0] * P
            row = 0
            for cnt in st["counts"]:
                for p in range(P):
                    if cnt[p] == 0:
                        continue
                    kids, h, sz = recs[p][taken[p]]
                    taken[p] += 1
                    Z[row:row + cnt[p], :2] = kids
                    Z[row:row + cnt[p], 2] = h
                    Z[row:row + cnt[p], 3] = sz
                    row += cnt[p]
            roots = ray.get([a.roots.remote() for a in actors])
            mem = ray.get([a.memory.remote() for a in actors])
            break
        except Exception as exc:
            for a in actors:
                ray.kill(a)
            actors = []
            if not lost_worker(exc):
                raise
            saved = checkpoint.rac_round() if checkpoint is not None else None
            if info["restarts"] >= restarts:
                at = f"round {saved[1]['rounds']}" if saved is not None else "the stage's start"
                raise StageFailed(
                    f"a Ray worker of the RAC stage died ({type(exc).__name__}) and {restarts} restart(s) are spent; "
                    + (f"rerun with --resume to continue from {at}" if checkpoint is not None else
                       "rerun with a checkpoint directory to make the stage resumable")) from None
            info["restarts"] += 1  # new actors from the last checkpoint (or the start): the same rounds again
    for a in actors:
        ray.kill(a)
    for key in ("edges", "build_s", "initial_weights_s", "initial_weights_bytes"):
        info[key] = st.get(key)
    info["rounds"] = st["rounds"]
    info["rounds_s"] = t2 - t1  # this run's rounds (after a resume: those after the checkpoint)
    info["merge_s"] = (st.get("initial_weights_s") or 0.0) + info["rounds_s"]  # the first linkages and the rounds
    info["merges_per_round"] = st["merges_per_round"]
    info["bytes_per_round"] = st["bytes_per_round"]
    info["actor_peak_bytes"] = [int(m[0]) for m in mem]
    info["bytes_sent"] = int(sum(m[1] for m in mem))
    info["arena"] = {key: int(sum(m[2][key] for m in mem)) for key in mem[0][2]}
    nodes = [m[4] for m in mem]
    info["actor_nodes"] = nodes  # where the actors ran (Ray node ids)
    info["nodes"] = len(set(nodes))
    # messages between actors on different nodes: the bytes that crossed the network
    info["cross_node_bytes"] = int(sum(mem[p][3][q] for p in range(P) for q in range(P) if nodes[p] != nodes[q]))
    # seconds inside each actor method, the busiest actor's (since the last restart); against the stage's
    # wall time this says how much of it the actors computed and how much went to messages and waiting
    info["actor_busy_s"] = {key: [round(max(m[5].get(key, (0.0, 0.0))[i] for m in mem), 2) for i in (0, 1)]
                            for key in sorted(set().union(*(m[5] for m in mem)))}  # [wall, CPU]
    gids = np.concatenate([r[0] for r in roots])
    order = np.argsort(gids)
    S = np.concatenate([r[1] for r in roots])[order]
    size = np.concatenate([r[2] for r in roots])[order]
    sq = np.concatenate([r[3] for r in roots])[order]
    node = np.concatenate([r[4] for r in roots])[order]
    info["components"] = int(gids.shape[0])
    Zj = join_components(S, size, sq, node, n, row, metric, code, random_state)
    Z[row:row + Zj.shape[0]] = Zj
    row += Zj.shape[0]
    if row != n - 1:
        raise RuntimeError(f"graph HAC on ray produced {row} merges for {n} rows")
    info["join_s"] = time.perf_counter() - t2
    Z, raised = _finish_tree(Z, n, np.arange(n, dtype=np.int64), metric)
    info["inversions"] = raised
    info["total_s"] = time.perf_counter() - t0
    return Z, info
