"""The clustering interface: average-linkage HAC over a whole pool, exact or graph-based."""
from __future__ import annotations

import numpy as np

from .._validation import BatchalInputError, check_2d, check_count, check_finite, check_number, check_seed
from . import flat as _cut
from .exact import check_exact_fits, exact_linkage

#: ``method="auto"`` takes exact HAC up to this many rows (seconds there), the graph above.
AUTO_EXACT_MAX_ROWS = 10_000

METRICS = ("cosine", "euclidean", "sqeuclidean")


def choose_method(n: int, method: str = "auto") -> tuple[str, str]:
    """Resolve ``method`` for ``n`` rows; returns ``(method, reason)``."""
    if method == "exact":
        return "exact", "asked for"
    if method == "graph":
        return "graph", "asked for"
    if method != "auto":
        raise BatchalInputError(f"unknown clustering method {method!r}; use auto, exact or graph")
    if n <= AUTO_EXACT_MAX_ROWS:
        return "exact", f"n={n:,} <= {AUTO_EXACT_MAX_ROWS:,}: exact HAC is fast and needs {n * (n - 1) * 8 / 2**30:.2f} GiB"
    return "graph", f"n={n:,} > {AUTO_EXACT_MAX_ROWS:,}: exact HAC is O(n^2) in memory and time"


class AverageLinkage:
    """Average-linkage HAC of a pool, cut into flat clusters.

    Parameters
    ----------
    threshold : float, optional
        Distance at which to cut the tree. Mutually exclusive with ``mean_cluster_size``.
    mean_cluster_size : float, default 10
        Cut where the clusters average this many rows (used when ``threshold`` is None).
    metric : {"cosine", "euclidean", "sqeuclidean"}
        Linkage = mean over all cross pairs of ``1 - cos`` (cosine) or of the
        squared distance (sqeuclidean); ``euclidean`` is the root of that mean
        (RMS), the same in both methods so a threshold means the same thing.
    method : {"auto", "exact", "graph"}
        ``exact``: fastcluster on all pairs (O(n^2) memory). ``graph``: exact
        average linkage restricted to a k-nearest-neighbour graph. ``auto`` picks by size.
    knn : int, default 50
        Neighbours per row for the graph method.
    progress : bool
        Show progress bars for long steps.
    random_state : int or None
        Seed for the approximate index (graph method).
    knn_out : callable, optional
        Graph method: ``knn_out(n, k)`` returns a writable int32 ``(n, k)`` array
        (e.g. a memory map) that receives the directed kNN lists in row order
        (``-1``: no neighbour) before the HAC reuses their buffer, so a caller
        that needs the graph later (a campaign's near-duplicate groups) keeps it
        without a second search. Not called by the exact method, which builds no graph.

    Attributes
    ----------
    labels_ : int64 array (n,)
    linkage_ : ndarray (n - 1, 4)
        Merge tree in scipy linkage format; cut it again with :meth:`recut`.
    threshold_ : float
    n_clusters_ : int
    method_ : str
    method_reason_ : str
    timings_ : dict
    """

    def __init__(
        self,
        threshold: float | None = None,
        mean_cluster_size: float | None = 10.0,
        metric: str = "cosine",
        method: str = "auto",
        knn: int = 50,
        progress: bool = False,
        random_state=0,
        knn_out=None,
    ):
        self.knn_out = knn_out
        self.threshold = threshold
        self.mean_cluster_size = mean_cluster_size
        self.metric = metric
        self.method = method
        self.knn = knn
        self.progress = progress
        self.random_state = random_state

    def fit(self, X, y=None):
        """Cluster the rows of ``X`` (n, d); a memmap is read in chunks where possible."""
        import time

        X = check_2d(X, "embeddings")
        if not np.issubdtype(X.dtype, np.floating):
            X = X.astype(np.float32)
        if self.metric not in METRICS:
            raise BatchalInputError(f"unknown metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if self.threshold is None and self.mean_cluster_size is None:
            raise BatchalInputError("give a threshold or a mean_cluster_size")
        # every parameter checked before any work, including those the chosen method will not read
        if self.threshold is not None:
            check_number(self.threshold, "threshold", 0)
        if self.mean_cluster_size is not None:
            check_number(self.mean_cluster_size, "mean_cluster_size", 1)
        check_count(self.knn, "knn", 1, note="neighbours per row of the graph method")
        check_seed(self.random_state, "random_state")
        if self.knn_out is not None and not callable(self.knn_out):
            raise BatchalInputError(f"knn_out must be a callable knn_out(n, k) -> (n, k) int32 array; got {self.knn_out!r}")
        check_finite(X, "embeddings")
        n = X.shape[0]
        self.method_, self.method_reason_ = choose_method(n, self.method)
        t0 = time.perf_counter()
        if self.method_ == "exact":
            check_exact_fits(n)
            self.linkage_ = exact_linkage(X, self.metric)
            self.timings_ = {"hac": time.perf_counter() - t0}
        else:
            from .graph import graph_linkage

            self.linkage_, self.timings_ = graph_linkage(
                X,
                metric=self.metric,
                knn=self.knn,
                progress=self.progress,
                random_state=self.random_state,
                knn_out=self.knn_out,
            )
        self._n = n
        self.recut(threshold=self.threshold, mean_cluster_size=None if self.threshold is not None else self.mean_cluster_size)
        return self

    def recut(self, *, threshold: float | None = None, mean_cluster_size: float | None = None):
        """Cut the stored tree again (no re-clustering); updates ``labels_`` and ``threshold_``."""
        self.labels_, self.threshold_ = _cut.cut(
            self.linkage_, self._n, threshold=threshold, mean_cluster_size=mean_cluster_size
        )
        self.n_clusters_ = int(self.labels_.max()) + 1
        return self

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_

    @classmethod
    def from_linkage(cls, Z, *, threshold: float | None = None, mean_cluster_size: float | None = 10.0,
                     metric: str | None = None, name: str = "the merge tree") -> "AverageLinkage":
        """A fitted model from a saved merge tree (scipy linkage format), cut without re-clustering.

        Parameters
        ----------
        Z : ndarray (n - 1, 4)
            A tree saved from ``linkage_`` (e.g. ``batchal cluster --save-tree``).
        threshold, mean_cluster_size : as in :class:`AverageLinkage`.
        metric : str, optional
            Only recorded (for the report); the heights in ``Z`` are in that metric.
        name : str
            What to call ``Z`` in error messages (the CLI passes the option and file).
        """
        from scipy.cluster.hierarchy import is_valid_linkage

        Z = np.asarray(Z)
        if Z.ndim != 2 or Z.shape[1] != 4 or Z.shape[0] < 1 or not np.issubdtype(Z.dtype, np.floating):
            raise BatchalInputError(f"{name}: a merge tree must be a float (n - 1, 4) array in scipy linkage "
                                    f"format; got {Z.dtype} {Z.shape}")
        check_linkage(Z, name)
        if not is_valid_linkage(Z):
            raise BatchalInputError(f"{name} is not a valid scipy linkage matrix (wrong ids, sizes or heights)")
        if threshold is None and mean_cluster_size is None:
            raise BatchalInputError("give a threshold or a mean_cluster_size")
        model = cls(threshold=threshold, mean_cluster_size=mean_cluster_size, metric=metric)
        model.linkage_ = np.ascontiguousarray(Z, dtype=np.float64)
        model._n = Z.shape[0] + 1
        model.method_, model.method_reason_ = "tree", "cut of a saved merge tree"
        model.timings_ = {}
        return model.recut(threshold=threshold, mean_cluster_size=None if threshold is not None else mean_cluster_size)


def check_linkage(Z: np.ndarray, name: str = "the merge tree") -> None:
    """Refuse a merge tree that scipy's cuts would mis-read (or crash on).

    ``scipy.cluster.hierarchy.is_valid_linkage`` lets through ids that are not
    integers, out of range or infinite, and ``fcluster`` then reads out of bounds;
    a NaN height sorts last and silently drops a merge from a mean-size cut. Row
    ``i`` must merge two distinct clusters formed before it (ids below ``n + i``,
    each merged once), at a height >= 0 (``+inf`` joins a forest), with a size
    that is the sum of theirs. Vectorised: O(n).
    """
    n = Z.shape[0] + 1
    ids, heights = Z[:, :2], Z[:, 2]

    def bad_row(mask, what):
        if mask.any():
            raise BatchalInputError(f"{name}: merge {int(np.flatnonzero(mask)[0])} {what}; the tree is corrupt")

    bad_row(np.isnan(Z).any(axis=1), "holds NaN")
    bad_row((~np.isfinite(ids) | (ids != np.floor(ids))).any(axis=1), "has a cluster id that is not an integer")
    first = np.arange(n - 1) + n  # the id row i creates
    bad_row(((ids < 0) | (ids >= first[:, None])).any(axis=1), "refers to a cluster not formed before it")
    bad_row(heights < 0, "has a negative height")
    ids = ids.astype(np.int64)
    used, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise BatchalInputError(f"{name}: cluster {int(used[counts > 1][0])} is merged twice; the tree is corrupt")
    size = np.concatenate([np.ones(n), Z[:, 3]])
    bad_row(Z[:, 3] != size[ids[:, 0]] + size[ids[:, 1]], "has a size that is not the sum of its two clusters'")


def cluster(
    X,
    *,
    threshold: float | None = None,
    mean_cluster_size: float | None = 10.0,
    metric: str = "cosine",
    method: str = "auto",
    knn: int = 50,
    progress: bool = False,
    random_state=0,
) -> np.ndarray:
    """Average-linkage cluster ids, one per row of ``X``.

    See :class:`AverageLinkage` for the parameters. Returns an int64 array of
    cluster ids ``0..K-1``.
    """
    return AverageLinkage(
        threshold=threshold,
        mean_cluster_size=mean_cluster_size,
        metric=metric,
        method=method,
        knn=knn,
        progress=progress,
        random_state=random_state,
    ).fit_predict(X)
