"""``campaign init``: a new campaign directory from a pool.
"""
from __future__ import annotations

import secrets
from pathlib import Path

from .._validation import BatchalInputError
from .core import classes_arg
from .pool import read_pool
from .store import SCHEMA_VERSION, Store, now

__all__ = ["init"]


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
    names = classes_arg(classes)
    store = Store(path, lock_timeout)
    with store.write("init", create=True) as conn:
        if store.get_meta(conn, "campaign_id") is not None:
            old = conn.execute("SELECT content_sha256, source FROM shards WHERE shard=0").fetchone()
            new = read_pool(pool, id_column=id_column, embedding_column=embedding_column, ids_path=ids)
            if new.content_sha256 != old[0]:
                raise BatchalInputError(f"{path} is already a campaign (created from {old[1]}); "
                                        "add new items with `batchal campaign add`")
        else:
            campaign = cls.__new__(cls)
            campaign.path, campaign._store, campaign._ids_cache = Path(path), store, None
            pf, emb = campaign._write_pool(conn, pool, id_column=id_column, embedding_column=embedding_column, ids=ids)
            campaign._add_shard(conn, pf, emb, str(Path(pool).resolve()), 0)
            for k, v in dict(schema_version=SCHEMA_VERSION, campaign_id=secrets.token_hex(16), created_at=now(),
                             id_kind=pf.kind, id_column=id_column, embedding_column=embedding_column,
                             dim=pf.dim, n_items=pf.rows, classes=names, data_columns=pf.data_columns).items():
                store.set_meta(conn, k, v)
            store.log(conn, "init", dict(pool=str(pool), rows=pf.rows, dim=pf.dim, sha256=pf.content_sha256))
    store.close()
    return cls(path, lock_timeout=lock_timeout)
