"""A user model over the pool on Ray Data: ``map_batches`` in an actor pool, predictions back to Parquet.

The model is given as a picklable *factory*: called once per actor (so a
network is loaded once per worker, on its GPU when it has one), it returns a
callable from a (rows, ...) array batch to probabilities, or to
``(probs, embeddings)``, or to a dict with ``"probs"`` or ``"logits"`` and
optionally ``"embeddings"``.

Each unit of work is one Parquet row group of the pool; the actor reads it,
runs the model in batches of ``batch_rows`` and writes
``part-<first row>.parquet`` (the id column, a fixed-size-list ``probs`` or
``logits`` column, optionally ``embedding``). File names sort in pool order,
so the output directory is row-aligned with the pool: row ``i`` of the
predictions is row ``i`` of the pool, which is what cluster ids and labeled
indices refer to.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from ..._validation import BatchalInputError
from ._sources import RowSource, list_column_values


def _as_outputs(res, rows: int) -> dict:
    if isinstance(res, dict):
        out = {k: res[k] for k in ("probs", "logits", "embeddings") if k in res and res[k] is not None}
        if ("probs" in out) == ("logits" in out):
            raise BatchalInputError("the model must return 'probs' or 'logits' (one of them)")
    elif isinstance(res, tuple):
        if len(res) != 2:
            raise BatchalInputError("the model must return probs or (probs, embeddings)")
        out = {"probs": res[0], "embeddings": res[1]}
    else:
        out = {"probs": res}
    for k, v in list(out.items()):
        v = np.asarray(v)
        if v.ndim != 2 or v.shape[0] != rows:
            raise BatchalInputError(f"the model returned {k} of shape {v.shape} for a batch of {rows} rows")
        out[k] = v.astype(np.float32, copy=False)
    return out


def _fsl(values: np.ndarray):
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).ravel()), values.shape[1])


class _Predictor:
    """The actor: builds the model once, then predicts one row group per call."""

    def __init__(self, factory, feature_column, id_column, out_dir, batch_rows):
        self.model = factory()
        self.feature_column = feature_column
        self.id_column = id_column
        self.out_dir = out_dir
        self.batch_rows = batch_rows

    def __call__(self, batch: dict) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        paths, rows = [], []
        for f, g, start in zip(batch["file"], batch["group"], batch["start"]):
            t = pq.ParquetFile(f).read_row_group(int(g), columns=[self.id_column, self.feature_column])
            X = list_column_values(t.column(self.feature_column), f"{f}: column {self.feature_column!r}")
            parts = []
            for a in range(0, X.shape[0], self.batch_rows):
                blk = X[a:a + self.batch_rows]
                parts.append(_as_outputs(self.model(blk), blk.shape[0]))
            cols = {self.id_column: t.column(self.id_column)}
            for k in parts[0]:
                name = "embedding" if k == "embeddings" else k
                cols[name] = _fsl(np.concatenate([p[k] for p in parts]))
            path = os.path.join(self.out_dir, f"part-{int(start):014d}.parquet")
            pq.write_table(pa.table(cols), path)
            paths.append(path)
            rows.append(X.shape[0])
        return {"path": np.array(paths), "rows": np.array(rows, dtype=np.int64)}


def predict(pool, model_factory, out, *, feature_column: str = "features", id_column: str = "id",
            batch_rows: int = 4096, concurrency: int | None = None, num_gpus: float | None = None,
            progress: bool = False) -> dict:
    """Predict every pool row with a user model on Ray Data; write the predictions as Parquet.

    Parameters
    ----------
    pool : Parquet file, directory or list of files
        The pool: ``id_column`` and a list column ``feature_column`` (the model's input).
    model_factory : picklable callable
        ``model_factory()`` returns ``f(X) -> probs | (probs, embeddings) | dict``.
    out : path
        Output directory (replaced atomically): ``part-<first row>.parquet`` files.
    batch_rows : int
        Rows per model call.
    concurrency : int, optional
        Actors in the pool (default: the cluster's GPUs when it has any, else its CPUs).
    num_gpus : float, optional
        GPUs per actor (default: 1 when the cluster has GPUs, else 0).

    Returns
    -------
    dict with ``out``, ``rows`` and ``files``.
    """
    import ray

    from ._session import RaySession

    src = RowSource.open(pool, name="pool", kind=feature_column, column=feature_column, id_column=id_column)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BatchalInputError(f"--out {out} exists and is not a directory")
    gpus = RaySession.gpus()
    if num_gpus is None:
        num_gpus = 1 if gpus else 0
    if concurrency is None:
        concurrency = max(1, gpus) if num_gpus else max(1, min(RaySession.cpus(), len(src.blocks)))
    ray.data.DataContext.get_current().enable_progress_bars = progress
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        items = [{"file": b.where, "group": b.part, "start": b.start} for b in src.blocks]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _Predictor, batch_size=1, concurrency=concurrency, num_gpus=num_gpus or None,
            fn_constructor_kwargs=dict(factory=model_factory, feature_column=feature_column, id_column=id_column,
                                       out_dir=str(tmp), batch_rows=batch_rows))
        written = 0
        files = 0
        for b in ds.iter_batches(batch_size=None):
            written += int(np.sum(b["rows"]))
            files += len(b["path"])
        if written != src.n:
            raise RuntimeError(f"predicted {written} rows for a pool of {src.n}")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "rows": written, "files": files}
