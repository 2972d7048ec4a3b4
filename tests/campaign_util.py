"""Small pools, predictions and label files for the campaign tests."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CLASSES = ["cat", "dog", "fox"]


def fsl(matrix: np.ndarray) -> pa.FixedSizeListArray:
    m = np.ascontiguousarray(matrix)
    return pa.FixedSizeListArray.from_arrays(pa.array(m.ravel()), m.shape[1])


def make_pool(path, n=600, d=8, seed=0, prefix="s", start=0, extra=True):
    """A Parquet pool with string ids, embeddings in 30 tight groups, and an image URL column."""
    r = np.random.default_rng(seed)
    centers = r.normal(size=(30, d))
    E = (centers[r.integers(0, 30, n)] + 0.05 * r.normal(size=(n, d))).astype(np.float32)
    ids = [f"{prefix}{i:05d}" for i in range(start, start + n)]
    cols = {"id": ids, "embedding": fsl(E)}
    if extra:
        cols["image"] = [f"https://example.org/img/{i}.jpg" for i in ids]
    pq.write_table(pa.table(cols), path)
    return ids, E


def make_predictions(path, ids, seed=1, C=3, kind="probs"):
    r = np.random.default_rng(seed)
    P = r.dirichlet(np.ones(C), size=len(ids)).astype(np.float32)
    A = P if kind == "probs" else np.log(P)
    pq.write_table(pa.table({"id": ids, kind: fsl(A)}), path)
    return P


def truth(item_id) -> str:
    """A deterministic 'true' label for an id."""
    return CLASSES[sum(map(ord, str(item_id))) % len(CLASSES)]


def write_label_csv(path, ids, labels=None):
    labels = labels if labels is not None else [truth(i) for i in ids]
    with open(path, "w") as fh:
        fh.write("id,label\n")
        fh.writelines(f"{i},{lab}\n" for i, lab in zip(ids, labels))


def ls_export(tasks: list, labels: dict, *, cancelled=(), extra_votes: dict | None = None) -> list:
    """What Label Studio's JSON export looks like for tasks we sent it, annotated with ``labels``."""
    out = []
    for j, t in enumerate(tasks):
        i = t["data"]["id"]
        anns = []
        if i in cancelled:
            anns.append({"id": 10 * j + 1, "was_cancelled": True, "result": []})
        if i in labels:
            for lab in [labels[i], *(extra_votes or {}).get(i, [])]:
                anns.append({"id": 10 * j + len(anns) + 2, "was_cancelled": False, "ground_truth": False,
                             "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                         "value": {"choices": lab.split("|")}}]})
        out.append({"id": 1000 + j, "data": t["data"], "annotations": anns, "predictions": []})
    return out


def write_json(path, obj):
    with open(path, "w") as fh:
        json.dump(obj, fh)
