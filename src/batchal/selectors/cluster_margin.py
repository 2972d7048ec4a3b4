"""Cluster-Margin (Citovsky et al., NeurIPS 2021, Algorithm 1), the per-round step.

Given one cluster id per pool row (from a one-time average-linkage clustering),
each round:

1. ``M`` = the ``k_m`` unlabeled rows with the smallest margin, where
   ``k_m = margin_factor * k_t`` (the paper) unless that exceeds
   ``max_candidate_share`` of the unlabeled rows (see :func:`candidate_count`);
2. clusters are restricted to ``M`` (empty ones vanish);
3. clusters are ordered by size, smallest first (ties: smaller cluster id first);
4. round-robin: each pass visits the clusters in that order and takes one
   uniformly random remaining member of each; exhausted clusters drop out;
   passes repeat until ``k_t`` rows are taken.

The random member draws are realised as one random permutation of ``M``: a
cluster's members are visited in the order they appear in the permuted ``M``,
which is a uniform draw without replacement at every visit.

Cost: O(n) for the margins and the ``argpartition``, O(k_m log k_m) for the
sorts; the embeddings are never read.
"""
from __future__ import annotations

import numpy as np

from .._validation import BatchalInputError, check_count, check_number, first_nonfinite
from . import _round_robin
from .balance import balanced_order_fill, check_balance
from .base import Pool, Selector, register


def candidate_count(k: int, n_unlabeled: int, margin_factor: float = 10.0,
                    max_candidate_share: float | None = 0.1) -> int:
    """The number ``k_m`` of low-margin candidates for a batch of ``k``.

    ``k_m = min(margin_factor * k, max(min(2, margin_factor) * k, max_candidate_share * n_unlabeled))``,
    capped at ``n_unlabeled``; ``max_candidate_share=None`` gives the paper's plain
    ``margin_factor * k``.

    Why the share cap: the paper's ``k_m = 10 k_t`` comes from batches of about 1% of the
    pool, where the candidates are the least certain 10% of it. When a batch is a larger
    share of the pool, ``10 k_t`` covers most of the unlabeled rows, the margin filter
    vanishes and Cluster-Margin becomes cluster-stratified random sampling (smallest,
    often outlier, clusters first): measured on Fashion-MNIST with batches of 5,000 from
    60,000 it then tracked random (BENCHMARKS.md, *Label efficiency*). The cap keeps the
    candidates within the least certain 10% of the unlabeled rows, but never below
    ``2 k_t`` so the round-robin still has a choice; for ``k_t <= 1%`` of the pool it
    changes nothing.
    """
    km = float(margin_factor) * k
    if max_candidate_share is not None:
        km = min(km, max(min(2.0, float(margin_factor)) * k, float(max_candidate_share) * n_unlabeled))
    return int(min(np.ceil(km), n_unlabeled))


def round_robin(candidates: np.ndarray, cluster_ids: np.ndarray, k: int, rng: np.random.Generator,
                power: float = 0.0) -> np.ndarray:
    """Smallest-cluster-first round-robin over ``candidates``.

    Parameters
    ----------
    candidates : int array of shape (m,)
        Row indices (the low-margin set ``M``), in any order.
    cluster_ids : int array of shape (m,)
        Cluster id of each candidate.
    k : int
        How many to take (``k <= m``).
    rng : numpy Generator
    power : float in [0, 1], default 0
        How the visits are shared between clusters (a *power allocation*, as in
        stratified sampling: Bankier 1988). 0 is the paper's round-robin, every
        cluster one member per pass; with ``power = q`` a cluster holding ``s``
        candidates is visited ``s**q`` times as often, so 1 is a sample of ``M``
        stratified by cluster in proportion to the clusters' sizes. See
        :func:`power_round_robin`.

    Returns
    -------
    int64 array of shape (k,), in selection order.

    Notes
    -----
    Pass ``R`` is the last, partial pass: all members with pass number below
    ``R`` are taken (``taken(R) = sum_c min(size_c, R)``), plus the first
    ``k - taken(R)`` clusters still alive in pass ``R``. Finding ``R`` is a
    binary search over sizes; the members are then found in one O(m) scan and
    only the ``k`` winners are sorted. Extra memory: O(m) int64 for the
    permutation plus O(number of cluster ids) int32.
    """
    if power != 0:
        return power_round_robin(candidates, cluster_ids, k, rng, power)
    m = candidates.shape[0]
    perm = rng.permutation(m)
    cids, n_ids = _round_robin.dense_cluster_ids(np.asarray(cluster_ids))
    counts = np.bincount(cids, minlength=n_ids)
    nonempty = np.flatnonzero(counts)
    # visiting order: by size, ties by cluster id (nonempty is ascending in id; stable sort keeps it)
    order = nonempty[np.argsort(counts[nonempty], kind="stable")]
    sizes = counts[order]
    del counts, nonempty
    pos = np.full(n_ids, -1, dtype=np.int32)
    pos[order] = np.arange(order.shape[0], dtype=np.int32)
    csum = np.concatenate(([0], np.cumsum(sizes)))

    def taken_before(r):  # members taken in passes 0..r-1
        j = np.searchsorted(sizes, r, side="left")  # clusters with size < r contribute all members
        return int(csum[j]) + r * (sizes.shape[0] - j)

    lo, hi = 0, int(sizes[-1])  # smallest R with taken_before(R + 1) >= k
    while lo < hi:
        mid = (lo + hi) // 2
        if taken_before(mid + 1) >= k:
            hi = mid
        else:
            lo = mid + 1
    last_pass = lo
    alive = int(np.searchsorted(sizes, last_pass, side="right"))  # first position with size > R
    last_pos = alive + (k - taken_before(last_pass))
    idx, keys = _round_robin.take_in_passes(cids, perm, pos, order.shape[0], last_pass, last_pos, k)
    return candidates[idx[np.argsort(keys)]].astype(np.int64)


def power_round_robin(candidates: np.ndarray, cluster_ids: np.ndarray, k: int, rng: np.random.Generator,
                      power: float) -> np.ndarray:
    """The round-robin with a cluster of ``s`` candidates visited in proportion to ``s**power``.

    The ``r``-th member of a cluster (``r = 0, 1, ...`` in a uniformly random
    order, as in :func:`round_robin`) gets the key ``(r + 1/2) / s**power``; the
    batch is the ``k`` smallest keys, ties (the same key in several clusters) by
    cluster size, smallest first, then by cluster id. So a cluster gets about
    ``t * s**power`` members, rounded to the nearest whole number, for the ``t``
    that fills the batch: Webster's (Sainte-Lague) apportionment of the batch to
    the clusters by weight ``s**power``. ``power = 0`` gives the paper's passes:
    :func:`round_robin`'s batch, in its order (it is the faster path for that
    case); ``power = 1`` gives every cluster ``~ k * s / m`` members, the
    candidates' own mix of clusters, as a uniform sample of ``M`` would, but
    stratified, and a cluster too small for half a member gets none. (The key
    ``r / s**power`` would give every cluster its first member at key 0, so any
    batch no larger than the number of clusters would be the paper's at every
    power.)

    Why: on a pool of copies, clusters of one image's near-exact re-encodes hold
    dozens of candidates while its augmented copies fall into many small clusters,
    so the paper's equal visits fill the batch with augmented copies; a power
    between 0 and 1 moves the batch's mix back toward the candidates' own
    (BENCHMARKS.md, *The round-robin's visits shared by cluster size*, where it
    is measured: a clean test of originals asks for a power near 1, a test drawn
    as the pool's rows are for one of at most 0.75).

    Extra memory: O(m) float64 keys plus two O(m) int64 index arrays.
    """
    m = candidates.shape[0]
    perm = rng.permutation(m)
    cids, n_ids = _round_robin.dense_cluster_ids(np.asarray(cluster_ids))
    c = cids[perm]
    size = np.bincount(c, minlength=n_ids)[c].astype(np.float64)
    by_cluster = np.argsort(c, kind="stable")  # each cluster's members in the random order
    grouped = c[by_cluster]
    rank = np.empty(m, dtype=np.float64)
    rank[by_cluster] = np.arange(m) - np.searchsorted(grouped, grouped, side="left")
    take = np.lexsort((c, size, (rank + 0.5) / size ** float(power)))[:k]
    return candidates[perm[take]].astype(np.int64)


def margin_round_robin(candidates: np.ndarray, cluster_ids: np.ndarray, k: int) -> np.ndarray:
    """Margin-ordered round-robin: one member per cluster per pass, everything in margin order.

    Parameters
    ----------
    candidates : int array of shape (m,)
        Row indices, **most uncertain first**.
    cluster_ids : int array of shape (m,)
        Cluster id of each candidate.
    k : int
        How many to take (``k <= m``).

    Returns
    -------
    int64 array of shape (k,), in selection order.

    Notes
    -----
    Pass ``r`` takes the ``r``-th most uncertain member of every cluster that
    still has one; within a pass, clusters are visited in the order of their
    most uncertain candidate. With one candidate per cluster this is exactly
    margin; with many copies of one item in a cluster it takes one copy per
    pass. Deterministic: no random draw. O(m) scan plus O(m) selection of the
    ``k`` smallest keys and O(k log k) to order them.
    """
    cids, n_ids = _round_robin.dense_cluster_ids(np.asarray(cluster_ids))
    keys, _ = _round_robin.margin_order_keys(np.ascontiguousarray(cids), int(n_ids))
    m = keys.shape[0]
    part = np.argpartition(keys, k - 1)[:k] if k < m else np.arange(m)
    return candidates[part[np.argsort(keys[part], kind="stable")]].astype(np.int64)


def near_duplicate_round_robin(candidates: np.ndarray, cluster_ids: np.ndarray, probs, k: int,
                               tol: float, max_reps: int = 256, multilabel: bool = False,
                               embeddings=None, copies: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Margin order, each group of near-duplicates giving ``copies`` items per pass (default one).

    Parameters
    ----------
    candidates : int array of shape (m,)
        Row indices, **most uncertain first**.
    cluster_ids : int array of shape (m,)
    probs : float array of shape (m, C), or :class:`batchal.topk.TopK` of m rows
        The candidates' predicted probabilities (per-class probabilities for multi-label).
        Top-k rows compare on the union of their classes, a class missing from a row
        counting with the value nearest the other row's that the layout allows there
        (see :mod:`batchal.topk`); with every class listed this is the dense test.
    k : int
    tol : float
        Two candidates of one cluster are near-duplicates when no class
        probability differs by more than ``tol``.
    max_reps : int
        Representatives of a cluster compared per candidate (a cost bound).
    multilabel : bool
        Top-k rows hold the classes nearest 0.5 (only read for top-k input).
    embeddings : float array of shape (m, d), optional
        The candidates' embeddings. When given, the test compares them instead of
        ``probs``: two candidates of one cluster are near-duplicates when the cosine
        distance of their embeddings is at most ``tol``.
    copies : int, default 1
        Members of one near-duplicate group taken per pass: pass ``r // copies`` for
        a group's r-th copy. 1 spreads every copy; a count at least the largest
        group's size gives margin's order.

    Returns
    -------
    batch : int64 array of shape (k,), in selection order
    passes : int64 array of shape (m,)
        Each candidate's copy rank: 0 for the first of its near-duplicate group, r for its r-th copy
        (before the division by ``copies``).

    Notes
    -----
    Pass 0 is every candidate that is not a near-duplicate of a more uncertain
    one, in margin order; pass r the r-th near-duplicate of each group. On a
    pool without near-duplicates this is exactly margin; items are skipped only
    as far as the candidates are redundant.
    """
    from ..topk import TopK

    cids, _ = _round_robin.dense_cluster_ids(np.asarray(cluster_ids))
    cids = np.ascontiguousarray(cids, dtype=np.int64)
    if embeddings is not None:
        E = np.asarray(embeddings, dtype=np.float32)
        E = np.ascontiguousarray(E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), np.float32(1e-12)))
        passes = _round_robin.embedding_duplicate_passes(cids, E, float(tol), int(max_reps))
    elif isinstance(probs, TopK):
        passes = _round_robin.near_duplicate_passes_topk(
            cids, np.ascontiguousarray(probs.classes), np.ascontiguousarray(probs.probs, dtype=np.float32),
            probs.missing_bounds(multilabel), float(tol), int(max_reps), bool(multilabel))
    else:
        P = np.ascontiguousarray(probs, dtype=np.float32)
        passes = _round_robin.near_duplicate_passes(cids, P, float(tol), int(max_reps))
    m = passes.shape[0]
    keys = (passes // max(1, int(copies))) * m + np.arange(m)
    part = np.argpartition(keys, k - 1)[:k] if k < m else np.arange(m)
    return candidates[part[np.argsort(keys[part], kind="stable")]].astype(np.int64), passes


def _finite_rows(E: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``E`` (the embeddings of ``rows``), or an error naming a pool row that holds NaN or inf.

    Only the rows read are checked: the whole (n, d) matrix is never scanned for one round.
    """
    bad = first_nonfinite(E)
    if bad is not None:
        raise BatchalInputError(f"embeddings contains {bad[1]} (at row {int(rows[bad[0]])})")
    return E


#: random row pairs whose median cosine distance sets the unit of ``dup`` (see :func:`cosine_distance_scale`)
SCALE_PAIRS = 10_000


def cosine_distance_scale(pool: Pool, pairs: int = SCALE_PAIRS, seed: int = 0) -> float:
    """The unit of the embedding near-duplicate test: ``min(1, median cosine distance of random row pairs)``.

    In a centred embedding two unrelated rows are orthogonal on average (cosine
    distance 1), and ``dup`` is read as it is. An embedding that packs its rows
    into a cone (ReLU features of a network, un-centred model outputs) brings
    every distance down with the median, so a fixed cut would call distinct
    rows near-duplicates: ``dup`` is multiplied by that median there. Measured on
    the seed MLP's hidden layer of a clean 32-class pool: 79% of rows have a
    distinct neighbour within 0.01 and the median is 0.30, while the copies of its
    redundant version sit within 0.0002 (BENCHMARKS.md, *The near-duplicate test's
    unit*).

    ``pairs`` pairs of distinct rows drawn with a fixed ``seed``, apart from the
    selector's random state: the scale is a property of the embedding (the same
    every round), and the selector's own draws are left as they were. Reads
    ``2 x pairs`` rows, in row order: on a 1M x 256 float32 memory map 1.3 s
    with the file out of the page cache, 0.02 s once it is in.
    """
    n = int(pool.n)
    if n < 2:
        return 1.0
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, pairs)
    b = rng.integers(0, n - 1, pairs)
    b += b >= a  # distinct rows
    rows = np.concatenate([a, b]).astype(np.int64)
    E = _finite_rows(pool.rows_embeddings(rows), rows)
    E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), np.float32(1e-12))
    d = 1.0 - np.einsum("ij,ij->i", E[:pairs], E[pairs:], dtype=np.float64)
    return float(min(1.0, max(0.0, np.median(d))))


def redundancy_diagnostics(cand_cids: np.ndarray, k: int) -> dict:
    """How redundant the low-margin candidates are, measured on their clusters.

    Parameters
    ----------
    cand_cids : int array of shape (k_m,)
        Cluster ids of the candidates, **most uncertain first**.
    k : int
        Batch size.

    Returns
    -------
    dict
        ``k_m``; ``candidate_clusters`` (distinct clusters among the candidates);
        ``candidate_repeat_share``: share of candidates whose cluster already holds a
        more uncertain candidate; ``margin_batch_clusters`` and
        ``margin_batch_repeat_share``: the same for the ``k`` most uncertain rows,
        the batch plain margin would send. A high repeat share in margin's batch
        means margin would spend labels on items of clusters it already covers:
        that is where the diversity step pays.
    """
    k_m = int(cand_cids.shape[0])
    n_c = int(np.unique(cand_cids).shape[0])
    top = cand_cids[: min(k, k_m)]
    n_top = int(np.unique(top).shape[0])
    return {
        "k_m": k_m,
        "candidate_clusters": n_c,
        "candidate_repeat_share": 1.0 - n_c / max(k_m, 1),
        "margin_batch_clusters": n_top,
        "margin_batch_repeat_share": 1.0 - n_top / max(top.shape[0], 1),
    }


def describe_redundancy(diag: dict) -> str:
    """One plain sentence on how redundant the uncertain candidates are (printed by ``batchal select``)."""
    text = (f"redundancy: margin's own batch would take {100 * diag['margin_batch_repeat_share']:.0f}% of its rows "
            f"from clusters it already covers ({diag['margin_batch_clusters']:,} clusters); "
            f"{diag['candidate_clusters']:,} clusters among the k_m = {diag['k_m']:,} candidates")
    if "margin_batch_near_duplicate_share" in diag:
        nd = diag["margin_batch_near_duplicate_share"]
        # the ranges measured on the benchmark pools (BENCHMARKS.md), not a verdict
        ranges = ("at most 0.03% on the plain benchmark pools, 16-99% on the web-like 1M pools"
                  if diag.get("near_duplicate_test") == "dup"
                  else "benchmark pools: 4-33% when plain, 38-70% when made redundant")
        text += f"; {100 * nd:.0f}% of margin's batch are near-duplicates of a more uncertain candidate ({ranges})"
        if diag.get("dup_unit", 1.0) < 1.0:
            text += (f"; the embedding's rows crowd together (median distance of random pairs "
                     f"{diag['dup_unit']:.2f}), so dup was scaled by it")
    if "redundant_pool" in diag:
        text += ("; order=auto: a redundant pool, so the paper's round-robin" if diag["redundant_pool"]
                 else "; order=auto: not redundant, so margin's order with near-duplicates deferred")
    return text


@register
class ClusterMarginSelector(Selector):
    """Cluster-Margin: low-margin candidates spread over a fixed clustering.

    Parameters
    ----------
    margin_factor : float, default 10
        ``k_m = ceil(margin_factor * k_t)`` low-margin candidates (the paper's
        setting for its large experiments). Values below 1 are rejected.
    max_candidate_share : float in (0, 1] or None, default 0.1
        Also cap ``k_m`` at this share of the unlabeled rows, but not below
        ``2 k_t``; None applies the paper's rule unchanged. See
        :func:`candidate_count` for the rule and the evidence.
    order : {"size", "margin", "auto"}, default "size"
        ``"size"``: the paper's round-robin (clusters smallest first, a uniformly
        random member per visit). ``"margin"``: clusters visited in the order of
        their most uncertain candidate, members taken in margin order (see
        :func:`margin_round_robin`): margin's list with at most one item per
        cluster per pass. ``"auto"`` (needs ``dup`` or ``tol``): the paper's
        round-robin when at least ``redundant`` of margin's own batch are
        near-duplicates of a more uncertain candidate (a redundant pool),
        ``"margin"`` with the near-duplicate test otherwise; decided every call.
    tol : float or None, default None
        With ``order="margin"``: only *near-duplicates* are spread over passes:
        candidates of one cluster whose predicted probabilities differ by at
        most ``tol`` in every class (see :func:`near_duplicate_round_robin`).
        None: every member of a cluster counts as a repeat.
    dup : float or None, default None
        With ``order="margin"``: the near-duplicate test in the *embedding* space
        instead: candidates of one cluster whose embeddings are within cosine
        distance ``dup`` are spread over passes (see
        :func:`near_duplicate_round_robin`); needs the pool's embeddings (only the
        candidates' rows and 20,000 random rows are read). ``dup`` is in units where
        two random rows are orthogonal: it is multiplied by
        :func:`cosine_distance_scale`, ``min(1, median cosine distance of random row
        pairs)``, so it is read as given on a centred embedding and shrinks on one
        that packs its rows into a cone (ReLU features), where distinct rows crowd
        together. Copies of one item (re-uploads, bursts) sit at cosine distances
        near 0 while distinct items of a pool rarely come within 0.01 of that unit
        (BENCHMARKS.md, *Label savings at scale*), so on a pool without copies this
        is exactly margin. Exclusive with ``tol``.
    dup_scale : {"pool", "absolute"}, default "pool"
        ``"absolute"`` reads ``dup`` as an absolute cosine distance (the rule before
        2026-12-06; e.g. a cut taken over from a deduplication tool).
    copies : int, default 1
        With ``tol`` or ``dup``: members of one near-duplicate group taken per
        pass (1: one per group before any second copy; larger counts move the
        batch toward margin's, which takes every copy in margin order).
    power : float in [0, 1], default 0
        How the paper's round-robin (``order="size"``, or ``"auto"`` on a
        redundant pool) shares its visits: a cluster holding ``s`` candidates is
        visited in proportion to ``s**power`` (:func:`power_round_robin`). 0 is the
        paper (one member per cluster per pass); 1 keeps the candidates' own mix of
        clusters, a stratified sample of ``M``. Between them it trades the spread
        for the mix; measured on the web-like pools in BENCHMARKS.md (*The
        round-robin's visits shared by cluster size*).
    redundant : float in [0, 1], default 0.05
        With ``order="auto"``: the share of margin's batch that are
        near-duplicates at which the pool counts as redundant. Measured per
        round: 16-99% on the web-like pools, 20-86% on small pools made
        redundant, at most 0.03% on every 1M pool without copies and at most
        2.9% on the clean pools read through an MLP's ReLU embedding (5-39% on
        one of them before ``dup`` took the embedding's unit; BENCHMARKS.md,
        *The near-duplicate test's unit*).
    balance : {"uniform", "input"}, str path of a JSON file of shares, dict or None, default None
        Move the batch's share per predicted class toward a target (see
        :mod:`batchal.selectors.balance`). It acts on the round-robin: the whole
        visiting order of the candidates is formed, and the scan along it takes a
        candidate only while its class has quota, so the next visit goes to the
        next cluster whose candidate's class is still short. Quotas are capped by
        the candidates ``M`` of each class (the rest redistributed); ``input``
        is the distribution over the whole unlabeled pool.
    balance_by : str or None, default None
        Balance over the values of this metadata column of the pool instead of the
        predicted classes (``balance`` gives the target, default ``uniform``).
    typical : int or None, default None
        The low-budget way out (Hacohen et al., ICML 2022: typical examples first
        while the budget is low, uncertain ones after): while the labeled set holds
        fewer than ``typical`` rows, the first ``min(k, typical - labeled)`` rows of
        the batch are :class:`~batchal.selectors.typiclust.TypiclustSelector`'s picks
        (the most typical members of the largest least-covered clusters) and the rest
        follow this strategy's rule; needs the pool's embeddings. Advice:
        ``5 x classes`` (BENCHMARKS.md, *Low budgets*). ``balance`` applies to the rest.
    random_state : int, Generator or None

    Attributes
    ----------
    candidates_ : int64 array
        The low-margin candidate set ``M`` of the last call, most uncertain first.
    n_candidate_clusters_ : int
        Number of distinct clusters among ``M`` in the last call.
    diagnostics_ : dict
        ``k_m`` and the redundancy of the candidates (:func:`redundancy_diagnostics`);
        with ``dup``: ``dup_unit``, the unit it was multiplied by;
        ``typical``: rows taken by ``typical=`` (0 once the labeled set is past it).
    balance_ : dict
        With ``balance``: ``target``, ``quota`` and ``batch_counts`` per class of the last call.
    """

    name = "cluster-margin"
    requires = ("predictions", "clusters")
    ranks_by = "margin"  # the candidates M and, with order=margin, the visiting order

    def __init__(self, margin_factor: float = 10.0, max_candidate_share: float | None = 0.1, order: str = "size",
                 tol: float | None = None, dup: float | None = None, balance: str | dict | None = None,
                 balance_by: str | None = None, typical: int | None = None, copies: int = 1, redundant: float = 0.05,
                 dup_scale: str = "pool", power: float = 0.0, random_state=None):
        super().__init__(random_state=random_state)
        self.power = power
        self.dup_scale = dup_scale
        self.redundant = redundant
        self.copies = copies
        self.typical = typical
        self.balance = balance
        self.balance_by = balance_by
        self.margin_factor = margin_factor
        self.max_candidate_share = max_candidate_share
        self.order = order
        self.tol = tol
        self.dup = dup

    @classmethod
    def requires_for(cls, params: dict) -> tuple[str, ...]:
        """``dup`` and ``typical`` read embeddings besides the predictions and clusters."""
        reads = params.get("dup") is not None or params.get("typical") is not None
        return cls.requires + (("embeddings",) if reads else ())

    def requires_reason(self, req: str) -> str:
        if self.dup is None:
            return f"typical={self.typical} scores how typical rows are in their clusters: give the pool's embeddings"
        return f"dup={self.dup} compares the candidates' embeddings: give the pool's embeddings"

    def select(self, pool: Pool, batch_size: int) -> np.ndarray:
        if self.typical is not None and getattr(self, "candidates", None) is not None:
            raise BatchalInputError("typical= counts the labeled rows; candidates=neighbours would count every row "
                                    "outside the neighbourhood as labeled: drop one of them")
        return super().select(pool, batch_size)

    def _select(self, pool: Pool, k: int, rng: np.random.Generator) -> np.ndarray:
        self.diagnostics_ = {}
        t = 0
        if self.typical is not None:
            v = check_count(self.typical, "typical", note="labeled rows; advice: 5 x classes")
            t = int(min(k, max(0, v - (pool.n - pool.n_unlabeled))))
        if t == 0:
            batch = self._select_rule(pool, k, rng)
        else:
            from .typiclust import TypiclustSelector

            first = TypiclustSelector()._select(pool, t, rng)
            if t == k:
                # the predictions are not read for this batch, but bad ones are refused as in every round
                pool.top_uncertain("margin", 1)
                batch = first
            else:
                # the rest by this strategy's rule, the typical rows counting as labeled meanwhile
                saved = pool.labeled_mask
                pool.labeled_mask = saved.copy()
                pool.labeled_mask[first] = True
                try:
                    rest = self._select_rule(pool, k - t, rng)
                finally:
                    pool.labeled_mask = saved
                batch = np.concatenate([first, rest])
        if self.typical is not None:
            self.diagnostics_["typical"] = t
        return batch

    def _select_rule(self, pool: Pool, k: int, rng: np.random.Generator) -> np.ndarray:
        check_number(self.margin_factor, "margin_factor", 1, note="candidates per batch row")
        share = self.max_candidate_share
        if share is not None:
            check_number(share, "max_candidate_share", 0, 1, open_low=True, note="or None")
        if self.order not in ("size", "margin", "auto"):
            raise BatchalInputError(f"order must be 'size' (the paper), 'margin' or 'auto'; got {self.order!r}")
        if self.dup_scale not in ("pool", "absolute"):
            raise BatchalInputError(f"dup_scale must be 'pool' (dup in units of the pool's median distance, capped "
                                    f"at 1) or 'absolute' (dup as a plain cosine distance); got {self.dup_scale!r}")
        if self.dup_scale != "pool" and self.dup is None:
            raise BatchalInputError("dup_scale sets the unit of dup: give dup (embeddings) with it")
        check_number(self.redundant, "redundant", 0, 1, note="the share of margin's batch that makes a pool redundant")
        power = check_number(self.power, "power", 0, 1, note="0: the paper's equal visits per cluster, "
                                                            "1: visits in proportion to the cluster's candidates")
        if power != 0 and self.order == "margin":
            raise BatchalInputError("power shares the visits of the paper's round-robin: give it with order=size "
                                    "or order=auto, not order=margin")
        balanced = self.balance is not None or self.balance_by is not None
        check_balance(self.balance, self.balance_by)  # before any work
        k_m = candidate_count(k, pool.n_unlabeled, self.margin_factor, share)
        cand = pool.top_uncertain("margin", k_m)
        cids = np.asarray(pool.clusters[cand])
        self.candidates_ = cand
        self.diagnostics_.update(redundancy_diagnostics(cids, k))
        self.n_candidate_clusters_ = self.diagnostics_["candidate_clusters"]
        if self.tol is not None or self.dup is not None:
            key, value = ("tol", self.tol) if self.dup is None else ("dup", self.dup)
            if self.tol is not None and self.dup is not None:
                raise BatchalInputError("give one near-duplicate test: tol (probabilities) or dup (embeddings)")
            if self.order == "size":
                raise BatchalInputError(f"{key} applies with order=margin or order=auto only")
            value = check_number(value, key, 0, 1 if key == "tol" else 2)
            c = check_count(self.copies, "copies", note="near-duplicates taken per pass")
            # (a missing embedding is refused by select(), through requires_for)
            probs, emb = ((None, _finite_rows(pool.rows_embeddings(cand), cand)) if key == "dup"
                          else (pool.rows_probs(cand), None))
            if key == "dup":
                scale = cosine_distance_scale(pool) if self.dup_scale == "pool" else 1.0
                self.diagnostics_["dup_unit"] = scale
                value = value * scale
            # balanced: the whole visiting order of M (its first k are the plain batch), scanned with quotas
            batch, passes = near_duplicate_round_robin(cand, cids, probs, cand.shape[0] if balanced else k,
                                                       value, multilabel=pool.multilabel, embeddings=emb,
                                                       copies=c)
            self.diagnostics_["candidate_near_duplicate_share"] = float((passes > 0).mean())
            self.diagnostics_["margin_batch_near_duplicate_share"] = float((passes[: min(k, passes.shape[0])] > 0).mean())
            self.diagnostics_["near_duplicate_test"] = key
            if self.order == "auto":
                # margin's batch full of near-exact copies: the pool is redundant, and there the paper's
                # round-robin saved the most labels under both test splits (BENCHMARKS.md, *The recommendation,
                # revised again*); the walk's passes are computed either way, since its share decides
                redundant = self.diagnostics_["margin_batch_near_duplicate_share"] >= self.redundant
                self.diagnostics_["redundant_pool"] = bool(redundant)
                if redundant:
                    batch = round_robin(cand, cids, cand.shape[0] if balanced else k, rng, power=power)
        elif self.order == "auto":
            raise BatchalInputError("order=auto chooses by the share of near-duplicates in margin's batch: "
                                    "give dup (embeddings) or tol (probabilities)")
        elif self.copies != 1:
            raise BatchalInputError("copies counts near-duplicates: give tol (probabilities) or dup (embeddings)")
        elif self.order == "margin":
            batch = margin_round_robin(cand, cids, cand.shape[0] if balanced else k)
        else:
            batch = round_robin(cand, cids, cand.shape[0] if balanced else k, rng, power=power)
        if not balanced:
            return batch
        pos, self.balance_ = balanced_order_fill(pool, self.balance, batch, k, whole=False, by=self.balance_by)
        return batch[pos]
