"""The local engine: everything in this process (numpy, numba, faiss)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine


def _array(x, name: str, multilabel: bool = False):
    """A path is loaded (``.npy`` memory-mapped, Parquet read; ``probs`` may be top-k predictions);
    an array is returned as is."""
    if isinstance(x, (str, Path)):
        from ..io import load_array, load_predictions

        if name == "probs":
            return load_predictions(x, name=name, multilabel=multilabel)
        return load_array(x, name=name)
    return x


class LocalEngine(Engine):
    """Runs on this machine; the default. See :class:`batchal.engines.Engine`."""

    name = "local"

    def select(self, strategy, batch_size: int, *, probs=None, logits=None, embeddings=None, clusters=None,
               labeled=None, multilabel: bool = False, aggregate: str = "min", seed=None, **params) -> np.ndarray:
        """:func:`batchal.select`; array arguments may also be paths."""
        from ..api import select

        return select(strategy, batch_size, probs=_array(probs, "probs", multilabel), logits=_array(logits, "logits"),
                      embeddings=_array(embeddings, "embeddings"), clusters=_array(clusters, "clusters"),
                      labeled=_array(labeled, "labeled"), multilabel=multilabel, aggregate=aggregate, seed=seed,
                      **params)

    def pool(self, *, probs=None, logits=None, embeddings=None, clusters=None, labeled=None,
             multilabel: bool = False, aggregate: str = "min", progress: bool = False):
        """An in-memory :class:`batchal.selectors.Pool` (arrays kept as given; ``progress`` unused)."""
        from ..selectors import Pool

        return Pool(probs=_array(probs, "probs", multilabel), logits=_array(logits, "logits"),
                    embeddings=_array(embeddings, "embeddings"), clusters=_array(clusters, "clusters"),
                    labeled=_array(labeled, "labeled"), multilabel=multilabel, aggregate=aggregate)

    def knn_graph(self, X, k: int = 50, **kw):
        """:func:`batchal.clustering.knn.knn_graph`."""
        from ..clustering.knn import knn_graph

        return knn_graph(_array(X, "embeddings"), k, **kw)

    def linkage(self, X, **kw):
        """:func:`batchal.clustering.graph.graph_linkage`: ``(Z, timings)``."""
        from ..clustering.graph import graph_linkage

        return graph_linkage(_array(X, "embeddings"), **kw)

    def cluster(self, X, **kw):
        """A fitted :class:`batchal.AverageLinkage` (parameters as its constructor's)."""
        from ..clustering import AverageLinkage

        return AverageLinkage(**kw).fit(_array(X, "embeddings"))
