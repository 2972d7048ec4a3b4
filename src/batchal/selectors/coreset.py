"""Coreset (Sener & Savarese, 2018): k-center greedy on the embeddings."""
from __future__ import annotations

import numpy as np

from .._validation import as_float32_c, iter_chunks
from . import _kernels
from .base import Pool, Selector, progress_blocks, register


def nearest_center(X: np.ndarray, centers: np.ndarray, chunk_rows: int = 1 << 15):
    """Squared euclidean distance of each row of ``X`` to its nearest row of ``centers``, and which.

    faiss's exact flat index does the BLAS distance work; rows of ``X`` are
    streamed in chunks so a memmap is read once and only (chunk, 1) results are held.
    Returns ``(float64 (n,), int64 (n,))``.
    """
    import faiss

    index = faiss.IndexFlatL2(centers.shape[1])
    index.add(as_float32_c(centers))
    dist = np.empty(X.shape[0], dtype=np.float64)
    which = np.empty(X.shape[0], dtype=np.int64)
    for a, b in iter_chunks(X.shape[0], chunk_rows):
        D, I = index.search(as_float32_c(X[a:b]), 1)
        dist[a:b] = np.maximum(D[:, 0], 0.0)
        which[a:b] = I[:, 0]
    return dist, which


@register
class CoresetSelector(Selector):
    """k-center greedy: repeatedly take the unlabeled row farthest from every labeled or chosen row.

    Memory O(n) beyond the embeddings: per row a float64 nearest-center distance,
    its norm, its center and a list link (32 bytes). Each pick visits only the
    rows the new center can reach by the triangle inequality (at most O(n d) per
    pick, far less once centers are dense; see ``_kernels.kcenter_greedy``).
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
        n = X.shape[0]
        mask = pool.labeled_mask
        out = np.empty(k, dtype=np.int64)
        labeled = np.flatnonzero(mask)
        if labeled.size:
            min_d, assign = nearest_center(X, X[labeled])
            slot_row = np.empty(labeled.size + k, dtype=np.int64)
            slot_row[: labeled.size] = labeled
            n_slots, start = labeled.size, 0
        else:
            first = int(rng.integers(n))
            c = X[first].astype(np.float64)
            min_d = np.empty(n, dtype=np.float64)
            for a, b in iter_chunks(n, 1 << 15):
                min_d[a:b] = ((X[a:b] - c) ** 2).sum(1)
            assign = np.zeros(n, dtype=np.int64)
            slot_row = np.empty(k, dtype=np.int64)
            slot_row[0] = first
            out[0] = first
            n_slots, start = 1, 1
        min_d[mask] = -1.0
        assign[mask] = -1
        if start:
            min_d[out[0]] = -1.0
            assign[out[0]] = -1
        norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
        head = np.empty(slot_row.shape[0], dtype=np.int64)
        R = np.empty(slot_row.shape[0], dtype=np.float64)
        Rarg = np.empty(slot_row.shape[0], dtype=np.int64)
        nxt = np.empty(n, dtype=np.int64)
        _kernels.kcenter_lists(min_d, assign, n_slots, head, nxt, R, Rarg)
        for a, b in progress_blocks(k, "coreset", self.progress):
            a = max(a, start)
            if a < b:
                n_slots = _kernels.kcenter_greedy(X, norms, min_d, assign, slot_row, head, nxt, R, Rarg,
                                                  n_slots, out, a, b)
        return out
