"""``campaign add``: append items to the pool, each joining its nearest clustered neighbour's cluster.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from .._validation import BatchalInputError
from .pool import format_ids
from .store import crash_point

__all__ = ["add", "nearest"]


def add(campaign, pool, *, id_column: str | None = None, embedding_column: str | None = None, ids=None) -> dict:
    """Append new items; each joins its nearest clustered neighbour's cluster (no re-clustering).

    A new item whose nearest neighbour is farther than the clustering's
    threshold gets a new singleton cluster. Adding the same pool again is a
    no-op. Returns a report: how many were added, joined, made singletons,
    and the distances to their neighbours.
    """
    with campaign._store.write("add") as conn:
        id_col = id_column or campaign._meta(conn, "id_column")
        emb_col = embedding_column or campaign._meta(conn, "embedding_column")
        index = campaign._index(conn)
        dim = campaign._meta(conn, "dim")
        pf, emb_name = campaign._write_pool(conn, pool, id_column=id_col, embedding_column=emb_col, ids=ids, dim=dim)
        if pf.kind != index.kind:
            raise BatchalInputError(f"--pool ids are {pf.kind}s; this campaign's ids are {index.kind}s")
        clash = index.rows(pf.ids, "--pool") >= 0
        if clash.any():
            same = conn.execute("SELECT shard FROM shards WHERE content_sha256=?", (pf.content_sha256,)).fetchone()
            if same is not None and clash.all():
                campaign._store.forget(conn, emb_name)
                rep = json.loads(conn.execute("SELECT report FROM shards WHERE shard=?", same).fetchone()[0] or "{}")
                return dict(rep, unchanged=True, shard=same[0])
            raise BatchalInputError(f"--pool has {int(clash.sum()):,} ids already in the campaign, e.g. "
                                    f"{format_ids(pf.ids.filter(pa.array(clash)).to_pylist())}")
        n_old = index.n
        rep = dict(added=pf.rows, rows_before=n_old, rows_after=n_old + pf.rows)
        clusters = campaign._clusters(conn)
        if clusters is not None:
            cl = conn.execute("SELECT metric, threshold FROM clustering ORDER BY gen DESC LIMIT 1").fetchone()
            metric, thr = cl
            base = campaign._embeddings(conn)[:clusters.shape[0]]
            new = campaign._store.load_npy(emb_name)
            nn, dist = nearest(base, new, metric)
            join = dist <= thr
            new_c = np.empty(pf.rows, dtype=np.int64)
            new_c[join] = clusters[nn[join]]
            n_single = int((~join).sum())
            new_c[~join] = int(clusters.max()) + 1 + np.arange(n_single)
            qs = np.quantile(dist, [0.5, 0.9, 1.0]) if pf.rows else [np.nan] * 3
            rep.update(joined=int(join.sum()), singletons=n_single, threshold=float(thr), metric=metric,
                       distance=dict(median=float(qs[0]), p90=float(qs[1]), max=float(qs[2])))
            name = campaign._store.write_npy(conn, "clusters", np.concatenate([np.asarray(clusters), new_c]))
            campaign._store.forget(conn, campaign._meta(conn, "clusters_file"))
            campaign._store.set_meta(conn, "clusters_file", name)
        campaign._add_shard(conn, pf, emb_name, str(Path(pool).resolve()), n_old, rep)
        campaign._store.set_meta(conn, "n_items", n_old + pf.rows)
        campaign._store.log(conn, "add", rep)
        crash_point("add:recorded")
    return rep


def nearest(base: np.ndarray, queries: np.ndarray, metric: str, chunk: int = 1 << 16):
    """Nearest row of ``base`` for each query row, and its distance in the clustering's metric.

    Exact search (faiss, BLAS) when ``len(base) * len(queries)`` is moderate; above
    that an inverted-file index probing 16 of ``4 sqrt(n)`` cells, so adding 100K
    items to a 1M pool stays in seconds rather than a full pairwise scan.
    """
    import faiss

    from .._validation import iter_chunks

    def prep(X):
        X = np.array(X, dtype=np.float32, order="C", copy=True)
        if metric == "cosine":
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            norms[norms == 0] = 1.0
            X /= norms
        return X

    nb, d = base.shape
    nq = queries.shape[0]
    if nq == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    fm = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    Q = prep(queries)
    if nb * nq <= 2_000_000_000 or nb < 50_000:
        B = np.concatenate([prep(base[a:b]) for a, b in iter_chunks(nb, chunk)])
        D, I = faiss.knn(Q, B, 1, metric=fm)
    else:
        nlist = int(4 * np.sqrt(nb))
        quant = faiss.IndexFlat(d, fm)
        index = faiss.IndexIVFFlat(quant, d, nlist, fm)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(nb, size=min(nb, 64 * nlist), replace=False))
        index.train(prep(base[sample]))
        for a, b in iter_chunks(nb, chunk):
            index.add(prep(base[a:b]))
        index.nprobe = 16
        D, I = index.search(Q, 1)
    D, I = D[:, 0].astype(np.float64), I[:, 0].astype(np.int64)
    if metric == "cosine":
        D = np.maximum(1.0 - D, 0.0)
    elif metric == "euclidean":
        D = np.sqrt(np.maximum(D, 0.0))
    else:
        D = np.maximum(D, 0.0)
    return I, D
