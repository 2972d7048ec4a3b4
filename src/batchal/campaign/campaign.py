"""The :class:`Campaign`: a labeling workflow across rounds, persistent and crash-safe.

Every method that changes the campaign runs as one command: it takes the
campaign's lock, writes its new array files, and commits one SQLite
transaction (see :mod:`batchal.campaign.store` for why that order makes a
SIGKILL at any point harmless). Items are addressed by their ids; internally a
row number is an item's fixed position in the campaign's arrays (rows are only
ever appended, so they never shift).
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from .._validation import BatchalInputError
from .pool import IdIndex, format_ids, read_labels, read_pool, read_predictions, first_duplicates
from .store import SCHEMA_VERSION, Store, crash_point, now, sha256_file

__all__ = ["Campaign", "Batch"]


@dataclass
class Batch:
    """One round's batch.

    Attributes
    ----------
    round : int
    ids : list
        Item ids in selection order.
    scores : ndarray of float
        Each item's margin when selected (NaN without predictions); small = uncertain.
    predictions : list of str or None
        The model's top class (multi-label: classes with p >= 0.5, joined by ``|``).
    reused : bool
        True when the round was already open and this is its recorded batch.
    strategy : str
    seed : int
        The seed actually used (drawn and recorded when none was given).
    diagnostics : dict
        The selector's diagnostics (strategies that read clusters: ``k_m`` and the
        redundancy of the candidates); empty for a reused batch.
    """

    round: int
    ids: list
    scores: np.ndarray
    predictions: list
    reused: bool
    strategy: str
    seed: int
    timings: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.ids)


def _classes_arg(classes):
    if classes is None:
        return None
    if isinstance(classes, (str, Path)):
        p = Path(classes)
        if p.is_file():
            names = [x.strip() for x in p.read_text().splitlines() if x.strip()]
        else:
            names = [x.strip() for x in str(classes).split(",") if x.strip()]
    else:
        names = [str(x).strip() for x in classes]
    if not names or len(set(names)) != len(names) or any("|" in x for x in names):
        raise BatchalInputError(f"classes must be distinct non-empty names without '|'; got {names!r}")
    return names


def _engine_arg(engine):
    """``(engine, owned)``: an :class:`~batchal.engines.Engine` as given, or one made from a name (None: local).

    An engine made here is ``owned``: the caller closes it when done (a Ray
    instance it started is shut down); one passed in stays the caller's.
    """
    from ..engines import Engine, get_engine

    if engine is None:
        engine = "local"
    if isinstance(engine, Engine):
        return engine, False
    if not isinstance(engine, str):
        raise BatchalInputError(f"engine must be an Engine or a name (local, ray); got {type(engine).__name__}")
    return get_engine(engine), True


class Campaign:
    """An active-learning campaign stored in a directory.

    Open an existing one with ``Campaign(path)``; create one with
    :meth:`Campaign.init`. The command line ``batchal campaign ...`` calls
    these methods.

    Parameters
    ----------
    path : path of the campaign directory
    lock_timeout : float, optional
        Seconds a writing method waits for another writer (default
        ``BATCHAL_LOCK_TIMEOUT`` or 30); then it raises ``CampaignBusyError``.
    """

    def __init__(self, path, *, lock_timeout: float | None = None):
        self.path = Path(path)
        self._store = Store(self.path, lock_timeout)
        if not self._store.is_initialised():
            raise BatchalInputError(f"{self.path} is not a campaign (run `batchal campaign init` first)")
        self._ids_cache = None

    # ------------------------------------------------------------------ helpers
    def close(self):
        self._store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _meta(self, conn, key, default=None):
        return self._store.get_meta(conn, key, default)

    @property
    def campaign_id(self) -> str:
        with self._store.read() as conn:
            return self._meta(conn, "campaign_id")

    def _index(self, conn) -> IdIndex:
        """All campaign ids in row order (cached while the shards do not change)."""
        shards = conn.execute("SELECT shard, ids_file FROM shards ORDER BY shard").fetchall()
        key = tuple(shards)
        if self._ids_cache is None or self._ids_cache[0] != key:
            parts = [self._read_ids(name) for _, name in shards]
            ids = parts[0] if len(parts) == 1 else pa.chunked_array(parts).combine_chunks()
            self._ids_cache = (key, IdIndex(ids, self._meta(conn, "id_kind")))
        return self._ids_cache[1]

    def _read_ids(self, name: str) -> pa.Array:
        p = self._store.path_of(name)
        if name.endswith(".npy"):
            return pa.array(np.load(p, allow_pickle=False))
        with pa.memory_map(str(p)) as src:
            return pa.ipc.open_file(src).read_all().column(0).combine_chunks()

    def _write_ids(self, conn, ids: pa.Array) -> str:
        if pa.types.is_integer(ids.type):
            return self._store.write_npy(conn, "ids", ids.to_numpy(zero_copy_only=False).astype(np.int64))

        def _w(tmp):
            table = pa.table({"id": ids})
            with pa.OSFile(tmp, "wb") as f, pa.ipc.new_file(f, table.schema) as w:
                w.write_table(table)
        return self._store.write_file(conn, "ids", ".arrow", _w, shape=(len(ids),), dtype="large_string")

    def _embeddings(self, conn) -> np.ndarray:
        names = [r[0] for r in conn.execute("SELECT emb_file FROM shards ORDER BY shard")]
        parts = [self._store.load_npy(n) for n in names]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _embedding_files(self, conn) -> list[str]:
        """Paths of the shards' embedding files, in row order (for engines whose workers read files)."""
        return [str(self._store.path_of(r[0])) for r in conn.execute("SELECT emb_file FROM shards ORDER BY shard")]

    def _clusters(self, conn) -> np.ndarray | None:
        name = self._meta(conn, "clusters_file")
        return None if name is None else self._store.load_npy(name)

    def _write_pool(self, conn, pool, *, id_column, embedding_column, ids, dim=None):
        """Stream a pool into a new float32 embeddings file; returns (PoolFiles, file name)."""
        from numpy.lib.format import open_memmap

        found = {}

        def _w(tmp):
            holder = {}

            def emb_out(n, d):
                holder["mm"] = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
                return holder["mm"]
            found["pf"] = read_pool(pool, id_column=id_column, embedding_column=embedding_column,
                                    ids_path=ids, emb_out=emb_out, dim=dim)
            dup = first_duplicates(found["pf"].ids)
            if dup:
                raise BatchalInputError(f"--pool holds duplicate ids, e.g. {format_ids(dup)}")
            holder["mm"].flush()
            del holder["mm"]
        name = self._store.write_file(conn, "embeddings", ".npy", _w, dtype=np.float32)
        pf = found["pf"]
        conn.execute("UPDATE files SET shape=? WHERE name=?", (json.dumps([pf.rows, pf.dim]), name))
        return pf, name

    def _add_shard(self, conn, pf, emb_name, source, row_start, report=None) -> int:
        ids_name = self._write_ids(conn, pf.ids)
        shard = conn.execute("SELECT coalesce(max(shard) + 1, 0) FROM shards").fetchone()[0]
        conn.execute(
            "INSERT INTO shards(shard, row_start, rows, ids_file, emb_file, source, content_sha256, added_at, report) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (shard, row_start, pf.rows, ids_name, emb_name, source, pf.content_sha256, now(),
             json.dumps(report) if report else None))
        conn.executemany("INSERT INTO pool_files(shard, seq, path, bytes, rows, sha256, role) VALUES (?,?,?,?,?,?,?)",
                         [(shard, i, m["path"], m["bytes"], m["rows"], m["sha256"], m.get("role", "pool"))
                          for i, m in enumerate(pf.files)])
        return shard

    # ------------------------------------------------------------------ init
    @classmethod
    def init(cls, path, pool, *, id_column: str = "id", embedding_column: str = "embedding", ids=None,
             classes=None, lock_timeout: float | None = None) -> "Campaign":
        """Create a campaign from a pool.

        Parameters
        ----------
        path : directory to create (or an empty one)
        pool : Parquet file, directory of Parquet shards, or ``.npy`` of embeddings
            Parquet: an id column (integers or strings) and an embedding column
            (fixed-size list or list of floats). ``.npy``: ids are row numbers
            unless ``ids`` gives a ``.npy`` of ids.
        classes : list of str, comma-separated str or a file with one name per line, optional
            Class names, in the column order of the predictions (used for Label
            Studio pre-annotations and label checks).

        Running it again with the same pool is a no-op; duplicate ids, ragged
        or non-finite embeddings are refused.
        """
        names = _classes_arg(classes)
        store = Store(path, lock_timeout)
        with store.write("init", create=True) as conn:
            if store.get_meta(conn, "campaign_id") is not None:
                old = conn.execute("SELECT content_sha256, source FROM shards WHERE shard=0").fetchone()
                new = read_pool(pool, id_column=id_column, embedding_column=embedding_column, ids_path=ids)
                if new.content_sha256 != old[0]:
                    raise BatchalInputError(f"{path} is already a campaign (created from {old[1]}); "
                                            "add new items with `batchal campaign add`")
            else:
                self = cls.__new__(cls)
                self.path, self._store, self._ids_cache = Path(path), store, None
                pf, emb = self._write_pool(conn, pool, id_column=id_column, embedding_column=embedding_column, ids=ids)
                self._add_shard(conn, pf, emb, str(Path(pool).resolve()), 0)
                for k, v in dict(schema_version=SCHEMA_VERSION, campaign_id=secrets.token_hex(16), created_at=now(),
                                 id_kind=pf.kind, id_column=id_column, embedding_column=embedding_column,
                                 dim=pf.dim, n_items=pf.rows, classes=names, data_columns=pf.data_columns).items():
                    store.set_meta(conn, k, v)
                store.log(conn, "init", dict(pool=str(pool), rows=pf.rows, dim=pf.dim, sha256=pf.content_sha256))
        store.close()
        return cls(path, lock_timeout=lock_timeout)

    # ------------------------------------------------------------------ cluster
    def cluster(self, *, mean_cluster_size: float | None = None, threshold: float | None = None,
                metric: str = "cosine", method: str = "auto", knn: int = 50, seed: int = 0,
                force: bool = False, progress: bool = False, engine=None, clusters=None) -> dict:
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
            for every engine (the engine is not part of the recorded parameters).
        clusters : (n,) int array or path, optional
            A precomputed clustering (one cluster id per item, in the campaign's
            order) used instead of clustering here, e.g. one made on another
            system. No tree is kept; the recorded parameters are the ids' hash.
            ``add`` then puts each new item in its nearest neighbour's cluster
            (``metric``), whatever the distance (the threshold is infinite).
        """
        from ..clustering.report import write_report

        if clusters is not None:
            if threshold is not None or mean_cluster_size is not None:
                raise BatchalInputError("give --clusters (a precomputed clustering) or a cut, not both")
            return self._cluster_given(clusters, metric, force)
        if threshold is not None and mean_cluster_size is not None:
            raise BatchalInputError("give a threshold or a mean cluster size, not both")
        if threshold is None and mean_cluster_size is None:
            mean_cluster_size = 10.0
        params = dict(mean_cluster_size=mean_cluster_size, threshold=threshold, metric=metric, method=method,
                      knn=knn, seed=seed)
        with self._store.write("cluster") as conn:
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
            eng, owned = _engine_arg(engine)
            try:
                # an engine whose workers read files gets the shards' paths: the pool never passes the driver
                X = self._embedding_files(conn) if eng.reads_files else self._embeddings(conn)
                model = eng.cluster(X, threshold=threshold, mean_cluster_size=mean_cluster_size, metric=metric,
                                    method=method, knn=knn, progress=progress, random_state=seed)
            finally:
                if owned:
                    eng.close()
            n_rows = int(model.labels_.shape[0])
            gen = 0 if cur is None else cur[0] + 1
            clusters = self._store.write_npy(conn, "clusters", model.labels_.astype(np.int64))
            tree = self._store.write_npy(conn, "tree", model.linkage_)
            stem = self._store.new_name(f"clusters-gen{gen}", ".npy", where="reports")
            rep = write_report(model, self._store.path_of(stem))
            for key in ("report", "histogram"):
                if rep.get(key) and Path(rep[key]).exists():
                    rel = f"reports/{Path(rep[key]).name}"
                    self._store.register(conn, rel, "report")
                    rep[key] = rel
            old_clusters = self._meta(conn, "clusters_file")
            if cur is not None:
                for name in [old_clusters, *[r[0] for r in conn.execute(
                        "SELECT tree_file FROM clustering WHERE tree_file IS NOT NULL")],
                        *[r[0] for r in conn.execute("SELECT name FROM files WHERE kind='report' AND name NOT IN (?, ?)",
                                                     (rep.get("report"), rep.get("histogram")))]]:
                    if name:
                        self._store.forget(conn, name)
                conn.execute("UPDATE clustering SET tree_file=NULL")
            conn.execute("INSERT INTO clustering(gen, params, metric, threshold, n_rows, tree_file, report, created_at) "
                         "VALUES (?,?,?,?,?,?,?,?)",
                         (gen, json.dumps(params), metric, float(model.threshold_), n_rows, tree,
                          json.dumps(rep), now()))
            self._store.set_meta(conn, "clusters_file", clusters)
            self._store.log(conn, "cluster", dict(params=params, n_clusters=rep["n_clusters"], threshold=rep["threshold"]))
        return rep

    def _cluster_given(self, clusters, metric: str, force: bool) -> dict:
        """Record a precomputed clustering (see :meth:`cluster`), in one transaction like a computed one."""
        import hashlib
        from types import SimpleNamespace

        from ..clustering.report import write_report
        from ..io import load_array

        name = "--clusters"
        src = str(Path(clusters).resolve()) if isinstance(clusters, (str, Path)) else "array"
        labels = load_array(clusters, name=name) if isinstance(clusters, (str, Path)) else np.asarray(clusters)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise BatchalInputError(f"{name} must be one integer cluster id per item; got shape {labels.shape}, "
                                    f"dtype {labels.dtype}")
        labels = np.asarray(labels, dtype=np.int64)
        params = dict(precomputed=hashlib.sha256(labels.tobytes()).hexdigest(), metric=metric)
        with self._store.write("cluster") as conn:
            n = self._index(conn).n
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
            gen = 0 if cur is None else cur[0] + 1
            cfile = self._store.write_npy(conn, "clusters", labels)
            stem = self._store.new_name(f"clusters-gen{gen}", ".npy", where="reports")
            rep = write_report(model, self._store.path_of(stem))
            for key in ("report", "histogram"):
                if rep.get(key) and Path(rep[key]).exists():
                    rel = f"reports/{Path(rep[key]).name}"
                    self._store.register(conn, rel, "report")
                    rep[key] = rel
            if cur is not None:
                old = [self._meta(conn, "clusters_file"),
                       *[r[0] for r in conn.execute("SELECT tree_file FROM clustering WHERE tree_file IS NOT NULL")],
                       *[r[0] for r in conn.execute("SELECT name FROM files WHERE kind='report' AND name NOT IN (?, ?)",
                                                    (rep.get("report"), rep.get("histogram")))]]
                for old_name in old:
                    if old_name:
                        self._store.forget(conn, old_name)
                conn.execute("UPDATE clustering SET tree_file=NULL")
            conn.execute("INSERT INTO clustering(gen, params, metric, threshold, n_rows, tree_file, report, created_at) "
                         "VALUES (?,?,?,?,?,?,?,?)",
                         (gen, json.dumps(params), metric, float("inf"), n, None, json.dumps(rep), now()))
            self._store.set_meta(conn, "clusters_file", cfile)
            self._store.log(conn, "cluster", dict(params=params, n_clusters=rep["n_clusters"], threshold=None))
        return rep

    # ------------------------------------------------------------------ select
    def select(self, batch_size: int, predictions=None, *, strategy: str | None = None, seed: int | None = None,
               id_column: str | None = None, probs_column: str | None = None, logits_column: str | None = None,
               multilabel: bool = False, aggregate: str = "min", engine=None) -> Batch:
        """Open the next round and select its batch among items neither labeled nor pending.

        Parameters
        ----------
        batch_size : int
        predictions : path, optional
            Parquet (an id column and a ``probs`` or ``logits`` list column, or the
            top-k layout: ``top_classes`` and ``top_probs`` list columns) or a
            ``.npy`` of shape (n, C) (``.npz`` of the two top-k arrays) in the
            campaign's row order. Needed by every
            strategy that reads predictions; items that can be selected must all
            have one (labeled and pending items may be missing).
        strategy : str
            A strategy spec, e.g. ``cluster-margin:margin_factor=2`` (default: the recommended one).
        seed : int, optional
            Same seed, same batch; without one a seed is drawn and recorded.
        engine : Engine or {"local", "ray"}, optional
            Where the predictions are scored and the most uncertain items found
            (default: local). The ray engine runs random, margin, entropy,
            least-confidence and cluster-margin (any spec of them); another
            strategy is refused before anything is read or written. The engine
            only computes: the batch is the local engine's for the same inputs
            and seed, and what is recorded (batch, scores file, round) is the same
            for every engine. The predictions are read and aligned by id on this
            machine, as locally, and handed to the engine as an array.

        While the round is open, calling it again with the same batch size,
        strategy, seed and predictions returns the recorded batch; anything
        different is an error (label or close the round first).
        """
        import time

        from ..engines import check_strategy
        from ..selectors import RECOMMENDED, Pool
        from ..selectors.spec import parse_spec

        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise BatchalInputError(f"--batch-size must be a positive integer; got {batch_size!r}")
        spec = parse_spec(strategy or RECOMMENDED)
        check_strategy("local" if engine is None else engine, spec)  # before the lock: nothing is touched
        t0 = time.perf_counter()
        with self._store.write("select") as conn:
            index = self._index(conn)
            n = index.n
            preds = None
            t_open = time.perf_counter()
            if predictions is not None:
                vocab = self._meta(conn, "classes")
                preds = read_predictions(predictions, index, id_column=id_column or self._meta(conn, "id_column"),
                                         probs_column=probs_column, logits_column=logits_column, multilabel=multilabel,
                                         n_classes=len(vocab) if vocab else None)
            t1 = time.perf_counter()
            opened = conn.execute("SELECT round, batch_size, strategy, seed, predictions_sha256, seed_used, multilabel "
                                  "FROM rounds WHERE status='open'").fetchone()
            if opened is not None:
                return self._reuse(conn, opened, batch_size, spec.text, seed, preds, multilabel, predictions)
            excluded = np.zeros(n, dtype=bool)
            active = np.fromiter((r for (r,) in conn.execute("SELECT row FROM batch_items WHERE returned=0")),
                                 dtype=np.int64)
            excluded[active] = True
            if preds is not None and preds.have is not None:
                missing = np.flatnonzero(~preds.have & ~excluded)
                if missing.size:
                    raise BatchalInputError(
                        f"--predictions has no row for {missing.size:,} items that can be selected, e.g. "
                        f"{format_ids(index.take(missing[:5]))}; predict every item that is neither labeled nor pending")
            needs = spec.requires
            if "predictions" in needs and preds is None:
                raise BatchalInputError(f"strategy {spec.name!r} needs --predictions")
            classes = self._meta(conn, "classes")
            if preds is not None and preds.kind != "topk" and classes and preds.array.shape[1] != len(classes):
                raise BatchalInputError(f"--predictions has {preds.array.shape[1]} classes; the campaign has "
                                        f"{len(classes)} ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
            clusters = self._clusters(conn)
            if "clusters" in needs and clusters is None:
                raise BatchalInputError(f"strategy {spec.name!r} needs the clustering: run `batchal campaign cluster "
                                        f"{self.path}` first")
            emb = self._embeddings(conn) if "embeddings" in needs else None
            pool_clusters = clusters if "clusters" in needs else None
            if preds is None and emb is None and pool_clusters is None:
                # a strategy that reads nothing (random seed round): the Pool still needs its size
                pool_clusters = clusters if clusters is not None else np.zeros(n, dtype=np.int64)
            seed_used = int(seed) if seed is not None else secrets.randbits(63)
            probs = preds.array if preds is not None and preds.kind in ("probs", "topk") else None
            logits = preds.array if preds is not None and preds.kind == "logits" else None
            eng, owned = _engine_arg(engine)  # made here, not earlier: a reused round needs none
            try:
                # excluded (labeled and pending items) is the pool's labeled set on every engine
                pool = eng.pool(probs=probs, logits=logits, embeddings=emb, clusters=pool_clusters,
                                labeled=excluded, multilabel=multilabel, aggregate=aggregate)
                selector = spec.make(random_state=seed_used, defaults=dict(progress=False))
                idx = selector.select(pool, int(batch_size))
            finally:
                if owned:
                    eng.close()
            t2 = time.perf_counter()
            r = conn.execute("SELECT coalesce(max(round) + 1, 1) FROM rounds").fetchone()[0]
            if preds is not None:
                # the scores file records every item's margin; a distributed pool never gathers them, so
                # they are scored here, from the predictions this machine read anyway
                scored = pool if not pool.distributed else Pool(probs=probs, logits=logits, multilabel=multilabel,
                                                                aggregate=aggregate)
                margin_all = -scored.uncertainty("margin")  # cached by the selector when it used margins
                if preds.have is not None:
                    margin_all[~preds.have] = np.nan
                scores = margin_all[idx].astype(np.float64)
                labels = _top_labels(preds.array, idx, preds.kind, multilabel, classes)
                scores_file = self._store.write_npy(conn, "scores", margin_all.astype(np.float32))
            else:
                scores = np.full(idx.shape[0], np.nan)
                labels = [None] * idx.shape[0]
                scores_file = None
            conn.execute(
                "INSERT INTO rounds(round, status, batch_size, strategy, seed, seed_used, predictions, "
                "predictions_sha256, multilabel, scores_file, opened_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (r, "open", int(batch_size), spec.text, seed, seed_used, preds.source if preds else None,
                 preds.sha256 if preds else None, int(multilabel), scores_file, now()))
            item_ids = index.take(idx)
            by_row = np.argsort(idx)  # inserted in row order: the index on row grows at one end, not at random
            sc = [None if s != s else s for s in scores.tolist()]
            conn.executemany(
                "INSERT INTO batch_items(round, pos, row, item_id, score, pred) VALUES (?,?,?,?,?,?)",
                ((r, j, int(idx[j]), item_ids[j], sc[j], labels[j]) for j in by_row.tolist()))
            crash_point("select:inserted")
            self._store.log(conn, "select", dict(round=r, batch_size=int(batch_size), strategy=spec.text,
                                                 seed=seed_used))
        t3 = time.perf_counter()
        return Batch(r, item_ids, scores, labels, False, spec.text, seed_used,
                     dict(open=t_open - t0, read=t1 - t_open, select=t2 - t1, record=t3 - t2),
                     dict(getattr(selector, "diagnostics_", {}) or {}))

    def _reuse(self, conn, opened, batch_size, strategy, seed, preds, multilabel, predictions) -> Batch:
        r, k0, strat0, seed0, sha0, seed_used, ml0 = opened
        diffs = []
        if k0 != batch_size:
            diffs.append(f"--batch-size {k0} (not {batch_size})")
        if strat0 != strategy:
            diffs.append(f"--strategy {strat0} (not {strategy})")
        if seed0 != seed:
            diffs.append(f"--seed {seed0} (not {seed})")
        if sha0 != (preds.sha256 if preds is not None else None):
            diffs.append("other predictions" if preds is not None and sha0 else
                         ("no predictions" if sha0 is None else "predictions (none given now)"))
        if bool(ml0) != bool(multilabel):
            diffs.append(f"multilabel={bool(ml0)}")
        if diffs:
            pending = conn.execute("SELECT count(*) FROM batch_items b WHERE round=? AND returned=0 AND NOT EXISTS "
                                   "(SELECT 1 FROM labels l WHERE l.row=b.row)", (r,)).fetchone()[0]
            raise BatchalInputError(
                f"round {r} is open, selected with {', '.join(diffs)}; {pending:,} of its items await labels. "
                f"Run the same command to get that batch again, or finish the round first "
                f"(`batchal campaign label {self.path} LABELS`, or `--close` to return unlabeled items to the pool)")
        rows = conn.execute("SELECT item_id, score, pred FROM batch_items WHERE round=? ORDER BY pos", (r,)).fetchall()
        ids = [x[0] for x in rows]
        scores = np.array([np.nan if x[1] is None else x[1] for x in rows], dtype=np.float64)
        return Batch(r, ids, scores, [x[2] for x in rows], True, strat0, seed_used)

    # ------------------------------------------------------------------ label
    def label(self, labels=None, *, close: bool = False, id_column: str | None = None,
              label_column: str = "label", format: str | None = None) -> dict:
        """Record labels; a round closes when all its items are labeled, or on ``close=True``.

        Parameters
        ----------
        labels : path, optional
            CSV (``id,label``; multi-label ``a|b``), Parquet (id and label
            columns; a list column for multi-label) or a Label Studio JSON export.
        close : bool
            Close the open round after recording: its unlabeled items return to the pool.

        Rules: every id must belong to the campaign and to the open round's batch,
        or already carry the same label (importing the same file again is a
        no-op); an id with two different labels, in the file or against the
        recorded label, is an error; an export of another campaign is refused.
        Nothing is recorded unless everything checks.

        Returns
        -------
        dict : counts (``new``, ``same``, ``skipped``) and the rounds closed.
        """
        if labels is None and not close:
            raise BatchalInputError("give a labels file, or --close to close the open round")
        with self._store.read() as conn:
            id_col = id_column or self._meta(conn, "id_column")
        lf = read_labels(labels, id_column=id_col, label_column=label_column, fmt=format) if labels is not None else None
        with self._store.write("label") as conn:
            result = dict(new=0, same=0, skipped=dict(lf.skipped) if lf else {}, closed=[], returned=0)
            if lf is not None:
                self._record_labels(conn, lf, Path(labels), result)
            opened = conn.execute("SELECT round FROM rounds WHERE status='open'").fetchone()
            if opened is not None:
                r = opened[0]
                pending = [x[0] for x in conn.execute(
                    "SELECT row FROM batch_items b WHERE round=? AND returned=0 AND NOT EXISTS "
                    "(SELECT 1 FROM labels l WHERE l.row=b.row)", (r,))]
                if not pending or close:
                    if pending:
                        conn.execute("UPDATE batch_items SET returned=1 WHERE round=? AND returned=0 AND NOT EXISTS "
                                     "(SELECT 1 FROM labels l WHERE l.row=batch_items.row)", (r,))
                    reason = "all labeled" if not pending else f"closed with {len(pending):,} unlabeled (returned to the pool)"
                    conn.execute("UPDATE rounds SET status='closed', closed_at=?, close_reason=? WHERE round=?",
                                 (now(), reason, r))
                    result["closed"].append(r)
                    result["returned"] = len(pending)
            result["open_round"] = None if (opened is None or result["closed"]) else opened[0]
            if result["new"] or result["closed"]:
                self._store.log(conn, "label", dict(source=str(labels), new=result["new"], same=result["same"],
                                                    closed=result["closed"], returned=result["returned"]))
            crash_point("label:recorded")
        return result

    def _record_labels(self, conn, lf, path: Path, result: dict) -> None:
        cid = self._meta(conn, "campaign_id")
        other = {c for c in lf.campaigns if c != cid}
        if other:
            raise BatchalInputError(f"labels {path.name} come from another campaign ({format_ids(sorted(other))}); "
                                    f"this campaign is {cid!r}")
        if not lf.labels:
            return
        index = self._index(conn)
        rows = index.rows(lf.ids, f"labels {path.name}")
        unknown = np.flatnonzero(rows < 0)
        if unknown.size:
            raise BatchalInputError(f"labels {path.name}: {unknown.size:,} ids are not in the campaign: "
                                    f"{format_ids(lf.ids.take(pa.array(unknown)).to_pylist())}")
        labels = np.asarray(lf.labels, dtype=object)
        # one label per id: repeats must agree
        order = np.argsort(rows, kind="stable")
        rs = rows[order]
        dup_pos = np.flatnonzero(rs[1:] == rs[:-1])
        if dup_pos.size:
            ls = labels[order]
            bad = [i for i in dup_pos if ls[i] != ls[i + 1]]
            if bad:
                ex = [(index.take([rs[i]])[0], ls[i], ls[i + 1]) for i in bad[:3]]
                raise BatchalInputError(f"labels {path.name}: {len(bad):,} ids have conflicting labels, e.g. "
                                        + "; ".join(f"id {i!r}: {a!r} vs {b!r}" for i, a, b in ex))
            keep = np.ones(rs.shape[0], dtype=bool)
            keep[dup_pos + 1] = False
            order = order[keep]
        rows, labels = rows[order], labels[order]
        classes = self._meta(conn, "classes")
        if classes:
            allowed = set(classes)
            unknown_lab = sorted({x for lab in set(labels.tolist()) for x in lab.split("|")} - allowed)
            if unknown_lab:
                raise BatchalInputError(f"labels {path.name}: labels not among the campaign's classes: "
                                        f"{format_ids(unknown_lab)} (classes: {', '.join(classes[:10])})")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS q(row INTEGER PRIMARY KEY, i INTEGER NOT NULL)")
        conn.execute("DELETE FROM q")
        conn.executemany("INSERT INTO q(row, i) VALUES (?, ?)", zip(rows.tolist(), range(rows.shape[0])))
        state = np.zeros(rows.shape[0], dtype=np.int8)  # 0 unknown, 1 pending, 2 same label
        rnd = np.zeros(rows.shape[0], dtype=np.int64)
        clash = []
        for i, lab, r in conn.execute("SELECT q.i, l.label, l.round FROM q JOIN labels l ON l.row=q.row"):
            if lab == labels[i]:
                state[i] = 2
            else:
                clash.append((i, lab, r))
        if clash:
            ex = "; ".join(f"id {index.take([rows[i]])[0]!r} is {lab!r} (round {r}), the file says {labels[i]!r}"
                           for i, lab, r in clash[:3])
            raise BatchalInputError(f"labels {path.name}: {len(clash):,} ids are already labeled differently: {ex}")
        for i, r in conn.execute("SELECT q.i, b.round FROM q JOIN batch_items b ON b.row=q.row AND b.returned=0 "
                                 "JOIN rounds USING(round) WHERE rounds.status='open'"):
            if state[i] == 0:
                state[i] = 1
                rnd[i] = r
        outside = np.flatnonzero(state == 0)
        if outside.size:
            ret = {i: r for i, r in conn.execute(
                "SELECT q.i, max(b.round) FROM q JOIN batch_items b ON b.row=q.row AND b.returned=1 GROUP BY q.i")}
            ex = []
            for i in outside[:3]:
                why = (f"returned to the pool when round {ret[i]} was closed" if i in ret else "never selected")
                ex.append(f"{index.take([rows[i]])[0]!r} ({why})")
            raise BatchalInputError(f"labels {path.name}: {outside.size:,} ids are not in the open round's batch: "
                                    + ", ".join(ex) + (" ..." if outside.size > 3 else ""))
        new = np.flatnonzero(state == 1)
        result["same"] = int((state == 2).sum())
        result["new"] = int(new.size)
        if new.size:
            cur = conn.execute("INSERT INTO imports(source, format, sha256, at, n_new, n_same, n_skipped) "
                               "VALUES (?,?,?,?,?,?,?)",
                               (str(path.resolve()), lf.format, lf.sha256, now(), int(new.size), result["same"],
                                int(sum(lf.skipped.values()))))
            imp = cur.lastrowid
            new_rows = rows[new]
            conn.executemany("INSERT INTO labels(row, item_id, round, label, import) VALUES (?,?,?,?,?)",
                             zip(new_rows.tolist(), index.take(new_rows), rnd[new].tolist(), labels[new].tolist(),
                                 [imp] * new.size))
        conn.execute("DELETE FROM q")

    # ------------------------------------------------------------------ export
    def batch(self, round: int, *, labels: bool = True) -> dict:
        """The recorded batch of a round: ids, scores, predictions, whether returned, labels (if asked)."""
        with self._store.read() as conn:
            if conn.execute("SELECT 1 FROM rounds WHERE round=?", (round,)).fetchone() is None:
                known = [r[0] for r in conn.execute("SELECT round FROM rounds ORDER BY round")]
                raise BatchalInputError(f"no round {round} (rounds: {format_ids(known, 20) if known else 'none yet'})")
            if labels:
                rows = conn.execute(
                    "SELECT b.item_id, b.score, b.pred, b.returned, l.label FROM batch_items b LEFT JOIN labels l "
                    "ON l.row=b.row AND l.round=b.round WHERE b.round=? ORDER BY b.pos", (round,)).fetchall()
            else:
                rows = conn.execute("SELECT item_id, score, pred, returned, NULL FROM batch_items WHERE round=? "
                                    "ORDER BY pos", (round,)).fetchall()
            meta = dict(campaign_id=self._meta(conn, "campaign_id"), id_column=self._meta(conn, "id_column"))
        return dict(round=round, ids=[r[0] for r in rows], scores=[r[1] for r in rows],
                    predictions=[r[2] for r in rows], returned=[bool(r[3]) for r in rows],
                    labels=[r[4] for r in rows], **meta)

    def export(self, round: int, out, *, format: str | None = None, data_columns=(), tasks_per_file: int | None = None,
               from_name: str = "label", to_name: str | None = None) -> list[Path]:
        """Write a round's batch: ``csv`` (ids), ``jsonl`` or ``labelstudio`` (tasks, split at 100,000).

        ``data_columns`` are read from the pool's Parquet files (as recorded in
        the manifest) and put under each task's ``data``. Returns the files written.
        """
        from ..io import atomic_write
        from .labelstudio import TASKS_PER_FILE, make_tasks, write_tasks

        out = Path(out)
        fmt = format or {".csv": "csv", ".jsonl": "jsonl", ".json": "labelstudio"}.get(out.suffix.lower())
        if fmt not in ("csv", "jsonl", "labelstudio"):
            raise BatchalInputError(f"--out {out.name}: choose --format csv, jsonl or labelstudio "
                                    "(or end the file in .csv, .jsonl or .json)")
        if data_columns and fmt != "labelstudio":
            raise BatchalInputError("--data-column is for --format labelstudio")
        b = self.batch(round, labels=False)
        if fmt == "csv":
            def _w(tmp):
                with open(tmp, "w") as fh:
                    fh.write("id\n")
                    fh.writelines(f"{i}\n" for i in b["ids"])
            atomic_write(out, _w)
            return [out]
        if fmt == "jsonl":
            def _w(tmp):
                with open(tmp, "w") as fh:
                    for pos, (i, s, p) in enumerate(zip(b["ids"], b["scores"], b["predictions"])):
                        fh.write(json.dumps({"id": i, "round": round, "position": pos, "score": s,
                                             "prediction": p}) + "\n")
            atomic_write(out, _w)
            return [out]
        data = self._data_columns(b["ids"], list(data_columns)) if data_columns else {}
        tasks = make_tasks(b["ids"], [round] * len(b["ids"]), b["scores"], b["predictions"],
                           campaign_id=b["campaign_id"], id_key=b["id_column"], data=data, from_name=from_name,
                           to_name=to_name or (data_columns[0] if data_columns else "image"))
        return write_tasks(tasks, out, tasks_per_file or TASKS_PER_FILE)

    def _data_columns(self, ids: list, columns: list) -> dict:
        """Values of ``columns`` for ``ids``, read from the pool's Parquet files."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        with self._store.read() as conn:
            files = [r[0] for r in conn.execute("SELECT path FROM pool_files WHERE role='pool' ORDER BY shard, seq")]
            id_col = self._meta(conn, "id_column")
            index = self._index(conn)
        want = index.cast(pa.array(ids), "batch")
        found = []
        for f in files:
            if not f.endswith(".parquet"):
                continue
            if not Path(f).exists():
                raise BatchalInputError(f"--data-column: the pool file {f} is gone; it holds the data columns")
            names = pq.read_schema(f).names
            missing = [c for c in columns if c not in names]
            if missing:
                raise BatchalInputError(f"--data-column {missing[0]!r} is not a column of {f} (columns: {', '.join(names)})")
            t = pq.ParquetFile(f).read(columns=[id_col, *columns])
            tid = index.cast(t.column(id_col), f)
            hit = pc.is_in(tid, value_set=want)
            sub = t.filter(hit)
            found.append(pa.table({"__id": tid.filter(hit), **{c: sub.column(c) for c in columns}}))
        if not found:
            raise BatchalInputError("--data-column needs a Parquet pool; this campaign's pool has no Parquet files")
        t = pa.concat_tables(found)
        pos = pc.index_in(want, value_set=t.column("__id").combine_chunks())
        if pos.null_count:
            raise BatchalInputError(f"--data-column: {pos.null_count} items of the batch are not in the pool files "
                                    "(items added from a .npy carry no data columns)")
        return {c: t.column(c).take(pos).to_pylist() for c in columns}

    def labels(self) -> pa.Table:
        """The labeled set: ``id``, ``label`` (multi-label ``a|b``), ``round``."""
        with self._store.read() as conn:
            rows = conn.execute("SELECT item_id, label, round FROM labels ORDER BY round, row").fetchall()
            kind = self._meta(conn, "id_kind")
        ids = [r[0] for r in rows]
        return pa.table({"id": pa.array(ids, type=pa.int64() if kind == "int" else pa.large_string()),
                         "label": pa.array([r[1] for r in rows], type=pa.large_string()),
                         "round": pa.array([r[2] for r in rows], type=pa.int64())})

    def write_labels(self, out) -> Path:
        """Write the labeled set as ``.csv`` or ``.parquet``."""
        from ..io import atomic_write

        out = Path(out)
        t = self.labels()
        if out.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            atomic_write(out, lambda tmp: pq.write_table(t, tmp))
        elif out.suffix.lower() == ".csv":
            import pyarrow.csv as pacsv

            atomic_write(out, lambda tmp: pacsv.write_csv(t, tmp))
        else:
            raise BatchalInputError(f"--out {out.name}: use .csv or .parquet")
        return out

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """Pool size, labeled, pending, available; per round: selected, labeled, open, label counts."""
        with self._store.read() as conn:
            n = self._meta(conn, "n_items")
            rounds = []
            per = {r: (s, ret, lab) for r, s, ret, lab in conn.execute(
                "SELECT b.round, count(*), sum(b.returned), count(l.row) FROM batch_items b LEFT JOIN labels l "
                "ON l.row=b.row AND l.round=b.round GROUP BY b.round")}
            dist: dict = {}
            for r, lab, c in conn.execute("SELECT round, label, count(*) FROM labels GROUP BY round, label"):
                dist.setdefault(r, {})[lab] = c
            for r, status, k, strat, opened, closed, reason in conn.execute(
                    "SELECT round, status, batch_size, strategy, opened_at, closed_at, close_reason FROM rounds "
                    "ORDER BY round"):
                s, ret, lab = per.get(r, (0, 0, 0))
                rounds.append(dict(round=r, selected=s, labeled=lab, pending=s - ret - lab if status == "open" else 0,
                                   returned=ret, open=status == "open", strategy=strat, opened_at=opened,
                                   closed_at=closed, close_reason=reason,
                                   labels=dict(sorted(dist.get(r, {}).items(), key=lambda kv: -kv[1]))))
            labeled = conn.execute("SELECT count(*) FROM labels").fetchone()[0]
            cl = conn.execute("SELECT params, threshold, report FROM clustering ORDER BY gen DESC LIMIT 1").fetchone()
            shards = conn.execute("SELECT count(*) FROM shards").fetchone()[0]
            info = dict(campaign=str(self.path), campaign_id=self._meta(conn, "campaign_id"),
                        classes=self._meta(conn, "classes"))
        pending = sum(x["pending"] for x in rounds)
        clustering = None
        if cl is not None:
            rep = json.loads(cl[2])
            clustering = dict(params=json.loads(cl[0]), threshold=cl[1], n_clusters=rep.get("n_clusters"),
                              singleton_share=rep.get("singleton_share"))
        return dict(info, pool=n, labeled=labeled, pending=pending, available=n - labeled - pending,
                    shards=shards, clustering=clustering, rounds=rounds)

    # ------------------------------------------------------------------ add
    def add(self, pool, *, id_column: str | None = None, embedding_column: str | None = None, ids=None) -> dict:
        """Append new items; each joins its nearest clustered neighbour's cluster (no re-clustering).

        A new item whose nearest neighbour is farther than the clustering's
        threshold gets a new singleton cluster. Adding the same pool again is a
        no-op. Returns a report: how many were added, joined, made singletons,
        and the distances to their neighbours.
        """
        with self._store.write("add") as conn:
            id_col = id_column or self._meta(conn, "id_column")
            emb_col = embedding_column or self._meta(conn, "embedding_column")
            index = self._index(conn)
            dim = self._meta(conn, "dim")
            pf, emb_name = self._write_pool(conn, pool, id_column=id_col, embedding_column=emb_col, ids=ids, dim=dim)
            if pf.kind != index.kind:
                raise BatchalInputError(f"--pool ids are {pf.kind}s; this campaign's ids are {index.kind}s")
            clash = index.rows(pf.ids, "--pool") >= 0
            if clash.any():
                same = conn.execute("SELECT shard FROM shards WHERE content_sha256=?", (pf.content_sha256,)).fetchone()
                if same is not None and clash.all():
                    self._store.forget(conn, emb_name)
                    rep = json.loads(conn.execute("SELECT report FROM shards WHERE shard=?", same).fetchone()[0] or "{}")
                    return dict(rep, unchanged=True, shard=same[0])
                raise BatchalInputError(f"--pool has {int(clash.sum()):,} ids already in the campaign, e.g. "
                                        f"{format_ids(pf.ids.filter(pa.array(clash)).to_pylist())}")
            n_old = index.n
            rep = dict(added=pf.rows, rows_before=n_old, rows_after=n_old + pf.rows)
            clusters = self._clusters(conn)
            if clusters is not None:
                cl = conn.execute("SELECT metric, threshold FROM clustering ORDER BY gen DESC LIMIT 1").fetchone()
                metric, thr = cl
                base = self._embeddings(conn)[:clusters.shape[0]]
                new = self._store.load_npy(emb_name)
                nn, dist = nearest(base, new, metric)
                join = dist <= thr
                new_c = np.empty(pf.rows, dtype=np.int64)
                new_c[join] = clusters[nn[join]]
                n_single = int((~join).sum())
                new_c[~join] = int(clusters.max()) + 1 + np.arange(n_single)
                qs = np.quantile(dist, [0.5, 0.9, 1.0]) if pf.rows else [np.nan] * 3
                rep.update(joined=int(join.sum()), singletons=n_single, threshold=float(thr), metric=metric,
                           distance=dict(median=float(qs[0]), p90=float(qs[1]), max=float(qs[2])))
                name = self._store.write_npy(conn, "clusters", np.concatenate([np.asarray(clusters), new_c]))
                self._store.forget(conn, self._meta(conn, "clusters_file"))
                self._store.set_meta(conn, "clusters_file", name)
            self._add_shard(conn, pf, emb_name, str(Path(pool).resolve()), n_old, rep)
            self._store.set_meta(conn, "n_items", n_old + pf.rows)
            self._store.log(conn, "add", rep)
            crash_point("add:recorded")
        return rep

    # ------------------------------------------------------------------ check
    def check(self, *, hashes: bool = True) -> list[str]:
        """Verify every invariant; returns the problems found (empty when all hold).

        No item in two batches (returned items aside), every label on an item of
        its round's batch, closed rounds fully labeled or returned, at most one
        open round, counts agreeing, ids unique and matching the batches, every
        array file present with its recorded size, shape and (``hashes=True``)
        SHA-256, the database's own integrity.
        """
        problems = []
        with self._store.read() as conn:
            q = lambda sql, *a: conn.execute(sql, a).fetchall()  # noqa: E731
            ok = q("PRAGMA quick_check")
            if ok != [("ok",)]:
                problems.append(f"database integrity: {ok[:3]}")
            n = self._meta(conn, "n_items")
            dim = self._meta(conn, "dim")
            # files
            for name, kind, size, sha, shape, dtype in q("SELECT name, kind, bytes, sha256, shape, dtype FROM files"):
                p = self._store.path_of(name)
                if not p.exists():
                    problems.append(f"file {name} is missing")
                    continue
                if p.stat().st_size != size:
                    problems.append(f"file {name} has {p.stat().st_size} bytes, recorded {size}")
                    continue
                if hashes and sha256_file(p) != sha:
                    problems.append(f"file {name} does not match its recorded SHA-256")
                if name.endswith(".npy") and shape is not None:
                    a = self._store.load_npy(name)
                    if list(a.shape) != json.loads(shape) or (dtype and str(a.dtype) != dtype):
                        problems.append(f"file {name} is {a.dtype} {a.shape}, recorded {dtype} {shape}")
            if problems:
                return problems
            # shards and ids
            start = 0
            for shard, row_start, rows, ids_file, emb_file in q(
                    "SELECT shard, row_start, rows, ids_file, emb_file FROM shards ORDER BY shard"):
                if row_start != start:
                    problems.append(f"shard {shard} starts at row {row_start}, expected {start}")
                start += rows
                if len(self._read_ids(ids_file)) != rows:
                    problems.append(f"shard {shard}: ids file has the wrong number of rows")
                if self._store.load_npy(emb_file).shape != (rows, dim):
                    problems.append(f"shard {shard}: embeddings are not ({rows}, {dim})")
                src_rows = q("SELECT coalesce(sum(rows), 0) FROM pool_files WHERE shard=? AND role='pool'", shard)[0][0]
                if src_rows != rows:
                    problems.append(f"shard {shard}: manifest lists {src_rows} source rows, the shard has {rows}")
            if start != n:
                problems.append(f"shards hold {start} rows; the campaign records {n}")
            index = self._index(conn)
            dup = first_duplicates(index.ids)
            if dup:
                problems.append(f"duplicate ids: {format_ids(dup)}")
            clusters = self._clusters(conn)
            if clusters is not None and clusters.shape != (n,):
                problems.append(f"cluster ids cover {clusters.shape[0]} rows, the pool has {n}")
            # rounds and batches
            opened = q("SELECT round FROM rounds WHERE status='open'")
            if len(opened) > 1:
                problems.append(f"{len(opened)} rounds are open")
            twice = q("SELECT row, count(*) FROM batch_items WHERE returned=0 GROUP BY row HAVING count(*) > 1 LIMIT 5")
            if twice:
                problems.append(f"items in two batches: rows {[r for r, _ in twice]}")
            for r, k, status, scores_file in q("SELECT round, batch_size, status, scores_file FROM rounds"):
                got = q("SELECT count(*), min(pos), max(pos) FROM batch_items WHERE round=?", r)[0]
                if got[0] != k or (k and (got[1], got[2]) != (0, k - 1)):
                    problems.append(f"round {r}: {got[0]} items recorded for a batch of {k}")
                if status == "open" and q("SELECT count(*) FROM batch_items WHERE round=? AND returned=1", r)[0][0]:
                    problems.append(f"round {r} is open but has returned items")
                if status == "closed":
                    waiting = q("SELECT count(*) FROM batch_items b WHERE round=? AND returned=0 AND NOT EXISTS "
                                "(SELECT 1 FROM labels l WHERE l.row=b.row)", r)[0][0]
                    if waiting:
                        problems.append(f"round {r} is closed but {waiting} of its items are neither labeled nor returned")
                if scores_file is not None:
                    s = self._store.load_npy(scores_file)
                    got = q("SELECT row, score FROM batch_items WHERE round=?", r)
                    rr = np.array([x[0] for x in got], dtype=np.int64)
                    sc = np.array([np.nan if x[1] is None else x[1] for x in got], dtype=np.float32)
                    if rr.size and (rr.max() >= s.shape[0] or not np.allclose(s[rr], sc, equal_nan=True)):
                        problems.append(f"round {r}: batch scores disagree with its scores file")
            rows_items = q("SELECT row, item_id FROM batch_items")
            if rows_items:
                rr = np.array([x[0] for x in rows_items], dtype=np.int64)
                if rr.min() < 0 or rr.max() >= n:
                    problems.append("batch items point outside the pool")
                elif index.take(rr) != [x[1] for x in rows_items]:
                    problems.append("batch items' ids disagree with the pool's ids")
            orphan = q("SELECT l.item_id, l.round FROM labels l LEFT JOIN batch_items b ON b.row=l.row AND "
                       "b.round=l.round AND b.returned=0 WHERE b.row IS NULL LIMIT 5")
            if orphan:
                problems.append(f"labels on items not in their round's batch: {orphan}")
            mism = q("SELECT count(*) FROM labels l JOIN batch_items b ON b.row=l.row AND b.round=l.round "
                     "WHERE b.item_id IS NOT l.item_id")[0][0]
            if mism:
                problems.append(f"{mism} labels carry an id other than their item's")
            imported = q("SELECT coalesce(sum(n_new), 0) FROM imports")[0][0]
            labeled = q("SELECT count(*) FROM labels")[0][0]
            if imported != labeled:
                problems.append(f"{labeled} labels recorded but the imports account for {imported}")
        return problems


def _top_labels(array, idx: np.ndarray, kind: str, multilabel: bool, classes) -> list:
    """The model's answer for each selected row, as a label: top class, or every class with p >= 0.5."""
    from .pool import canonical_label

    from ..topk import TopK

    if isinstance(array, TopK):
        # top-k rows: the first entry (multi-class), or the listed classes with p >= 0.5 (multi-label: classes
        # left out of the k nearest 0.5 are unknown, so a confident positive may be missing from the pre-annotation)
        t = array.take(idx)
        names = np.array(classes if classes else [str(i) for i in range(int(t.classes.max()) + 1)], dtype=object)
        if not multilabel:
            return names[t.classes[:, 0]].tolist()
        pos = t.probs >= 0.5
        out = [None] * t.n
        for i in np.flatnonzero(pos.any(axis=1)).tolist():  # rows with no listed positive stay None
            out[i] = canonical_label(names[t.classes[i][pos[i]]].tolist())
        return out
    A = np.asarray(array[idx], dtype=np.float64)
    names = np.array(classes if classes else [str(i) for i in range(A.shape[1])], dtype=object)
    if not multilabel:
        return names[A.argmax(axis=1)].tolist()
    P = A if kind == "probs" else 1.0 / (1.0 + np.exp(-np.clip(A, -500, 500)))
    return [canonical_label(names[row >= 0.5].tolist()) or None for row in P]


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

