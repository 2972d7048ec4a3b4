"""Label Studio round trip: batches out as import tasks (its JSON export is read by :mod:`.labels`).

Tasks (Label Studio's import format)::

    {"data": {"id": <item id>, "<data column>": ..., "batchal_campaign": "<uuid>", "batchal_round": 3},
     "predictions": [{"model_version": "round-3", "score": <margin>,
                      "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                  "value": {"choices": ["cat"]}}]}]}

Label Studio gives tasks its own ids, so the item id travels inside ``data``, and the
campaign's uuid with it: an export of another campaign is recognised and refused.

Reading an export: :func:`batchal.campaign.labels.read_export` (its rules are there).
"""
from __future__ import annotations

import json
from pathlib import Path


from .._validation import BatchalInputError
from ..io import atomic_write
# every labels format, this export included, is parsed in .labels; read_export is named here for the round trip
from .labels import CAMPAIGN_KEY, ROUND_KEY, read_export

__all__ = ["make_tasks", "write_tasks", "read_export", "TASKS_PER_FILE", "CAMPAIGN_KEY", "ROUND_KEY"]

#: Label Studio's guidance: about 100K tasks per project and per import.
TASKS_PER_FILE = 100_000


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
