"""A SEALS-style candidate pool for any strategy: only the labeled set's nearest neighbours are candidates.

SEALS (Coleman et al., AAAI 2022, "Similarity Search for Efficient Active
Learning and Search of Rare Concepts") selects from a 10B-image pool by
considering only the ``K`` nearest unlabeled neighbours of each labeled item:
rare concepts sit near the few examples found so far, and the candidate set
grows with the labels, not with the pool. Here that restriction is one spec
key every strategy takes, ``candidates=neighbours:K``
(``margin:candidates=neighbours:50``, ``cluster-margin:order=margin:candidates=neighbours:100``):
rows outside the neighbourhood are treated as labeled for the selection, so the
strategy runs unchanged on what is left (balance then reads the candidates'
distribution for ``input``, as with a config's filters).

The neighbourhood is found with :class:`batchal.similar.SimilarIndex` on the
pool's embeddings (exact below :data:`batchal.clustering.knn.EXACT_MAX_ROWS`
rows, IVF above) in the cosine metric, each labeled row querying its own ``K``
nearest unlabeled rows.
"""
from __future__ import annotations

import numpy as np

from .._validation import BatchalInputError

__all__ = ["parse_candidates", "neighbourhood_mask", "restricted", "CANDIDATES_FORM"]

CANDIDATES_FORM = "neighbours:K (K nearest unlabeled rows of each labeled row, e.g. neighbours:50)"


def parse_candidates(value) -> int:
    """``"neighbours:K"`` (or ``neighbors:K``) -> ``K``; anything else is an error naming the form."""
    if isinstance(value, str):
        kind, sep, k = value.partition(":")
        if kind in ("neighbours", "neighbors") and sep and k.isdigit() and int(k) >= 1:
            return int(k)
    raise BatchalInputError(f"candidates must be {CANDIDATES_FORM}; got {value!r}")


def neighbourhood_mask(pool, k: int) -> np.ndarray:
    """Bool (n,): unlabeled rows among the ``k`` nearest unlabeled rows of some labeled row.

    Raises
    ------
    BatchalInputError
        The pool has no embeddings or no labeled row to start from.
    """
    from ..similar import SimilarIndex

    if pool.embeddings is None:
        raise BatchalInputError("candidates=neighbours needs the pool's embeddings (--embeddings)")
    labeled = np.flatnonzero(pool.labeled_mask)
    if labeled.size == 0:
        raise BatchalInputError("candidates=neighbours needs labeled rows: their neighbours are the candidates "
                                "(select the first batch without it)")
    index = SimilarIndex(pool.checked_embeddings(), metric="cosine")
    return index.neighbourhood(labeled, min(int(k), pool.n_unlabeled), allowed=~pool.labeled_mask)


class restricted:
    """Context manager: ``pool.labeled_mask`` also covers the rows outside the neighbourhood, then is restored.

    Parameters
    ----------
    pool : Pool
    k : int or None
        None: no restriction.
    batch_size : int
        Refused (with the neighbourhood's size) when the neighbourhood holds fewer candidates.
    """

    def __init__(self, pool, k: int | None, batch_size: int):
        self.pool, self.k, self.batch_size = pool, k, batch_size
        self.saved = None

    def __enter__(self):
        if self.k is None:
            return self.pool
        mask = neighbourhood_mask(self.pool, self.k)
        n_cand = int(mask.sum())
        if isinstance(self.batch_size, (int, np.integer)) and n_cand < self.batch_size:
            raise BatchalInputError(f"candidates=neighbours:{self.k}: the labeled rows' neighbourhood holds "
                                    f"{n_cand:,} candidate rows, fewer than the batch of {self.batch_size:,}; "
                                    "raise K")
        self.saved = self.pool.labeled_mask
        self.pool.labeled_mask = self.saved | ~mask
        return self.pool

    def __exit__(self, *exc):
        if self.saved is not None:
            self.pool.labeled_mask = self.saved
