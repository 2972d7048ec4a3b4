"""``campaign metric``: the team's own per-round measurements (validation accuracy, mAP, cost ...).

Stored in the ``metrics`` table, one value per (round, name); recording a value
again for the same round and name replaces it (a corrected measurement). Every
row is checked before anything is written: the round exists, the name is a
non-empty text, the value is a finite number.
"""
from __future__ import annotations

import math
from pathlib import Path

from .._validation import BatchalInputError
from .store import now

__all__ = ["record_metrics", "read_metric_csv", "metrics"]


def read_metric_csv(path) -> list[tuple]:
    """``(round, name, value)`` rows of a CSV with the header ``round,name,value``."""
    import csv

    p = Path(path)
    if not p.is_file():
        raise BatchalInputError(f"--csv: no such file {p}")
    with open(p, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"round", "name", "value"} <= {f.strip() for f in reader.fieldnames}:
            raise BatchalInputError(f"--csv {p.name}: needs the header round,name,value; got {reader.fieldnames}")
        rows = []
        for i, rec in enumerate(reader, start=2):
            rec = {k.strip(): (v or "").strip() for k, v in rec.items() if k is not None}
            try:
                rnd = int(rec["round"])
            except ValueError:
                raise BatchalInputError(f"--csv {p.name}, line {i}: round {rec['round']!r} is not an integer") from None
            try:
                val = float(rec["value"])
            except ValueError:
                raise BatchalInputError(f"--csv {p.name}, line {i}: value {rec['value']!r} is not a number") from None
            rows.append((rnd, rec["name"], val))
    if not rows:
        raise BatchalInputError(f"--csv {p.name} holds no rows")
    return rows


def record_metrics(campaign, rows) -> dict:
    """Record ``(round, name, value)`` rows in one transaction; nothing is written unless all are valid.

    Returns
    -------
    dict : ``new`` and ``replaced`` counts, ``same`` (already recorded with that value).
    """
    rows = [(r, n, v) for r, n, v in rows]
    if not rows:
        raise BatchalInputError("no metric to record")
    for r, name, value in rows:
        if isinstance(r, bool) or not isinstance(r, int):
            raise BatchalInputError(f"metric round must be an integer; got {r!r}")
        if not isinstance(name, str) or not name.strip():
            raise BatchalInputError(f"metric name must be a non-empty text; got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BatchalInputError(f"metric {name!r} of round {r}: the value must be a finite number; got {value!r}")
    out = dict(new=0, replaced=0, same=0)
    with campaign._store.write("metric") as conn:
        known = {x[0] for x in conn.execute("SELECT round FROM rounds")}
        missing = sorted({r for r, _, _ in rows} - known)
        if missing:
            raise BatchalInputError(f"no round {missing[0]} in {campaign.path} (rounds: "
                                    f"{', '.join(map(str, sorted(known))) if known else 'none yet'}); "
                                    "a metric belongs to a round that was selected")
        for r, name, value in rows:
            old = conn.execute("SELECT value FROM metrics WHERE round=? AND name=?", (r, name.strip())).fetchone()
            key = "new" if old is None else ("same" if old[0] == float(value) else "replaced")
            out[key] += 1
            conn.execute("INSERT INTO metrics(round, name, value, recorded_at) VALUES (?,?,?,?) "
                         "ON CONFLICT(round, name) DO UPDATE SET value=excluded.value, recorded_at=excluded.recorded_at",
                         (r, name.strip(), float(value), now()))
        if out["new"] or out["replaced"]:
            campaign._store.log(conn, "metric", dict(rows=len(rows), **out))
    return out


def metrics(conn) -> dict:
    """``{round: {name: value}}`` of every recorded metric."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name='metrics'").fetchone() is None:
        return {}  # a campaign made before metrics existed, not written since
    out: dict = {}
    for r, name, value in conn.execute("SELECT round, name, value FROM metrics ORDER BY round, name"):
        out.setdefault(r, {})[name] = value
    return out
