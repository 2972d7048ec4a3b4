"""``campaign label``: record labels and close rounds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from .._validation import BatchalInputError
from .labels import read_labels
from .pool import format_ids
from .store import crash_point, now

__all__ = ["label"]


def label(campaign, labels=None, *, close: bool = False, id_column: str | None = None,
          label_column: str = "label", format: str | None = None, propagate: bool = False) -> dict:
    """Record labels; a round closes when all its items are labeled, or on ``close=True``.

    Parameters
    ----------
    labels : path, optional
        CSV (``id,label``; multi-label ``a|b``), Parquet (id and label
        columns; a list column for multi-label) or a Label Studio JSON export.
    close : bool
        Close the open round after recording: its unlabeled items return to the pool.
    propagate : bool
        Then copy each near-duplicate group's bought label (:meth:`Campaign.dedup`;
        its representative's, else its earliest-bought member's) to the members
        that have no label and are not pending. They are recorded apart, as propagated: never counted as
        bought labels (``labeled`` in status), listed by ``labels()`` with
        ``propagated`` true, kept out of later batches, and undone with the round
        of the label they copy (:meth:`Campaign.undo`). In the same transaction
        as the labels, so a kill leaves both or neither.

    Rules: every id must belong to the campaign and to the open round's batch,
    or already carry the same label (importing the same file again is a
    no-op); an id with two different labels, in the file or against the
    recorded label, is an error; an export of another campaign is refused.
    Nothing is recorded unless everything checks.

    Returns
    -------
    dict : counts (``new``, ``same``, ``skipped``, ``propagated``) and the rounds closed.
    """
    if labels is None and not close and not propagate:
        raise BatchalInputError("give a labels file, --close to close the open round, or --propagate")
    with campaign._store.read() as conn:
        id_col = id_column or campaign._meta(conn, "id_column")
    lf = read_labels(labels, id_column=id_col, label_column=label_column, fmt=format) if labels is not None else None
    with campaign._store.write("label") as conn:
        result = dict(new=0, same=0, skipped=dict(lf.skipped) if lf else {}, closed=[], returned=0, propagated=0)
        if lf is not None:
            _record_labels(campaign, conn, lf, Path(labels), result)
        if propagate:
            result["propagated"] = _propagate(campaign, conn)
            crash_point("label:propagated")
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
        if result["new"] or result["closed"] or result["propagated"]:
            campaign._store.log(conn, "label", dict(source=str(labels), new=result["new"], same=result["same"],
                                                    closed=result["closed"], returned=result["returned"],
                                                    propagated=result["propagated"]))
        crash_point("label:recorded")
    return result

def _record_labels(campaign, conn, lf, path: Path, result: dict) -> None:
    cid = campaign._meta(conn, "campaign_id")
    other = {c for c in lf.campaigns if c != cid}
    if other:
        raise BatchalInputError(f"labels {path.name} come from another campaign ({format_ids(sorted(other))}); "
                                f"this campaign is {cid!r}")
    if not lf.labels:
        return
    index = campaign._index(conn)
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
    classes = campaign._meta(conn, "classes")
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


def _propagate(campaign, conn) -> int:
    """Copy each group's bought label to its unlabeled, unpending members; returns how many.

    A group's label is its representative's when bought, else its earliest-bought member's (lowest
    round, then row): a batch that took any member of a group labels the group, whether or not it kept
    non-representatives out, as ``batchal simulate --propagate`` replays it (there the first member in
    batch order is the source; members of a group within the threshold almost always agree).
    """
    from .deduplicating import representatives

    gen, rep = representatives(campaign, conn, "--propagate")
    m = rep.shape[0]
    label_of = np.full(m, None, dtype=object)
    round_of = np.zeros(m, dtype=np.int64)
    taken = np.zeros(m, dtype=bool)  # labeled, propagated or pending: nothing to propagate to
    for row, lab, r in conn.execute("SELECT row, label, round FROM labels WHERE row < ?", (m,)):
        label_of[row], round_of[row] = lab, r
        taken[row] = True
    bought = np.flatnonzero(taken)
    for (row,) in conn.execute("SELECT row FROM propagated WHERE row < ? UNION ALL SELECT row FROM batch_items "
                               "WHERE returned=0 AND row < ?", (m, m)):
        taken[row] = True
    # each group's source: the representative if bought, else the earliest-bought member
    order = np.lexsort((bought, round_of[bought], rep[bought] != bought))
    first = np.unique(rep[bought[order]], return_index=True)
    source = np.full(m, -1, dtype=np.int64)
    source[first[0]] = bought[order][first[1]]
    rows = np.flatnonzero(~taken & (source[rep] >= 0))
    if not rows.size:
        return 0
    src = source[rep[rows]]
    at = now()
    conn.executemany("INSERT INTO propagated(row, item_id, round, label, source_row, dedup_gen, at) "
                     "VALUES (?,?,?,?,?,?,?)",
                     zip(rows.tolist(), campaign._index(conn).take(rows), round_of[src].tolist(),
                         label_of[src].tolist(), src.tolist(), [gen] * rows.size, [at] * rows.size))
    return int(rows.size)
