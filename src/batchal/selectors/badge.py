"""BADGE (Ash et al., 2020): k-means++ seeding on gradient embeddings."""
from __future__ import annotations

import numpy as np

from .._validation import BatchalInputError, check_count, iter_chunks
from . import _kernels
from .base import Pool, Selector, progress_blocks, register
from .. import scores as _scores


def gradient_factors(pool: Pool, rows: np.ndarray, chunk_rows: int = 1 << 16):
    """Factors of the last-layer gradient embedding for ``rows``: ``g_i = a_i outer h_i``.

    ``a = p - onehot(argmax p)`` for multi-class input and ``a = p - [p > 0.5]`` per
    class for multi-label input (the binary cross-entropy gradient at the
    predicted label). Returns ``(A, H, gn)`` with ``gn = |a|^2 |h|^2 = |g|^2``.
    """
    src = pool.probs if pool.probs is not None else pool.logits
    n_r, C = rows.shape[0], src.shape[1]
    A = np.empty((n_r, C), dtype=np.float32)
    H = np.empty((n_r, pool.embeddings.shape[1]), dtype=np.float32)
    for a, b in iter_chunks(n_r, chunk_rows):
        r = rows[a:b]
        block = np.asarray(src[r], dtype=np.float64)
        if pool.probs is None:
            block = (1.0 / (1.0 + np.exp(-np.clip(block, -500, 500)))) if pool.multilabel else _scores._softmax_block(block)
        if pool.multilabel:
            block = block - (block > 0.5)
        else:
            block[np.arange(b - a), block.argmax(axis=1)] -= 1.0
        A[a:b] = block
        H[a:b] = pool.embeddings[r]
    gn = (np.einsum("ij,ij->i", A, A, dtype=np.float64) * np.einsum("ij,ij->i", H, H, dtype=np.float64))
    return A, H, gn


@register
class BadgeSelector(Selector):
    """BADGE: k-means++ seeding over gradient embeddings of the unlabeled rows.

    The gradient embedding ``(p - onehot(argmax p)) outer h`` is never built: the
    kernel uses ``<g_i, g_j> = <a_i, a_j> <h_i, h_j>``, so each pick costs
    O(n (C + d)). The first center is the row with the largest gradient norm,
    as in the authors' code.

    Parameters
    ----------
    partitions : int, default 1
        The paper's large-pool option: split the unlabeled rows uniformly at
        random into this many parts and take ``k / partitions`` from each,
        dividing the work by ``partitions``.
    progress : bool, default False
        Show a progress bar over the picks.
    random_state : int, Generator or None
    """

    name = "badge"
    requires = ("predictions", "embeddings")

    def __init__(self, partitions: int = 1, progress: bool = False, random_state=None):
        super().__init__(random_state=random_state)
        self.partitions = partitions
        self.progress = progress

    def _select(self, pool: Pool, k: int, rng: np.random.Generator) -> np.ndarray:
        if not pool.has_dense_predictions:
            # BADGE's gradient embedding (p - onehot(argmax p)) x h reads every class's probability; a top-k
            # row drops the rest and a score drops all of them, so the k-means++ geometry would be another one
            raise BatchalInputError("strategy 'badge' needs dense probabilities or logits (its gradient embeddings "
                                    "read every class); top-k predictions and precomputed scores are refused: use "
                                    "margin or cluster-margin with them")
        m = check_count(self.partitions, "partitions", 1, k, note="at most the batch size")
        pool.checked_embeddings()
        pool.uncertainty("margin")  # validates probabilities/logits in one streamed pass
        unlabeled = np.flatnonzero(~pool.labeled_mask)
        if m > 1:
            unlabeled = rng.permutation(unlabeled)
        parts = np.array_split(unlabeled, m)
        quotas = [k // m + (1 if i < k % m else 0) for i in range(m)]
        out = []
        for i, (rows, q) in enumerate(zip(parts, quotas)):
            rows = np.sort(rows)
            A, H, gn = gradient_factors(pool, rows)
            c = int(np.argmax(gn))
            uniforms = rng.random(q)
            D2 = np.full(rows.shape[0], np.inf)
            picks = np.empty(q, dtype=np.int64)
            desc = "badge" if m == 1 else f"badge part {i + 1}/{m}"
            for a, b in progress_blocks(q, desc, self.progress and (m == 1 or i == 0)):
                c = _kernels.kmeanspp_grad(A, H, gn, c, D2, uniforms, picks, a, b)
            out.append(rows[picks])
        return np.concatenate(out)
