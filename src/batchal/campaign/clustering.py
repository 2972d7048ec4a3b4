"""``campaign cluster``: the one-time clustering of the pool, computed here or given.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._validation import BatchalInputError
from .core import engine_arg
from .store import now

__all__ = ["cluster"]


#: The Ray engine's checkpoints of a clustering in progress, in the campaign directory (not a recorded file).
RAY_CHECKPOINT = "ray-checkpoint"


def cluster(campaign, *, mean_cluster_size: float | None = None, threshold: float | None = None,
            metric: str = "cosine", method: str = "auto", knn: int = 50, seed: int = 0,
            force: bool = False, progress: bool = False, engine=None, clusters=None, resume: bool = False) -> dict:
    """The one-time average-linkage clustering of the pool, stored with its parameters, tree and report.

    Running it again with the same parameters is a no-op; with other
    parameters it needs ``force=True`` (the batches already sent stay as they were).
    Returns the cluster report (see :func:`batchal.clustering.report.write_report`).

    Parameters
    ----------
    engine : Engine or {"local", "ray"}, optional
        Where the kNN graph and the HAC run (default: local). The ray engine
        runs the graph method (``method="auto"`` is graph there, at any size;
        ``"exact"`` is refused) and its workers read the campaign's embedding
        files where they lie, so with a remote cluster the campaign directory
        must be on storage every worker sees at the same path. The engine
        only computes: what is written, and in which transaction, is the same
        for every engine (the engine is not part of the recorded parameters),
        except the kNN graph kept for :meth:`Campaign.dedup`, which only the
        local engine keeps (see Notes). On Ray the completed stages and RAC
        rounds are checkpointed in the campaign's ``ray-checkpoint/`` (removed
        once the tree is complete).
    resume : bool
        Ray engine: continue a clustering with the same parameters that was
        killed, from its last completed stage or round (the checkpoint).
    clusters : (n,) int array or path, optional
        A precomputed clustering (one cluster id per item, in the campaign's
        order) used instead of clustering here, e.g. one made on another
        system. No tree is kept; the recorded parameters are the ids' hash.
        ``add`` then puts each new item in its nearest neighbour's cluster
        (``metric``), whatever the distance (the threshold is infinite).

    Notes
    -----
    The graph method's directed kNN lists are kept (an int32 ``(n, knn)`` file,
    written from the search's buffer before the HAC reuses it, so no extra
    memory) and recorded with the clustering in the same transaction:
    :meth:`Campaign.dedup` reads them instead of searching the pool again. The
    exact method builds no graph, a precomputed clustering brings none, and the
    ray engine's graph stays distributed over its workers; dedup then searches.
    """
    if clusters is not None:
        if threshold is not None or mean_cluster_size is not None:
            raise BatchalInputError("give --clusters (a precomputed clustering) or a cut, not both")
        return _cluster_given(campaign, clusters, metric, force)
    if threshold is not None and mean_cluster_size is not None:
        raise BatchalInputError("give a threshold or a mean cluster size, not both")
    if threshold is None and mean_cluster_size is None:
        mean_cluster_size = 10.0
    params = dict(mean_cluster_size=mean_cluster_size, threshold=threshold, metric=metric, method=method,
                  knn=knn, seed=seed)
    with campaign._store.write("cluster") as conn:
        cur = conn.execute("SELECT gen, params, report FROM clustering ORDER BY gen DESC LIMIT 1").fetchone()
        if cur is not None:
            if json.loads(cur[1]) == params:
                rep = json.loads(cur[2])
                rep["unchanged"] = True
                return rep
            if not force:
                raise BatchalInputError(
                    f"the campaign is already clustered ({json.loads(cur[1])}); the clustering is one-time, "
                    "pass --force to replace it")
        eng, owned = engine_arg(engine)
        kept: dict = {}
        try:
            # an engine whose workers read files gets the shards' paths: the pool never passes the driver
            X = campaign._embedding_files(conn) if eng.reads_files else campaign._embeddings(conn)
            kw = {}
            if eng.name == "ray":  # its stages are resumable: checkpoints beside the campaign's files
                kw = dict(checkpoint_dir=campaign._store.path_of(RAY_CHECKPOINT), resume=resume)
            elif resume:
                raise BatchalInputError("resume applies to the ray engine (the local engine runs in this process)")
            if eng.name == "local":  # the kNN graph kept for Campaign.dedup
                kw = dict(knn_out=_knn_sink(campaign, kept))
            model = eng.cluster(X, threshold=threshold, mean_cluster_size=mean_cluster_size, metric=metric,
                                method=method, knn=knn, progress=progress, random_state=seed, **kw)
        finally:
            if owned:
                eng.close()
        n_rows = int(model.labels_.shape[0])
        tree = campaign._store.write_npy(conn, "tree", model.linkage_)
        graph = None
        if kept:
            kept.pop("mm").flush()
            name = campaign._store.adopt(conn, kept["name"], "knn", shape=kept["shape"], dtype=np.int32)
            graph = dict(file=name, metric=metric, k=int(kept["shape"][1]), n_rows=n_rows)
        _set_graph(campaign, conn, graph)
        rep = _record(campaign, conn, cur, model, model.labels_.astype(np.int64), tree, params, metric, n_rows)
    return rep


def _knn_sink(campaign, kept: dict):
    """``knn_out`` for :class:`batchal.AverageLinkage`: a memory map in the campaign's arrays, named now,
    registered by the caller once the clustering is done (an unregistered file is garbage after a crash)."""
    from numpy.lib.format import open_memmap

    def sink(n: int, k: int):
        kept["name"] = campaign._store.new_name("knn", ".npy")
        kept["shape"] = (n, k)
        kept["mm"] = open_memmap(campaign._store.path_of(kept["name"]), mode="w+", dtype=np.int32, shape=(n, k))
        return kept["mm"]
    return sink


def _set_graph(campaign, conn, graph: dict | None) -> None:
    """Record the clustering's kNN graph (None: this clustering has none), retiring the previous one."""
    old = campaign._meta(conn, "knn_graph")
    if old is not None:
        campaign._store.forget(conn, old["file"])
    campaign._store.set_meta(conn, "knn_graph", graph)


def _record(campaign, conn, cur, model, labels, tree, params: dict, metric: str, n_rows: int) -> dict:
    """Write a clustering's labels and report, retire the previous generation's files and record the new
    generation, inside the caller's transaction; returns the report."""
    from ..clustering.report import write_report

    gen = 0 if cur is None else cur[0] + 1
    clusters = campaign._store.write_npy(conn, "clusters", labels)
    stem = campaign._store.new_name(f"clusters-gen{gen}", ".npy", where="reports")
    rep = write_report(model, campaign._store.path_of(stem))
    for key in ("report", "histogram"):
        if rep.get(key) and Path(rep[key]).exists():
            rel = f"reports/{Path(rep[key]).name}"
            campaign._store.register(conn, rel, "report")
            rep[key] = rel
    if cur is not None:
        old = [campaign._meta(conn, "clusters_file"),
               *[r[0] for r in conn.execute("SELECT tree_file FROM clustering WHERE tree_file IS NOT NULL")],
               *[r[0] for r in conn.execute("SELECT name FROM files WHERE kind='report' AND name NOT IN (?, ?)",
                                            (rep.get("report"), rep.get("histogram")))]]
        for old_name in old:
            if old_name:
                campaign._store.forget(conn, old_name)
        conn.execute("UPDATE clustering SET tree_file=NULL")
    threshold = float(model.threshold_)
    conn.execute("INSERT INTO clustering(gen, params, metric, threshold, n_rows, tree_file, report, created_at) "
                 "VALUES (?,?,?,?,?,?,?,?)",
                 (gen, json.dumps(params), metric, threshold, n_rows, tree, json.dumps(rep), now()))
    campaign._store.set_meta(conn, "clusters_file", clusters)
    campaign._store.log(conn, "cluster", dict(params=params, n_clusters=rep["n_clusters"],
                                              threshold=rep["threshold"] if np.isfinite(threshold) else None))
    return rep

def _cluster_given(campaign, clusters, metric: str, force: bool) -> dict:
    """Record a precomputed clustering (see :meth:`cluster`), in one transaction like a computed one."""
    import hashlib
    from types import SimpleNamespace

    from ..io import load_array

    name = "--clusters"
    src = str(Path(clusters).resolve()) if isinstance(clusters, (str, Path)) else "array"
    labels = load_array(clusters, name=name) if isinstance(clusters, (str, Path)) else np.asarray(clusters)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise BatchalInputError(f"{name} must be one integer cluster id per item; got shape {labels.shape}, "
                                f"dtype {labels.dtype}")
    labels = np.asarray(labels, dtype=np.int64)
    params = dict(precomputed=hashlib.sha256(labels.tobytes()).hexdigest(), metric=metric)
    with campaign._store.write("cluster") as conn:
        n = campaign._index(conn).n
        if labels.shape[0] != n:
            raise BatchalInputError(f"{name} has {labels.shape[0]:,} cluster ids; the campaign has {n:,} items")
        cur = conn.execute("SELECT gen, params, report FROM clustering ORDER BY gen DESC LIMIT 1").fetchone()
        if cur is not None:
            if json.loads(cur[1]) == params:
                return dict(json.loads(cur[2]), unchanged=True)
            if not force:
                raise BatchalInputError(
                    f"the campaign is already clustered ({json.loads(cur[1])}); the clustering is one-time, "
                    "pass --force to replace it")
        model = SimpleNamespace(labels_=labels, threshold_=float("inf"), metric=metric, method_="precomputed",
                                method_reason_=f"cluster ids given ({src})")
        _set_graph(campaign, conn, None)
        rep = _record(campaign, conn, cur, model, labels, None, params, metric, n)
    return rep
