"""``batchal cluster`` and ``batchal recut``: the one-time clustering of the pool."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from .._validation import BatchalInputError
from ._common import ENGINE_HELP, RAY_ADDRESS_HELP, EngineName, Method, Metric, _engine, _fail, _save_ints, app, err, out


@app.command()
def cluster(
    embeddings: Path = typer.Option(..., "--embeddings", "-e", help="(n, d) embeddings: .npy (memory-mapped) or .parquet"),
    out_path: Path = typer.Option(..., "--out", "-o", help="Where to write one int64 cluster id per row (.npy or .csv)"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Cut the average-linkage tree at this distance"),
    mean_cluster_size: Optional[float] = typer.Option(None, "--mean-cluster-size", help="Cut where clusters average this size (default 10)"),
    metric: Metric = typer.Option(Metric.cosine, "--metric"),
    method: Method = typer.Option(Method.auto, "--method", help="exact: all pairs (O(n^2) memory); graph: kNN-graph restricted; auto: by size"),
    knn: int = typer.Option(50, "--knn", help="Neighbours per row for the graph method"),
    seed: int = typer.Option(0, "--seed"),
    save_tree: Optional[Path] = typer.Option(None, "--save-tree", help="Also save the merge tree (scipy linkage format, .npy) for `batchal recut`"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or report"),
    engine: EngineName = typer.Option(EngineName.local, "--engine", help=ENGINE_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
):
    """Cluster the pool once with average-linkage HAC; one cluster id per row."""
    from ..clustering import AverageLinkage
    from ..io import load_array

    mean_cluster_size = _cut_options(threshold, mean_cluster_size, out_path)
    if engine is EngineName.ray or ray_address is not None:
        return _cluster_ray(embeddings, out_path, threshold, mean_cluster_size, metric, method, knn, seed, save_tree,
                            quiet, engine, ray_address)
    try:
        X = load_array(embeddings, name="embeddings")
        model = AverageLinkage(
            threshold=threshold,
            mean_cluster_size=mean_cluster_size,
            metric=metric.value,
            method=method.value,
            knn=knn,
            progress=not quiet,
            random_state=seed,
        )
        if not quiet:
            from ..clustering.hac import choose_method

            n = X.shape[0] if X.ndim == 2 else 0
            chosen, why = choose_method(n, method.value)
            err.print(f"method: {chosen} ({why})", highlight=False)
        if save_tree is not None and save_tree.suffix.lower() != ".npy":
            _fail(f"--save-tree must end in .npy; got {save_tree.name}")
        model.fit(X)
        if save_tree is not None:
            from ..io import atomic_write

            atomic_write(save_tree, lambda tmp: np.save(tmp, model.linkage_))
        _save_ints(out_path, model.labels_)
    except BatchalInputError as exc:
        _fail(str(exc))
    _report(model, out_path, quiet)


def _cluster_ray(embeddings, out_path, threshold, mean_cluster_size, metric, method, knn, seed, save_tree, quiet,
                 engine, ray_address):
    """``cluster --engine ray``: the workers read the embeddings (.npy or Parquet) where they lie."""
    if save_tree is not None and save_tree.suffix.lower() != ".npy":
        _fail(f"--save-tree must end in .npy; got {save_tree.name}")
    if not embeddings.exists():
        _fail(f"embeddings: no such file {embeddings}")
    eng = _engine(engine, ray_address, quiet)
    try:
        with eng:
            if not quiet:
                err.print("stages: kNN graph (IVF cells, shards in actors) -> RAC rounds (actors own clusters by hash)",
                          highlight=False)
            model = eng.cluster(embeddings, threshold=threshold, mean_cluster_size=mean_cluster_size,
                                metric=metric.value, method=method.value, knn=knn, progress=not quiet,
                                random_state=seed)
        if save_tree is not None:
            from ..io import atomic_write

            atomic_write(save_tree, lambda tmp: np.save(tmp, model.linkage_))
        _save_ints(out_path, model.labels_)
    except BatchalInputError as exc:
        _fail(str(exc))
    if not quiet:
        t = model.timings_
        err.print(f"ray: kNN {t.get('knn', 0):.1f}s, HAC {t.get('merge', 0):.1f}s in {t.get('rounds', 0)} rounds "
                  f"({t.get('actors', 0)} actors)", highlight=False)
    _report(model, out_path, quiet)


@app.command()
def recut(
    tree: Path = typer.Option(..., "--tree", help="Merge tree saved by `batchal cluster --save-tree`"),
    out_path: Path = typer.Option(..., "--out", "-o", help="Where to write one int64 cluster id per row (.npy or .csv)"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Cut the tree at this distance"),
    mean_cluster_size: Optional[float] = typer.Option(None, "--mean-cluster-size", help="Cut where clusters average this size (default 10)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No report"),
):
    """Cut a saved merge tree at another threshold or mean cluster size, without re-clustering."""
    from ..clustering import AverageLinkage

    mean_cluster_size = _cut_options(threshold, mean_cluster_size, out_path)
    if not tree.exists():
        _fail(f"tree file not found: {tree}")
    try:
        Z = np.load(tree, allow_pickle=False)
        model = AverageLinkage.from_linkage(Z, threshold=threshold, mean_cluster_size=mean_cluster_size)
        _save_ints(out_path, model.labels_)
    except (BatchalInputError, ValueError) as exc:
        _fail(str(exc))
    _report(model, out_path, quiet)


def _cut_options(threshold, mean_cluster_size, out_path: Path):
    """Check the cut and output options shared by cluster and recut; returns the mean size to use."""
    if threshold is not None and mean_cluster_size is not None:
        _fail("give --threshold or --mean-cluster-size, not both")
    if out_path.suffix.lower() not in (".npy", ".csv"):
        _fail(f"--out must end in .npy or .csv; got {out_path.name}")
    return 10.0 if threshold is None and mean_cluster_size is None else mean_cluster_size


def _report(model, out_path: Path, quiet: bool) -> None:
    from ..clustering.report import format_report, write_report

    report = write_report(model, out_path)
    if not quiet:
        out.print(format_report(report), highlight=False)
