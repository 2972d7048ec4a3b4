"""Label Studio round trip: batches out as import tasks, labels back from its JSON export.

Tasks (Label Studio's import format)::

    {"data": {"id": <item id>, "<data column>": ..., "batchal_campaign": "<uuid>", "batchal_round": 3},
     "predictions": [{"model_version": "round-3", "score": <margin>,
                      "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                  "value": {"choices": ["cat"]}}]}]}

Label Studio gives tasks its own ids, so the item id travels inside ``data``, and the
campaign's uuid with it: an export of another campaign is recognised and refused.

Reading an export (rules, in order): cancelled annotations (``was_cancelled``) and
annotations without a ``choices`` result are skipped; if annotations marked
``ground_truth`` remain, they decide; otherwise the label most annotations agree on
wins; a tie is a conflict, reported as an error naming the ids (resolve it in Label
Studio, e.g. by marking one annotation as ground truth). A task with no usable
annotation is not labeled (counted as skipped). Several ``choices`` in one annotation
make a multi-label label ``a|b``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from .._validation import BatchalInputError
from ..io import atomic_write
from .pool import LabelFile, canonical_label, format_ids

__all__ = ["make_tasks", "write_tasks", "read_export", "TASKS_PER_FILE", "CAMPAIGN_KEY", "ROUND_KEY"]

#: Label Studio's guidance: about 100K tasks per project and per import.
TASKS_PER_FILE = 100_000
CAMPAIGN_KEY = "batchal_campaign"
ROUND_KEY = "batchal_round"


def make_tasks(ids, rounds, scores, preds, *, campaign_id: str, id_key: str = "id", data: dict | None = None,
               from_name: str = "label", to_name: str = "image") -> list[dict]:
    """Label Studio tasks, one per item; a pre-annotation where the model gave a prediction."""
    data = data or {}
    tasks = []
    cols = list(data.items())
    for i, (item, r, s, pred) in enumerate(zip(ids, rounds, scores, preds)):
        d = {id_key: item}
        for c, values in cols:
            d[c] = values[i]
        d[CAMPAIGN_KEY] = campaign_id
        d[ROUND_KEY] = r
        task = {"data": d, "predictions": []}
        if pred:
            task["predictions"].append({
                "model_version": f"round-{r}",
                "score": None if s is None else round(float(s), 6),
                "result": [{"from_name": from_name, "to_name": to_name, "type": "choices",
                            "value": {"choices": pred.split("|")}}],
            })
        tasks.append(task)
    return tasks


def write_tasks(tasks: list[dict], out, tasks_per_file: int = TASKS_PER_FILE) -> list[Path]:
    """Write tasks as JSON; more than ``tasks_per_file`` go to ``STEM-001.json``, ``STEM-002.json``, ..."""
    out = Path(out)
    if tasks_per_file < 1:
        raise BatchalInputError(f"tasks per file must be positive; got {tasks_per_file}")
    if len(tasks) <= tasks_per_file:
        parts = [(out, tasks)]
    else:
        n_parts = -(-len(tasks) // tasks_per_file)
        parts = [(out.with_name(f"{out.stem}-{j + 1:03d}{out.suffix or '.json'}"),
                  tasks[j * tasks_per_file:(j + 1) * tasks_per_file]) for j in range(n_parts)]
    for path, chunk in parts:
        def _w(tmp, chunk=chunk):
            with open(tmp, "w") as fh:
                json.dump(chunk, fh, separators=(",", ":"))
        atomic_write(path, _w)
    return [p for p, _ in parts]


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
