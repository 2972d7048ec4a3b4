"""The interface every engine implements."""
from __future__ import annotations

import numpy as np


class StageFailed(RuntimeError):
    """A stage lost workers more often than it may restart them; the message says how to resume."""


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
    #: Strategy names the engine runs; None: every registered strategy.
    strategies: tuple | None = None
    #: True when the engine's workers read array files where they lie: callers holding their data in
    #: files (a campaign) then pass paths, so no array of the whole pool passes through the driver.
    reads_files: bool = False

    def select(self, strategy, batch_size: int, **kw) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def pool(self, *, probs=None, logits=None, embeddings=None, clusters=None, labeled=None,
             multilabel: bool = False, aggregate: str = "min", progress: bool = False):  # pragma: no cover
        """The :class:`batchal.selectors.Pool` a selector reads, kept where this engine scores it.

        For callers that run a selector themselves (a campaign keeps the
        selector for its diagnostics): ``selector.select(engine.pool(...), k)``
        is the batch :meth:`select` returns for the same inputs and seed.
        """
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
