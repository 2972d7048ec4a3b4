"""Exact average-linkage HAC (fastcluster) for pools whose distance matrix fits in memory."""
from __future__ import annotations

import os

import numpy as np

from .._validation import BatchalInputError

#: fastcluster holds the condensed float64 distance matrix plus about one working copy.
_BYTES_PER_PAIR = 16


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (falls back to physical pages on other systems)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def exact_memory_bytes(n: int) -> int:
    """Estimated peak bytes of exact HAC on ``n`` points."""
    return n * (n - 1) // 2 * _BYTES_PER_PAIR


def check_exact_fits(n: int, budget: int | None = None) -> None:
    """Refuse sizes whose n x n distance matrix would not fit in memory."""
    need = exact_memory_bytes(n)
    budget = int(0.8 * available_memory_bytes()) if budget is None else budget
    if need > budget:
        raise BatchalInputError(
            f"exact average-linkage HAC on {n:,} rows needs about {need / 2**30:.1f} GiB for the "
            f"pairwise distances, more than the {budget / 2**30:.1f} GiB available; "
            "use the scalable graph method (--method graph)"
        )


def exact_linkage(X: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """Average-linkage merge tree of ``X`` in scipy's linkage format.

    ``metric="cosine"`` uses the mean of 1 - cosine similarity and
    ``"sqeuclidean"`` the mean squared euclidean distance between the members
    of two clusters (scipy's definitions). ``"euclidean"`` is the root of the
    mean squared distance (the sqeuclidean tree with square-rooted heights),
    the form the graph method can keep exactly from cluster statistics; using
    it here too means a ``threshold`` keeps its meaning whichever method
    ``auto`` picks. (scipy's ``average`` + ``euclidean`` averages unsquared
    distances, a slightly different tree.)
    """
    import fastcluster

    X = np.asarray(X, dtype=np.float64)
    check_exact_fits(X.shape[0])
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1)
        if (norms == 0).any():
            raise BatchalInputError(
                f"embeddings row {int(np.flatnonzero(norms == 0)[0])} is all zeros; cosine distance is undefined"
            )
    if metric not in ("cosine", "euclidean", "sqeuclidean"):
        raise BatchalInputError(f"unknown metric {metric!r}; use cosine, euclidean or sqeuclidean")
    if metric == "euclidean":
        Z = fastcluster.linkage(X, method="average", metric="sqeuclidean")
        Z[:, 2] = np.sqrt(np.maximum(Z[:, 2], 0.0))
        return Z
    return fastcluster.linkage(X, method="average", metric=metric)
