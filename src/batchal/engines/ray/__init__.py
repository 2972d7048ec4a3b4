"""The Ray engine: scoring and selection, the kNN graph and the graph HAC on a Ray cluster.

Install with ``pip install "batchal[ray]"``. Nothing here is imported by the
core; ``batchal.engines.get_engine("ray")`` imports it on demand.

* :meth:`RayEngine.select`: per-block scores and bottom-k in Ray tasks, merged
  on the driver; the selector (round-robin included) runs on the driver.
* :meth:`RayEngine.predict`: a user model over Parquet shards of the pool with
  Ray Data ``map_batches`` in an actor pool (GPUs when the cluster has them),
  predictions written back as Parquet, row-aligned with the pool.
* :meth:`RayEngine.knn_graph`: IVF cells trained once on a sample, shards of
  rows in actors, every query cell searched against every shard, best k kept.
* :meth:`RayEngine.linkage` / :meth:`RayEngine.cluster`: reciprocal-nearest-
  neighbour rounds over actors that own clusters by hash of cluster id.
"""
from __future__ import annotations

import numpy as np

from ..._validation import BatchalInputError
from ..base import Engine
from ._session import RaySession, import_ray, input_errors

__all__ = ["RayEngine"]


class RayEngine(Engine):
    """Runs the heavy steps on Ray.

    Parameters
    ----------
    address : str, optional
        A Ray cluster to join (``"auto"``, ``"ray://head:10001"``). Without it
        an initialised Ray is reused, else a local instance is started.
    num_cpus : int, optional
        CPUs of a local instance (default: this machine's).
    object_store_memory : int, optional
        Bytes of object store of a local instance (default: Ray's).
    num_actors : int, optional
        Actors for the kNN shards and the HAC (default: the cluster's CPUs).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 object_store_memory: int | None = None, num_actors: int | None = None):
        self.session = RaySession(address, num_cpus=num_cpus, object_store_memory=object_store_memory)
        self.num_actors = num_actors

    def _actors(self) -> int:
        return max(1, int(self.num_actors or RaySession.cpus()))

    # ---------------------------------------------------------------- selection
    def select(self, strategy, batch_size: int, *, probs=None, logits=None, embeddings=None, clusters=None,
               labeled=None, multilabel: bool = False, aggregate: str = "min", seed=None,
               column: str | None = None, id_column: str | None = "id", progress: bool = False,
               defaults: dict | None = None, **params) -> np.ndarray:
        """The next batch (row indices in selection order), as :func:`batchal.select` returns it.

        ``probs``/``logits``: Parquet shards (file, directory or list of files),
        a ``.npy`` every worker can read, or an array. See
        :func:`batchal.engines.ray.select.ray_select`.
        """
        from .select import ray_select

        if embeddings is not None:
            raise BatchalInputError("the ray engine's strategies do not read embeddings; use --engine local "
                                    "for coreset and badge")
        with input_errors():
            return ray_select(strategy, batch_size, probs=probs, logits=logits, clusters=clusters, labeled=labeled,
                              multilabel=multilabel, aggregate=aggregate, seed=seed, column=column,
                              id_column=id_column, progress=progress, defaults=defaults, **params)

    # ---------------------------------------------------------------- inference
    def predict(self, pool, model_factory, out, **kw) -> dict:
        """Run a user model over the pool's Parquet shards; see :func:`batchal.engines.ray.predict.predict`."""
        from .predict import predict

        with input_errors():
            return predict(pool, model_factory, out, **kw)

    def close(self) -> None:
        self.session.close()
