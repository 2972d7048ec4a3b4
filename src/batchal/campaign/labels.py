"""Labels in, in every format a campaign reads: ``id,label`` CSV, Parquet, a Label Studio JSON export.

One place parses labels, so the pool reader (:mod:`.pool`) and the Label Studio
round trip (:mod:`.labelstudio`, which writes tasks) both depend on it and not on
each other. Rules for a Label Studio export (in order): cancelled annotations
(``was_cancelled``) and annotations without a ``choices`` result are skipped; if
annotations marked ``ground_truth`` remain, they decide; otherwise the label most
annotations agree on wins; a tie is a conflict, reported as an error naming the
ids. A task with no usable annotation is not labeled (counted as skipped).
Several ``choices`` in one annotation make a multi-label label ``a|b``.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .._validation import BatchalInputError
from .pool import format_ids, read_parquet
from ..io import sha256_file

__all__ = ["canonical_label", "LabelFile", "read_labels", "read_export", "CAMPAIGN_KEY", "ROUND_KEY"]

#: The keys under a Label Studio task's ``data`` that carry the campaign and the round
CAMPAIGN_KEY = "batchal_campaign"
ROUND_KEY = "batchal_round"


def canonical_label(value) -> str:
    """One label as text: a class name, or several (multi-label) sorted and joined by ``|``."""
    if isinstance(value, (list, tuple)):
        parts = [str(v).strip() for v in value]
    else:
        parts = [s.strip() for s in str(value).split("|")]
    parts = sorted(set(x for x in parts if x))
    return "|".join(parts)


@dataclass
class LabelFile:
    """Labels read from a file: ids (pyarrow), one canonical label each; what was skipped and why."""

    ids: pa.Array
    labels: list
    format: str
    sha256: str
    skipped: dict = field(default_factory=dict)
    campaigns: set = field(default_factory=set)  # campaign ids named in a Label Studio export


def read_labels(path, *, id_column: str = "id", label_column: str = "label", fmt: str | None = None) -> LabelFile:
    """Read ``id,label`` CSV, Parquet, or a Label Studio JSON export (see :func:`read_export`)."""
    p = Path(path)
    if not p.exists():
        raise BatchalInputError(f"labels: no such file {p}")
    suffix = p.suffix.lower()
    fmt = fmt or {".csv": "csv", ".parquet": "parquet", ".json": "labelstudio"}.get(suffix)
    if fmt is None:
        raise BatchalInputError(f"labels file {p.name}: use .csv (id,label), .parquet or a Label Studio .json export")
    sha = sha256_file(p)
    if fmt == "labelstudio":
        return read_export(p, id_key=id_column, sha256=sha)
    if fmt == "csv":
        import pyarrow.csv as pacsv

        try:
            # every column as text: an id like 007 must stay 007 in a campaign of string ids
            table = pacsv.read_csv(p, convert_options=pacsv.ConvertOptions(
                column_types={id_column: pa.large_string(), label_column: pa.large_string()},
                strings_can_be_null=False))
        except pa.ArrowInvalid as exc:
            raise BatchalInputError(f"labels {p.name}: cannot read the CSV: {exc}") from exc
    elif fmt == "parquet":
        try:
            table = read_parquet(p)
        except Exception as exc:
            raise BatchalInputError(f"labels {p.name}: cannot read {p}: {exc}") from exc
    else:
        raise BatchalInputError(f"unknown labels format {fmt!r}; use csv, parquet or labelstudio")
    for c in (id_column, label_column):
        if c not in table.column_names:
            raise BatchalInputError(f"labels {p.name} has no column {c!r} (columns: {', '.join(table.column_names)}); "
                                    "name them with --id-column / --label-column")
    ids = table.column(id_column).combine_chunks()
    if ids.null_count:
        raise BatchalInputError(f"labels {p.name}: {ids.null_count} rows have no id")
    lab = table.column(label_column).combine_chunks()
    t = lab.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        labels = [canonical_label(v) if v is not None else "" for v in lab.to_pylist()]
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t):
        raw = lab.cast(pa.large_string())
        if pc.any(pc.match_substring(raw.fill_null(""), "|")).as_py():
            labels = [canonical_label(v) if v is not None else "" for v in raw.to_pylist()]
        else:
            labels = pc.utf8_trim_whitespace(raw.fill_null("")).to_pylist()
    else:
        raise BatchalInputError(f"labels {p.name}: column {label_column!r} must hold text (or a list of texts); got {t}")
    empty = [i for i, v in enumerate(labels) if not v]
    if empty:
        raise BatchalInputError(f"labels {p.name}: {len(empty):,} rows have an empty label, e.g. id "
                                f"{ids[empty[0]].as_py()!r}")
    return LabelFile(ids=ids, labels=labels, format=fmt, sha256=sha)


def _annotation_label(ann: dict) -> str:
    choices = []
    for res in ann.get("result") or []:
        if res.get("type") == "choices":
            choices.extend((res.get("value") or {}).get("choices") or [])
    return canonical_label(choices) if choices else ""


def read_export(path, *, id_key: str = "id", sha256: str = "") -> LabelFile:
    """Labels from a Label Studio JSON export (a list of tasks with ``data`` and ``annotations``)."""
    p = Path(path)
    try:
        with open(p) as fh:
            tasks = json.load(fh)
    except (OSError, ValueError) as exc:
        raise BatchalInputError(f"labels {p.name}: not a JSON file: {exc}") from exc
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
        raise BatchalInputError(f"labels {p.name}: expected a Label Studio JSON export, a list of tasks with "
                                "'data' and 'annotations'")
    ids, labels, conflicts, campaigns = [], [], [], set()
    skipped = Counter()
    for t in tasks:
        d = t["data"]
        if id_key not in d:
            raise BatchalInputError(f"labels {p.name}: task {t.get('id')} has no {id_key!r} in its data "
                                    "(tasks must come from `batchal campaign export --format labelstudio`)")
        if CAMPAIGN_KEY in d:
            campaigns.add(d[CAMPAIGN_KEY])
        votes, truth = [], []
        for ann in t.get("annotations") or []:
            if ann.get("was_cancelled"):
                skipped["cancelled annotations"] += 1
                continue
            lab = _annotation_label(ann)
            if not lab:
                skipped["annotations without a choice"] += 1
                continue
            votes.append(lab)
            if ann.get("ground_truth"):
                truth.append(lab)
        pool = truth or votes
        if not pool:
            skipped["tasks without a usable annotation"] += 1
            continue
        ranked = Counter(pool).most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            conflicts.append((d[id_key], [lab for lab, _ in ranked]))
            continue
        ids.append(d[id_key])
        labels.append(ranked[0][0])
    if conflicts:
        ex = "; ".join(f"id {i!r}: {' vs '.join(map(repr, labs))}" for i, labs in conflicts[:3])
        raise BatchalInputError(f"labels {p.name}: {len(conflicts):,} tasks have annotations that disagree with no "
                                f"majority and no ground truth ({ex}); resolve them in Label Studio (e.g. mark one "
                                "annotation as ground truth) and export again")
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        arr = pa.array(ids, type=pa.int64())
    elif all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids):
        arr = pa.array([str(i) for i in ids], type=pa.large_string())
    else:
        bad = [i for i in ids if not isinstance(i, (str, int)) or isinstance(i, bool)]
        raise BatchalInputError(f"labels {p.name}: ids must be integers or strings; got {format_ids(bad)}")
    return LabelFile(ids=arr, labels=labels, format="labelstudio", sha256=sha256, skipped=dict(skipped),
                     campaigns=campaigns)
