"""``batchal dedup``: near-duplicate groups of the pool."""
from __future__ import annotations

import time
from enum import Enum
from pathlib import Path

from typing import Optional

import typer

from .._validation import BatchalInputError
from ._common import DEFAULT_SEED, QUIET_HELP, SEED_HELP, _fail, app, err, finite, option_names


class DedupMetric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"


class KnnMethod(str, Enum):
    auto = "auto"
    flat = "flat"
    ivf = "ivf"


@app.command()
def dedup(
    embeddings: Path = typer.Option(..., "--embeddings", "-e", help="(n, d) pool embeddings: .npy (memory-mapped) or .parquet"),
    threshold: Optional[float] = typer.Option(None, "--threshold", callback=finite(0), help="largest distance between near-duplicates (1 - cos for cosine, L2 for euclidean); default 0.01 for cosine (BENCHMARKS.md), required for euclidean"),
    out_path: Path = typer.Option(..., "--out", "-o", help="groups as Parquet: columns row, group, representative (one row per pool row)"),
    metric: DedupMetric = typer.Option(DedupMetric.cosine, "--metric", help="distance between embeddings"),
    knn: int = typer.Option(20, "--knn", min=1, help="neighbours per row in the kNN graph"),
    method: KnnMethod = typer.Option(KnnMethod.auto, "--method", help="kNN search: auto (exact up to 20,000 rows, IVF above)"),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", min=0, help=SEED_HELP + " (IVF k-means)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
):
    """Group near-duplicate items (connected within --threshold in the kNN graph); one representative each."""
    from ..dedup import default_threshold, near_duplicate_groups, write_groups
    from ..io import check_output, load_array

    check_output(out_path, name="--out", suffixes=(".parquet",))
    t0 = time.perf_counter()
    try:
        threshold = default_threshold(threshold, metric.value)
        X = load_array(embeddings, name="--embeddings")
        groups = near_duplicate_groups(X, threshold, metric=metric.value, knn=knn, method=method.value,
                                       random_state=seed, progress=not quiet)
        write_groups(out_path, groups, name="--out")
    except BatchalInputError as exc:
        _fail(option_names(str(exc)))
    if not quiet:
        n = groups["row"].shape[0]
        n_groups = int(groups["group"].max()) + 1
        dup = int(n - n_groups)
        err.print(f"dedup: {n:,} rows in {n_groups:,} groups; {dup:,} rows ({100 * dup / n:.1f}%) are near-duplicates "
                  f"of a representative -> {out_path} ({time.perf_counter() - t0:.2f}s)", highlight=False, markup=False)
