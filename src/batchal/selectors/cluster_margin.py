"""Cluster-Margin (Citovsky et al., NeurIPS 2021, Algorithm 1), the per-round step.

Given one cluster id per pool row (from a one-time average-linkage clustering),
each round:

1. ``M`` = the ``k_m = margin_factor * k_t`` unlabeled rows with the smallest
   margin (all unlabeled rows if there are fewer);
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

from .._validation import BatchalInputError
from .base import Pool, Selector, register, top_k


def round_robin(candidates: np.ndarray, cluster_ids: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
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

    Returns
    -------
    int64 array of shape (k,), in selection order.
    """
    m = candidates.shape[0]
    perm = rng.permutation(m)
    cand = candidates[perm]
    cid = cluster_ids[perm]
    uniq, inv, counts = np.unique(cid, return_inverse=True, return_counts=True)
    # position of each cluster in the visiting order: by size, then by cluster id
    order = np.lexsort((uniq, counts))
    position = np.empty_like(order)
    position[order] = np.arange(order.shape[0])
    pos = position[inv]
    # rank of each member within its cluster, in permuted order (stable sort keeps it)
    by_cluster = np.argsort(pos, kind="stable")
    starts = np.zeros(order.shape[0], dtype=np.int64)
    np.cumsum(counts[order][:-1], out=starts[1:])
    rank = np.empty(m, dtype=np.int64)
    rank[by_cluster] = np.arange(m) - starts[pos[by_cluster]]
    # visiting order = pass number first, then cluster position: one unique int64 key,
    # so the first k visits come from an O(m) partition plus an O(k log k) sort
    key = rank * order.shape[0] + pos
    if k < m:
        first = np.argpartition(key, k - 1)[:k]
        visit = first[np.argsort(key[first])]
    else:
        visit = np.argsort(key)
    return cand[visit].astype(np.int64)


@register
class ClusterMarginSelector(Selector):
    """Cluster-Margin: low-margin candidates spread over a fixed clustering.

    Parameters
    ----------
    margin_factor : float, default 10
        ``k_m = ceil(margin_factor * k_t)`` low-margin candidates (the paper's
        setting for its large experiments). Values below 1 are rejected.
    random_state : int, Generator or None

    Attributes
    ----------
    candidates_ : int64 array
        The low-margin candidate set ``M`` of the last call.
    n_candidate_clusters_ : int
        Number of distinct clusters among ``M`` in the last call.
    """

    name = "cluster-margin"
    requires = ("predictions", "clusters")

    def __init__(self, margin_factor: float = 10.0, random_state=None):
        super().__init__(random_state=random_state)
        self.margin_factor = margin_factor

    def _select(self, pool: Pool, k: int, rng: np.random.Generator) -> np.ndarray:
        if not np.isfinite(self.margin_factor) or self.margin_factor < 1:
            raise BatchalInputError(f"margin_factor must be >= 1; got {self.margin_factor}")
        k_m = min(int(np.ceil(self.margin_factor * k)), pool.n_unlabeled)
        cand = top_k(pool.uncertainty("margin"), pool.labeled_mask, k_m)
        cids = np.asarray(pool.clusters[cand])
        self.candidates_ = cand
        self.n_candidate_clusters_ = int(np.unique(cids).shape[0])
        return round_robin(cand, cids, k, rng)
