"""Flat clusters from a merge tree: at a distance threshold or a target mean cluster size."""
from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster

from .._validation import BatchalInputError, check_number


def _relabel(labels: np.ndarray) -> np.ndarray:
    _, inv = np.unique(labels, return_inverse=True)
    return inv.astype(np.int64)


def threshold_for_mean_size(Z: np.ndarray, n: int, mean_cluster_size: float) -> float:
    """Threshold giving about ``n / mean_cluster_size`` clusters when cutting ``Z``.

    ``Z`` may be a forest written in scipy format with the top merges at
    ``+inf`` height; those are never crossed.
    """
    mean_cluster_size = check_number(mean_cluster_size, "mean_cluster_size", 1)
    n_clusters = max(1, int(round(n / mean_cluster_size)))
    n_merges = n - n_clusters
    if n_merges <= 0:
        return 0.0
    heights = np.sort(Z[:, 2])
    t = float(heights[n_merges - 1])
    if not np.isfinite(t):
        finite = heights[np.isfinite(heights)]
        t = float(finite[-1]) if finite.size else 0.0
    return t


def cut(Z: np.ndarray, n: int, *, threshold: float | None = None, mean_cluster_size: float | None = None):
    """Cut a merge tree into flat clusters.

    Parameters
    ----------
    Z : ndarray (n - 1, 4)
        scipy linkage matrix (monotone heights, as average linkage gives).
    n : int
        Number of points.
    threshold : float, optional
        Merge everything joined at a height ``<= threshold``.
    mean_cluster_size : float, optional
        Choose the threshold so that there are ``round(n / mean_cluster_size)`` clusters
        (exactly, when merge heights are distinct).

    Returns
    -------
    labels : int64 array (n,), values 0..K-1
    threshold : float, the threshold used
    """
    if (threshold is None) == (mean_cluster_size is None):
        raise BatchalInputError("give exactly one of threshold or mean_cluster_size")
    if n == 1:
        return np.zeros(1, dtype=np.int64), 0.0 if threshold is None else float(threshold)
    if threshold is not None:
        threshold = check_number(threshold, "threshold", 0)
        labels = fcluster(Z, t=threshold, criterion="distance")
        return _relabel(labels), float(threshold)
    mean_cluster_size = check_number(mean_cluster_size, "mean_cluster_size", 1)
    n_clusters = max(1, int(round(n / mean_cluster_size)))
    t = threshold_for_mean_size(Z, n, mean_cluster_size)
    finite = np.isfinite(Z[:, 2])
    if finite.all():
        labels = fcluster(Z, t=n_clusters, criterion="maxclust")
    else:
        labels = fcluster(Z, t=t, criterion="distance")
    return _relabel(labels), t
