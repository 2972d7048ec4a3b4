"""``batchal similar``: the pool's items nearest to a query set (rare-concept mining)."""
from __future__ import annotations

import re
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .._validation import BatchalInputError
from ._common import DEFAULT_SEED, QUIET_HELP, SEED_HELP, _fail, app, err, option_names


class SimilarMetric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"


class SearchMethod(str, Enum):
    auto = "auto"
    flat = "flat"
    ivf = "ivf"


def _names(msg: str) -> str:
    """Library words in the options' words (``query`` -> ``--query``, ``k = `` -> ``-k = ``)."""
    msg = option_names(msg)
    msg = re.sub(r"(?<![-\w])query rows(?![\w-])", "--query-rows", msg)
    msg = re.sub(r"(?<![-\w])query(?![\w-])", "--query", msg)
    msg = re.sub(r"^k (=|must)", r"-k \1", msg)
    return re.sub(r"(?<![-\w])predictions(?![\w-])", "--probs", msg)


@app.command()
def similar(
    embeddings: Path = typer.Option(..., "--embeddings", "-e", help="(n, d) pool embeddings: .npy (memory-mapped) or .parquet"),
    k: int = typer.Option(..., "-k", help="how many rows to return"),
    out_path: Path = typer.Option(..., "--out", "-o", help="int64 row indices, nearest first (.npy or .csv)"),
    query: Optional[Path] = typer.Option(None, "--query", help="(q, d) query embeddings; an item's distance to the set is to its nearest query"),
    query_rows: Optional[Path] = typer.Option(None, "--query-rows", help="queries given as pool row indices instead of --query (never returned)"),
    probs: Optional[Path] = typer.Option(None, "--probs", help="(n, C) predictions: return the k nearest most uncertain (smallest margin) first"),
    labeled: Optional[Path] = typer.Option(None, "--labeled", help="row indices never returned (labeled items)"),
    metric: SimilarMetric = typer.Option(SimilarMetric.cosine, "--metric", help="distance between embeddings"),
    method: SearchMethod = typer.Option(SearchMethod.auto, "--method", help="flat: exact; ivf: k-means cells; auto: exact up to 20,000 rows"),
    nprobe: int = typer.Option(16, "--nprobe", min=1, help="ivf: cells scanned per query"),
    multilabel: bool = typer.Option(False, "--multilabel", help="--probs columns are independent binary problems"),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", min=0, help=SEED_HELP + " (ivf k-means)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
):
    """Find the pool's unlabeled items nearest to a query set, optionally most uncertain first."""
    from ..io import check_output, load_array, load_predictions, save_indices
    from ..similar import similar as _similar

    check_output(out_path, name="--out", suffixes=(".npy", ".csv"))
    if (query is None) == (query_rows is None):
        _fail("give one of --query (embeddings) or --query-rows (pool rows)")
    t0 = time.perf_counter()
    try:
        X = load_array(embeddings, name="--embeddings")
        Q = load_array(query, name="--query") if query is not None else None
        QR = load_array(query_rows, name="--query-rows") if query_rows is not None else None
        P = load_predictions(probs, name="--probs", multilabel=multilabel) if probs is not None else None
        L = load_array(labeled, name="--labeled") if labeled is not None else None
        rows, dist = _similar(X, Q, k, query_rows=QR, metric=metric.value, labeled=L, probs=P,
                              multilabel=multilabel, method=method.value, nprobe=nprobe, seed=seed,
                              return_distance=True)
        save_indices(out_path, rows, name="--out")
    except BatchalInputError as exc:
        _fail(_names(str(exc)))
    if not quiet:
        order = "most uncertain first" if probs is not None else "nearest first"
        err.print(f"similar: {rows.shape[0]:,} rows -> {out_path} ({order}; distance {dist.min():.4g} to "
                  f"{dist.max():.4g}; {time.perf_counter() - t0:.2f}s)", highlight=False, markup=False)
