"""Coreset (Sener & Savarese, 2018): k-center greedy on the embeddings."""
from __future__ import annotations

import numpy as np

from .._validation import as_float32_c, iter_chunks
from . import _kernels
from .base import Pool, Selector, progress_blocks, register


def nearest_sqdist(X: np.ndarray, centers: np.ndarray, chunk_rows: int = 1 << 15) -> np.ndarray:
    """Squared euclidean distance of each row of ``X`` to its nearest row of ``centers``.

    faiss's exact flat index does the BLAS distance work; rows of ``X`` are
    streamed in chunks so a memmap is read once and only (chunk, 1) results are held.
    """
    import faiss

    index = faiss.IndexFlatL2(centers.shape[1])
    index.add(as_float32_c(centers))
    out = np.empty(X.shape[0], dtype=np.float64)
    for a, b in iter_chunks(X.shape[0], chunk_rows):
        D, _ = index.search(as_float32_c(X[a:b]), 1)
        out[a:b] = np.maximum(D[:, 0], 0.0)
    return out


@register
class CoresetSelector(Selector):
    """k-center greedy: repeatedly take the unlabeled row farthest from every labeled or chosen row.

    Memory O(n) beyond the embeddings: one float64 nearest-center distance per row,
    updated by a fused numba pass per pick (O(n d) time per pick, O(n d k) in all).
    When nothing is labeled the first center is a uniformly random row.

    Parameters
    ----------
    progress : bool, default False
        Show a progress bar over the picks.
    random_state : int, Generator or None
    """

    name = "coreset"
    requires = ("embeddings",)

    def __init__(self, progress: bool = False, random_state=None):
        super().__init__(random_state=random_state)
        self.progress = progress

    def _select(self, pool: Pool, k: int, rng: np.random.Generator) -> np.ndarray:
        X = as_float32_c(pool.checked_embeddings())
        mask = pool.labeled_mask
        if mask.any():
            min_d = nearest_sqdist(X, X[np.flatnonzero(mask)])
            min_d[mask] = -1.0
            first = -1
        else:
            min_d = np.full(X.shape[0], np.inf)
            first = int(rng.integers(X.shape[0]))
        out = []
        for a, b in progress_blocks(k, "coreset", self.progress):
            # after the first block the next pick is argmax(min_d): the same as one long call
            out.append(_kernels.kcenter_greedy(X, min_d, first if a == 0 else -1, b - a))
        return np.concatenate(out)
