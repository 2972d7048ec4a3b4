"""``campaign dedup``: near-duplicate groups of the campaign's pool, from its clustering's kNN graph.

The groups are :func:`batchal.dedup.near_duplicate_groups`' (connected components
of the kNN graph within a threshold, one representative each), computed on the
graph the clustering stored (:func:`batchal.campaign.clustering.cluster` keeps
it), so the pool is never searched twice: only the distance of each listed
pair is recomputed from the embeddings (the clustering's search keeps no
distances). A search is made only where no stored graph covers the pool, and
the result says why (``source``): the pool was clustered by the exact method
(which builds no graph), or by the ray engine (whose graph stays on its
workers), or given precomputed cluster ids, or not clustered, or items were
added after the clustering (the graph does not list them).
"""
from __future__ import annotations

import json

import numpy as np

from .._validation import BatchalInputError, check_count
from .store import has_table, now

__all__ = ["dedup", "representatives", "latest_dedup"]

#: The clustering metric whose kNN lists serve a dedup metric (sqeuclidean orders neighbours as euclidean)
_GRAPH_METRIC = {"cosine": "cosine", "euclidean": "euclidean", "sqeuclidean": "euclidean"}


def dedup(campaign, threshold: float | None = None, *, metric: str | None = None, knn: int = 20, method: str = "auto",
          seed: int = 0, progress: bool = False) -> dict:
    """Group the pool's near-duplicates and record the groups, in one transaction.

    Parameters
    ----------
    threshold : float, optional
        Largest distance between near-duplicates (``1 - cos`` for cosine, L2 for
        euclidean); default :data:`batchal.dedup.DEFAULT_COSINE_THRESHOLD` for
        cosine, required for euclidean.
    metric : {"cosine", "euclidean"}, optional
        Default: the stored graph's (the clustering's; sqeuclidean is served as
        euclidean), else cosine. A metric other than the graph's is refused: its
        neighbour lists rank pairs by the clustering's metric.
    knn, method, seed
        The search's, used only when no stored graph covers the pool
        (:func:`batchal.dedup.near_duplicate_groups`).

    Returns
    -------
    dict : ``gen``, ``source`` (``"clustering"`` or ``"search: <why>"``), ``n_rows``,
    ``n_groups``, ``duplicates`` (rows that are not their group's representative),
    ``groups_file`` (the Parquet, relative to the campaign), ``unchanged`` when the
    same groups were already recorded.

    Notes
    -----
    The groups cover the items in the pool when it runs; items added later are
    in no group (never kept out of batches, never given a propagated label)
    until dedup runs again.
    """
    from ..dedup import (check_dedup_args, default_threshold, edge_distances, groups_from_knn, groups_table,
                         near_duplicate_groups)

    check_count(knn, "--knn", 1)  # before the lock: nothing is touched
    check_count(seed, "--seed", 0)
    with campaign._store.write("dedup") as conn:
        index = campaign._index(conn)
        n = index.n
        graph = campaign._meta(conn, "knn_graph")
        usable = graph is not None and graph["n_rows"] == n
        gmetric = _GRAPH_METRIC[graph["metric"]] if usable else None
        metric = metric or gmetric or "cosine"
        threshold = default_threshold(threshold, metric)
        check_dedup_args(threshold, metric)
        if usable and metric != gmetric:
            raise BatchalInputError(f"--metric {metric}: the campaign's kNN graph ranks neighbours by {graph['metric']} "
                                    f"distance; give --metric {gmetric} (or leave it out)")
        params = dict(threshold=float(threshold), metric=metric, n_rows=n)
        if not usable:
            params.update(knn=int(knn), method=method, seed=int(seed))
        cur = conn.execute("SELECT gen, params, source, groups_file, n_groups FROM dedup ORDER BY gen DESC "
                           "LIMIT 1").fetchone()
        if cur is not None and json.loads(cur[1]) == params:
            return dict(gen=cur[0], source=cur[2], n_rows=n, n_groups=cur[4], duplicates=n - cur[4],
                        groups_file=cur[3], unchanged=True)
        emb = campaign._embeddings(conn)
        if usable:
            I = campaign._store.load_npy(graph["file"])
            groups = groups_from_knn(I, edge_distances(emb, I, metric), threshold)
            source = "clustering"
        else:
            groups = near_duplicate_groups(emb, threshold, metric=metric, knn=knn, method=method,
                                           random_state=seed, progress=progress)
            source = "search: " + _why_search(campaign, conn, graph, n)
        table = groups_table(groups, index.ids)

        def _w(tmp):
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        gfile = campaign._store.write_file(conn, "dedup", ".parquet", _w)
        rfile = campaign._store.write_npy(conn, "dedup-rep", groups["representative"])
        if cur is not None:  # the previous groups' files go; its row stays (propagated labels name it)
            for name in conn.execute("SELECT groups_file, rep_file FROM dedup WHERE gen=?", (cur[0],)).fetchone():
                campaign._store.forget(conn, name)
        gen = 0 if cur is None else cur[0] + 1
        n_groups = int(groups["group"].max()) + 1
        conn.execute("INSERT INTO dedup(gen, params, source, groups_file, rep_file, n_rows, n_groups, created_at) "
                     "VALUES (?,?,?,?,?,?,?,?)",
                     (gen, json.dumps(params), source, gfile, rfile, n, n_groups, now()))
        campaign._store.log(conn, "dedup", dict(params, source=source, n_groups=n_groups))
    return dict(gen=gen, source=source, n_rows=n, n_groups=n_groups, duplicates=n - n_groups, groups_file=gfile)


def _why_search(campaign, conn, graph, n: int) -> str:
    if graph is not None:
        return f"{n - graph['n_rows']:,} items were added after the clustering; its graph does not list them"
    cl = conn.execute("SELECT params, report FROM clustering ORDER BY gen DESC LIMIT 1").fetchone()
    if cl is None:
        return "the campaign is not clustered"
    if "precomputed" in json.loads(cl[0]):
        return "the cluster ids were given, with no graph"
    return "the clustering kept no kNN graph (exact method, or the ray engine)"


def latest_dedup(conn):
    """``(gen, rep_file, n_rows)`` of the recorded groups, or None."""
    if not has_table(conn, "dedup"):
        return None  # a campaign made before dedup, not written since
    return conn.execute("SELECT gen, rep_file, n_rows FROM dedup ORDER BY gen DESC LIMIT 1").fetchone()


def representatives(campaign, conn, what: str):
    """``(gen, rep)``: the latest groups' representative row of each of the first ``n_rows`` items.

    Raises
    ------
    BatchalInputError
        No groups are recorded (``what`` names the option that needs them).
    """
    d = latest_dedup(conn)
    if d is None:
        raise BatchalInputError(f"{what} needs the near-duplicate groups: run `batchal campaign dedup "
                                f"{campaign.path} --threshold T` first")
    return d[0], np.asarray(campaign._store.load_npy(d[1]))
