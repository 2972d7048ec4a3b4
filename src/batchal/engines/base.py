"""The interface every engine implements."""
from __future__ import annotations

import numpy as np


class Engine:
    """Runs selection and clustering; subclasses decide where.

    Methods mirror the one-call API: :meth:`select` (:func:`batchal.select`),
    :meth:`knn_graph` (:func:`batchal.clustering.knn.knn_graph`), :meth:`linkage`
    (:func:`batchal.clustering.graph.graph_linkage`) and :meth:`cluster`
    (a fitted :class:`batchal.AverageLinkage`). An engine is a context manager;
    leaving it releases what it started (a Ray engine shuts down the Ray
    instance it started, never one it only joined).
    """

    name = "base"

    def select(self, strategy, batch_size: int, **kw) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def knn_graph(self, X, k: int = 50, **kw):  # pragma: no cover - interface
        raise NotImplementedError

    def linkage(self, X, **kw):  # pragma: no cover - interface
        raise NotImplementedError

    def cluster(self, X, **kw):  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (nothing for the local engine)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
