"""``campaign check``: verify every invariant of a campaign directory.
"""
from __future__ import annotations

import json

import numpy as np

from .pool import first_duplicates, format_ids
from ..io import sha256_file

__all__ = ["check"]


def check(campaign, *, hashes: bool = True) -> list[str]:
    """Verify every invariant; returns the problems found (empty when all hold).

    No item in two batches (returned items aside), every label on an item of
    its round's batch, closed rounds fully labeled or returned, at most one
    open round, counts agreeing, ids unique and matching the batches, every
    array file present with its recorded size, shape and (``hashes=True``)
    SHA-256, the database's own integrity.
    """
    problems = []
    with campaign._store.read() as conn:
        q = lambda sql, *a: conn.execute(sql, a).fetchall()  # noqa: E731
        ok = q("PRAGMA quick_check")
        if ok != [("ok",)]:
            problems.append(f"database integrity: {ok[:3]}")
        n = campaign._meta(conn, "n_items")
        dim = campaign._meta(conn, "dim")
        # files
        for name, kind, size, sha, shape, dtype in q("SELECT name, kind, bytes, sha256, shape, dtype FROM files"):
            p = campaign._store.path_of(name)
            if not p.exists():
                problems.append(f"file {name} is missing")
                continue
            if p.stat().st_size != size:
                problems.append(f"file {name} has {p.stat().st_size} bytes, recorded {size}")
                continue
            if hashes and sha256_file(p) != sha:
                problems.append(f"file {name} does not match its recorded SHA-256")
            if name.endswith(".npy") and shape is not None:
                a = campaign._store.load_npy(name)
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
            if len(campaign._read_ids(ids_file)) != rows:
                problems.append(f"shard {shard}: ids file has the wrong number of rows")
            if campaign._store.load_npy(emb_file).shape != (rows, dim):
                problems.append(f"shard {shard}: embeddings are not ({rows}, {dim})")
            src_rows = q("SELECT coalesce(sum(rows), 0) FROM pool_files WHERE shard=? AND role='pool'", shard)[0][0]
            if src_rows != rows:
                problems.append(f"shard {shard}: manifest lists {src_rows} source rows, the shard has {rows}")
        if start != n:
            problems.append(f"shards hold {start} rows; the campaign records {n}")
        index = campaign._index(conn)
        dup = first_duplicates(index.ids)
        if dup:
            problems.append(f"duplicate ids: {format_ids(dup)}")
        clusters = campaign._clusters(conn)
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
                s = campaign._store.load_npy(scores_file)
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
        # stopping signals: every round selected with predictions since the stop set was drawn has them
        first = campaign._meta(conn, "stop_set_round")
        if first is not None:
            lacking = q("SELECT round FROM rounds r WHERE round >= ? AND predictions_sha256 IS NOT NULL AND NOT EXISTS "
                        "(SELECT 1 FROM stop_rounds s WHERE s.round=r.round)", first)
            if lacking:
                problems.append(f"rounds with predictions but no stop signals: {[x[0] for x in lacking]}")
            size = campaign._meta(conn, "stop_set_size")
            rows = campaign._store.load_npy(campaign._meta(conn, "stop_set_file"))
            if rows.shape != (size,) or (size and (rows.min() < 0 or rows.max() >= n or (np.diff(rows) <= 0).any())):
                problems.append(f"the stop set is not {size} distinct sorted rows of the pool")
        problems += _check_propagated(conn)
        imported = q("SELECT coalesce(sum(n_new), 0) FROM imports")[0][0]
        labeled = q("SELECT count(*) FROM labels")[0][0]
        if imported != labeled:
            problems.append(f"{labeled} labels recorded but the imports account for {imported}")
    return problems


def _check_propagated(conn) -> list[str]:
    """Propagated labels: on items neither bought nor pending, each copying its source's bought label and round."""
    from .store import has_table

    if not has_table(conn, "propagated"):
        return []
    q = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
    problems = []
    both = q("SELECT p.item_id FROM propagated p JOIN labels l ON l.row=p.row LIMIT 5")
    if both:
        problems.append(f"items with a bought and a propagated label: {[x[0] for x in both]}")
    pending = q("SELECT p.item_id FROM propagated p JOIN batch_items b ON b.row=p.row AND b.returned=0 LIMIT 5")
    if pending:
        problems.append(f"propagated labels on items in a batch: {[x[0] for x in pending]}")
    bad = q("SELECT p.item_id FROM propagated p LEFT JOIN labels l ON l.row=p.source_row WHERE l.row IS NULL "
            "OR l.label IS NOT p.label OR l.round IS NOT p.round LIMIT 5")
    if bad:
        problems.append(f"propagated labels that do not copy their source's bought label: {[x[0] for x in bad]}")
    return problems
