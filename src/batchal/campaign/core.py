"""What every campaign command shares: the store, the id index, the pool's arrays.

:class:`CampaignCore` opens a campaign directory and reads and writes the pool's
files through its :class:`~batchal.campaign.store.Store`; the command modules
(``creating``, ``clustering``, ``selecting``, ``labeling``, ``exporting``,
``adding``, ``checking``, ``status``, ``metrics``) take one as their first
argument, and :class:`~batchal.campaign.Campaign` is this class with those
commands as its methods.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from .._validation import BatchalInputError
from .pool import IdIndex, first_duplicates, format_ids, read_pool
from .store import Store, now

__all__ = ["CampaignCore", "classes_arg", "engine_arg"]


def classes_arg(classes):
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


def engine_arg(engine):
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


class CampaignCore:
    """An open campaign directory: its store and the helpers every command uses.

    Parameters
    ----------
    path : path of the campaign directory
    lock_timeout : float, optional
        Seconds a writing command waits for another writer (default
        ``BATCHAL_LOCK_TIMEOUT`` or 30); then it raises ``CampaignBusyError``.
    """

    def __init__(self, path, *, lock_timeout: float | None = None):
        self.path = Path(path)
        self._store = Store(self.path, lock_timeout)
        if not self._store.is_initialised():
            raise BatchalInputError(f"{self.path} is not a campaign (run `batchal campaign init` first)")
        self._ids_cache = None

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
