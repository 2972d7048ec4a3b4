"""The Ray engine: scoring and selection, the kNN graph and the graph HAC on a Ray cluster.

Install with ``pip install "batchal[ray]"``. Nothing here is imported by the
core; ``batchal.engines.get_engine("ray")`` imports it on demand.

* :meth:`RayEngine.select`: per-block scores and bottom-k in Ray tasks, merged
  on the driver; the selector (round-robin included) runs on the driver.
  :meth:`RayEngine.pool` is that pool for a caller that runs the selector
  itself (a campaign, which keeps the selector's diagnostics).
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
from ..base import Engine, StageFailed
from ._session import RaySession, import_ray, input_errors, lost_worker
from .select import RAY_STRATEGIES

__all__ = ["RayEngine"]


def _refs(chunks):
    """The ObjectRefs of the kNN stage's lists: its chunks, or those its live actors emit (one at a time)."""
    return (r for _, r in chunks.chunks()) if hasattr(chunks, "chunks") else chunks


def _close(chunks) -> None:
    """End the kNN stage's live actors, when it left its lists in them."""
    if hasattr(chunks, "close"):
        chunks.close()


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
    strategies = RAY_STRATEGIES
    reads_files = True

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
        a ``.npy`` every worker can read, or an array. ``embeddings`` stay on the
        driver and are read at the candidates only (``cluster-margin:...:dup=``). See
        :func:`batchal.engines.ray.select.ray_select`.
        """
        from .select import ray_select

        with input_errors():
            return ray_select(strategy, batch_size, probs=probs, logits=logits, clusters=clusters, labeled=labeled,
                              embeddings=embeddings, multilabel=multilabel, aggregate=aggregate, seed=seed, column=column,
                              id_column=id_column, progress=progress, defaults=defaults, **params)

    def pool(self, *, probs=None, logits=None, embeddings=None, clusters=None, labeled=None,
             multilabel: bool = False, aggregate: str = "min", progress: bool = False):
        """A :class:`batchal.engines.ray.select.RayPool`: the predictions scored by Ray tasks where they lie.

        Without predictions there is nothing to score or distribute (only
        ``random`` reads nothing but the labeled set): the in-memory pool over
        ``clusters`` is returned, so that batch is the local one.
        """
        from .select import ray_pool

        if probs is None and logits is None:
            from ..local import LocalEngine

            return LocalEngine().pool(clusters=clusters, labeled=labeled, multilabel=multilabel, aggregate=aggregate)
        with input_errors():
            return ray_pool(probs=probs, logits=logits, clusters=clusters, labeled=labeled, multilabel=multilabel,
                            aggregate=aggregate, progress=progress, embeddings=embeddings)

    # ---------------------------------------------------------------- inference
    def predict(self, pool, model_factory, out, **kw) -> dict:
        """Run a user model over the pool's Parquet shards; see :func:`batchal.engines.ray.predict.predict`."""
        from .predict import predict

        with input_errors():
            return predict(pool, model_factory, out, **kw)

    # ---------------------------------------------------------------- clustering
    def _source(self, X):
        import ray

        from ._sources import RowSource

        return RowSource.open(X, name="embeddings", kind="embedding", ray=ray)

    def knn_graph(self, X, k: int = 50, *, metric: str = "cosine", method: str = "auto", nprobe: int | None = None,
                  nlist: int | None = None, centroids=None, random_state=0, progress: bool = False, **kw):
        """Directed kNN lists (a :class:`batchal.clustering.knn.KNNResult`), searched by actors.

        ``X``: an array, a ``.npy`` every worker can read, or Parquet shards (an
        ``embedding`` list column). Same lists as the local builder for the same
        centroids (trained here on the same sample when not given) and ``nprobe``.
        """
        from ...clustering.knn import DEFAULT_NPROBE
        from .knn import ray_knn

        with input_errors():
            return ray_knn(self._source(X), k, metric=metric, method=method,
                           nprobe=DEFAULT_NPROBE if nprobe is None else nprobe, nlist=nlist, centroids=centroids,
                           random_state=random_state, n_actors=self._actors(), progress=progress, **kw)

    def _knn_stage(self, src, knn, metric, knn_method, nprobe, centroids, random_state, progress, restarts, ckpt,
                   **kw):
        """The kNN stage on actors, run again when one of its workers dies (it is deterministic), at most
        ``restarts`` times: ``(chunks, info)``; with ``ckpt`` its lists are written there before it ends (the
        IVF route's lists stay in its live actors, so a death while they are written runs the stage again)."""
        import ray

        from ...clustering.knn import DEFAULT_NPROBE
        from .knn import ray_knn

        for attempt in range(restarts + 1):
            chunks = None
            try:
                chunks, kinfo = ray_knn(src, knn, metric=metric, method=knn_method,
                                        nprobe=DEFAULT_NPROBE if nprobe is None else nprobe,
                                        centroids=centroids, random_state=random_state,
                                        n_actors=self._actors(), progress=progress, keep_chunks=True, **kw)
                if ckpt is not None:
                    ckpt.save_knn(ray, _refs(chunks), src.n)
                break
            except Exception as exc:
                _close(chunks)
                if not lost_worker(exc):
                    raise
                if attempt == restarts:
                    raise StageFailed(
                        f"a Ray worker of the kNN stage died ({type(exc).__name__}) and {restarts} "
                        "restart(s) are spent; rerun" + (" with --resume" if ckpt is not None else "")
                        + " to run the stage again") from None
        kinfo["restarts"] = attempt  # the stage ran again from its start: it is deterministic
        return chunks, kinfo

    def linkage(self, X, *, metric: str = "cosine", knn: int = 50, progress: bool = False, random_state=0,
                nprobe: int | None = None, knn_method: str = "auto", stats_dtype: str = "auto", knn_indices=None,
                centroids=None, checkpoint_dir=None, resume: bool = False, restarts: int = 2,
                checkpoint_s: float | None = None, **kw):
        """Average-linkage tree restricted to the kNN graph: ``(Z, info)`` as the local ``graph_linkage``.

        The kNN graph is built on Ray (:meth:`knn_graph`) unless ``knn_indices``
        (directed lists, (n, k)) gives it; the merging runs in RAC rounds over
        actors (:func:`batchal.engines.ray.rac.ray_rac`).

        A worker that dies (a process killed, a node lost) costs a restart: the
        kNN stage runs again (it is deterministic), the RAC actors reload their
        last checkpoint (without one they build the graph again, from the kNN
        lists of the checkpoint or the given ones or, since the lists leave the
        object store once the actors hold the graph, from the kNN stage run
        again: ``info["knn_reruns"]``); at most ``restarts`` times per stage, then one
        :class:`~batchal.engines.ray._session.StageFailed` error. With
        ``checkpoint_dir`` the completed kNN lists and every few RAC rounds are
        written there (atomically); ``resume=True`` continues a killed job of the
        same pool and parameters from its last completed stage or round. The
        directory is removed when the tree is complete.
        """
        from ...clustering.graph import _metric_code
        from ._checkpoint import CHECKPOINT_EVERY_S, JobCheckpoint
        from .rac import ChunkStream, ray_rac

        ray = import_ray()
        _metric_code(metric)
        with input_errors():
            src = self._source(X)
            n = src.n
            if n == 1:
                return np.zeros((0, 4)), {"knn": 0.0, "merge": 0.0}
            info = {}
            ckpt = None
            if checkpoint_dir is not None:
                files = sorted({str(b.where) for b in src.blocks if b.kind != "ref"})  # an array: none
                job = {"n": n, "files": files, "metric": metric, "knn": knn, "random_state": random_state,
                       "nprobe": nprobe, "knn_method": knn_method, "stats_dtype": stats_dtype,
                       "actors": self._actors(), "given_lists": knn_indices is not None}
                ckpt = JobCheckpoint(checkpoint_dir, job, resume)
            if knn_indices is None and ckpt is not None and ckpt.has_knn():
                knn_indices = ckpt.load_knn()  # the kNN stage completed before the job was killed
                info["knn_resumed"] = True
            if knn_indices is not None:
                I = np.asarray(knn_indices)
                if I.ndim != 2 or I.shape[0] != n:
                    raise BatchalInputError(f"knn_indices must be (n, k) with n = {n}; got shape {I.shape}")
            else:
                chunks, kinfo = self._knn_stage(src, knn, metric, knn_method, nprobe, centroids, random_state,
                                                progress, restarts, ckpt, **kw)
                info.update({f"knn_{k}": v for k, v in kinfo.items()})
                info["knn"] = kinfo["prepare_s"] + kinfo["search_s"]
            first = [] if knn_indices is not None else [chunks]
            chunks = None
            info["knn_reruns"] = 0

            def knn_lists():
                """The kNN lists for a build of the RAC graph: the stage's (once; the RAC stage reads them from
                the stage's live actors, a few chunks at a time, and ends the actors when its own hold the
                graph), else the given ones, the checkpoint's or the stage again."""
                if first:
                    return first.pop()
                lists = I if knn_indices is not None else ckpt.load_knn() if ckpt is not None else None
                if lists is not None:
                    return ChunkStream(lists)
                info["knn_reruns"] += 1  # a RAC restart without checkpoint: the kNN stage is deterministic
                return self._knn_stage(src, knn, metric, knn_method, nprobe, centroids, random_state, False,
                                       restarts, None, **kw)[0]

            try:
                Z, rinfo = ray_rac(src, knn_lists, n, metric=metric, n_actors=self._actors(),
                                   stats_dtype=stats_dtype, random_state=random_state, progress=progress,
                                   checkpoint=ckpt,
                                   checkpoint_s=CHECKPOINT_EVERY_S if checkpoint_s is None else checkpoint_s,
                                   restarts=restarts)
            finally:
                for c in first:  # never read (the RAC stage failed before its build): the kNN actors end
                    _close(c)
            if ckpt is not None:
                ckpt.clean()
        info.update(rinfo)
        info["merge"] = rinfo["total_s"]
        return Z, info

    def cluster(self, X, *, threshold: float | None = None, mean_cluster_size: float | None = 10.0,
                metric: str = "cosine", method: str = "auto", knn: int = 50, progress: bool = False, random_state=0,
                **kw):
        """A fitted :class:`batchal.AverageLinkage` from the graph HAC on Ray (``method`` auto or graph).

        ``model.ray_info_`` holds the per-round merges and bytes sent, the
        actors' peak memory and the timings.
        """
        from ...clustering import AverageLinkage

        if method == "exact":
            raise BatchalInputError("exact HAC needs all n^2 distances on one machine; the ray engine runs the "
                                    "graph method (use --method graph or auto, or --engine local)")
        if method not in ("auto", "graph"):
            raise BatchalInputError(f"unknown clustering method {method!r}; use auto, exact or graph")
        if threshold is None and mean_cluster_size is None:
            raise BatchalInputError("give a threshold or a mean_cluster_size")
        if threshold is not None and (not np.isfinite(threshold) or threshold < 0):
            raise BatchalInputError(f"threshold must be a finite number >= 0; got {threshold}")
        if threshold is None and mean_cluster_size < 1:
            raise BatchalInputError(f"mean_cluster_size must be >= 1; got {mean_cluster_size}")
        Z, info = self.linkage(X, metric=metric, knn=knn, progress=progress, random_state=random_state, **kw)
        model = AverageLinkage.from_linkage(Z, threshold=threshold,
                                            mean_cluster_size=None if threshold is not None else mean_cluster_size,
                                            metric=metric)
        model.method = "graph"
        model.knn = knn
        model.random_state = random_state
        model.method_ = "graph"
        model.method_reason_ = f"ray engine: kNN graph and RAC rounds on {self._actors()} actors"
        model.timings_ = {k: v for k, v in info.items() if isinstance(v, (int, float, str, np.integer, np.floating))}
        model.ray_info_ = info
        return model

    def close(self) -> None:
        self.session.close()
