"""``campaign export`` and ``campaign labels``: a round's batch and the labeled set, out to files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from .._validation import BatchalInputError, check_count
from .pool import format_ids

__all__ = ["batch", "export", "labels", "write_labels"]


def batch(campaign, round: int, *, labels: bool = True) -> dict:
    """The recorded batch of a round: ids, scores, predictions, whether returned, labels (if asked)."""
    check_count(round, "round", 0)
    with campaign._store.read() as conn:
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
        meta = dict(campaign_id=campaign._meta(conn, "campaign_id"), id_column=campaign._meta(conn, "id_column"))
    return dict(round=round, ids=[r[0] for r in rows], scores=[r[1] for r in rows],
                predictions=[r[2] for r in rows], returned=[bool(r[3]) for r in rows],
                labels=[r[4] for r in rows], **meta)

def export(campaign, round: int, out, *, format: str | None = None, data_columns=(), tasks_per_file: int | None = None,
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
    b = batch(campaign, round, labels=False)
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
    data = _data_columns(campaign, b["ids"], list(data_columns)) if data_columns else {}
    tasks = make_tasks(b["ids"], [round] * len(b["ids"]), b["scores"], b["predictions"],
                       campaign_id=b["campaign_id"], id_key=b["id_column"], data=data, from_name=from_name,
                       to_name=to_name or (data_columns[0] if data_columns else "image"))
    return write_tasks(tasks, out, tasks_per_file or TASKS_PER_FILE)

def _data_columns(campaign, ids: list, columns: list) -> dict:
    """Values of ``columns`` for ``ids``, read from the pool's Parquet files."""
    import pyarrow.compute as pc

    with campaign._store.read() as conn:
        src = _pool_source(campaign, conn)
    want = src[2].cast(pa.array(ids), "batch")
    t = _pool_columns(src, columns, "--data-column", want)
    pos = pc.index_in(want, value_set=t.column("__id").combine_chunks())
    if pos.null_count:
        raise BatchalInputError(f"--data-column: {pos.null_count} items of the batch are not in the pool files "
                                "(items added from a .npy carry no data columns)")
    return {c: t.column(c).take(pos).to_pylist() for c in columns}


def _pool_source(campaign, conn) -> tuple:
    """``(pool files, id column, id index)``: where a campaign's pool columns are read from."""
    files = [r[0] for r in conn.execute("SELECT path FROM pool_files WHERE role='pool' ORDER BY shard, seq")]
    return files, campaign._meta(conn, "id_column"), campaign._index(conn)


def _pool_columns(source: tuple, columns: list, what: str, want=None) -> pa.Table:
    """``__id`` and ``columns`` from the pool's Parquet files (rows whose id is in ``want``, when given)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files, id_col, index = source
    found = []
    for f in files:
        if not f.endswith(".parquet"):
            continue
        if not Path(f).exists():
            raise BatchalInputError(f"{what}: the pool file {f} is gone; it holds the pool's columns")
        names = pq.read_schema(f).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise BatchalInputError(f"{what} {missing[0]!r} is not a column of the campaign's pool {f} "
                                    f"(columns: {', '.join(names)})")
        t = pq.ParquetFile(f).read(columns=[id_col, *columns])
        tid = index.cast(t.column(id_col), f)
        if want is not None:
            hit = pc.is_in(tid, value_set=want)
            t, tid = t.filter(hit), tid.filter(hit)
        found.append(pa.table({"__id": tid, **{c: t.column(c) for c in columns}}))
    if not found:
        raise BatchalInputError(f"{what} needs a Parquet pool; this campaign's pool has no Parquet files")
    return pa.concat_tables(found)


class PoolColumns:
    """The columns of a campaign's Parquet pool, one value per campaign row, read one column when asked.

    Mapping-like (``column_names``, ``[name]``), as :class:`batchal.Pool`'s
    ``metadata`` takes it: ``balance_by=COLUMN`` and a selection config's
    ``[filters]`` read a campaign's own pool columns (a source, a camera, a language).

    Parameters
    ----------
    campaign : Campaign
    conn : sqlite3.Connection
        The command's connection (read once, here).
    what : str
        Named in errors (the option or key asking for a column).
    """

    def __init__(self, campaign, conn, what: str = "balance_by"):
        import pyarrow.parquet as pq

        self.what = what
        self.source = _pool_source(campaign, conn)
        parquet = [f for f in self.source[0] if f.endswith(".parquet") and Path(f).exists()]
        skip = {self.source[1], campaign._meta(conn, "embedding_column")}
        self.column_names = [c for c in (pq.read_schema(parquet[0]).names if parquet else []) if c not in skip]

    def __getitem__(self, column: str) -> np.ndarray:
        import pyarrow.compute as pc

        t = _pool_columns(self.source, [column], self.what)
        pos = pc.index_in(self.source[2].ids, value_set=t.column("__id").combine_chunks())
        if pos.null_count:
            raise BatchalInputError(f"{self.what}={column}: {pos.null_count:,} items of the campaign are not in its "
                                    "Parquet pool files (items added from a .npy carry no columns)")
        return t.column(column).combine_chunks().take(pos).to_numpy(zero_copy_only=False)


def labels(campaign, *, propagated: bool = True) -> pa.Table:
    """The labeled set: ``id``, ``label`` (multi-label ``a|b``), ``round``, ``propagated``.

    Bought labels first (``propagated`` false), then, with ``propagated=True``, the
    labels copied from near-duplicate representatives (``propagated`` true; their
    ``round`` is the round of the label they copy), so a training set can take
    or leave them.
    """
    from .store import has_table

    with campaign._store.read() as conn:
        rows = conn.execute("SELECT item_id, label, round, 0 FROM labels ORDER BY round, row").fetchall()
        if propagated and has_table(conn, "propagated"):
            rows += conn.execute("SELECT item_id, label, round, 1 FROM propagated ORDER BY round, row").fetchall()
        kind = campaign._meta(conn, "id_kind")
    ids = [r[0] for r in rows]
    return pa.table({"id": pa.array(ids, type=pa.int64() if kind == "int" else pa.large_string()),
                     "label": pa.array([r[1] for r in rows], type=pa.large_string()),
                     "round": pa.array([r[2] for r in rows], type=pa.int64()),
                     "propagated": pa.array([bool(r[3]) for r in rows], type=pa.bool_())})

def write_labels(campaign, out, *, propagated: bool = True) -> Path:
    """Write the labeled set (:func:`labels`) as ``.csv`` or ``.parquet``."""
    from ..io import atomic_write

    out = Path(out)
    t = labels(campaign, propagated=propagated)
    if out.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        atomic_write(out, lambda tmp: pq.write_table(t, tmp))
    elif out.suffix.lower() == ".csv":
        import pyarrow.csv as pacsv

        atomic_write(out, lambda tmp: pacsv.write_csv(t, tmp))
    else:
        raise BatchalInputError(f"--out {out.name}: use .csv or .parquet")
    return out
