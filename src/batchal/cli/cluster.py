"""``batchal cluster`` and ``batchal recut``: the one-time clustering of the pool."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from .._validation import BatchalInputError
from ._common import (DEFAULT_SEED, QUIET_HELP, SEED_HELP, Method, Metric, _fail, _save_ints, app, err, finite,
                      option_names, out)
from ._common import CHECKPOINT_HELP, ENGINE_HELP, RAY_ADDRESS_HELP, RESUME_HELP, EngineName, _engine

_OUT_HELP = ("where to write one int64 cluster id per row (.npy or .csv); a report <name>.report.json and a "
             "size histogram <name>.sizes.png are written beside it (--no-report: not)")
_REPORT_HELP = "also write <name>.report.json and <name>.sizes.png beside --out"


@app.command()
def cluster(
    embeddings: Path = typer.Option(..., "--embeddings", "-e", help="(n, d) embeddings: .npy (memory-mapped) or .parquet"),
    out_path: Path = typer.Option(..., "--out", "-o", help=_OUT_HELP),
    threshold: Optional[float] = typer.Option(None, "--threshold", callback=finite(0), help="cut the average-linkage tree at this distance"),
    mean_cluster_size: Optional[float] = typer.Option(None, "--mean-cluster-size", callback=finite(1), help="cut where clusters average this size (default 10)"),
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="distance between embeddings"),
    method: Method = typer.Option(Method.auto, "--method", help="exact: all pairs (O(n^2) memory); graph: kNN-graph restricted; auto: by size"),
    knn: int = typer.Option(50, "--knn", min=1, help="neighbours per row for the graph method"),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", min=0, help=SEED_HELP + " (graph method)"),
    save_tree: Optional[Path] = typer.Option(None, "--save-tree", help="also save the merge tree (scipy linkage format, .npy) for `batchal recut`"),
    report: bool = typer.Option(True, "--report/--no-report", help=_REPORT_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    engine: EngineName = typer.Option(EngineName.local, "--engine", help=ENGINE_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help=CHECKPOINT_HELP),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
):
    """Cluster the pool once with average-linkage HAC; one cluster id per row."""
    from ..clustering import AverageLinkage
    from ..io import check_output, load_array

    mean_cluster_size = _cut_options(threshold, mean_cluster_size, out_path, report)
    if save_tree is not None:
        check_output(save_tree, name="--save-tree", suffixes=(".npy",))
    if engine is EngineName.ray or ray_address is not None:
        ckpt = checkpoint_dir if checkpoint_dir is not None else out_path.with_name(out_path.name + ".ray-checkpoint")
        return _cluster_ray(embeddings, out_path, threshold, mean_cluster_size, metric, method, knn, seed, save_tree,
                            quiet, engine, ray_address, report, ckpt, resume)
    if resume or checkpoint_dir is not None:
        _fail("--resume and --checkpoint-dir apply to --engine ray (the local engine runs in this process)")
    try:
        X = load_array(embeddings, name="--embeddings")
        model = AverageLinkage(
            threshold=threshold,
            mean_cluster_size=mean_cluster_size,
            metric=metric.value,
            method=method.value,
            knn=knn,
            progress=not quiet,
            random_state=seed,
        )
        if not quiet:  # before a possibly long run, so the report does not repeat it
            from .._validation import check_2d, check_finite
            from ..clustering.hac import choose_method

            # bad input must be the only line printed: check it (one streamed pass) before saying anything
            X = check_2d(X, "--embeddings")
            check_finite(X, "--embeddings")
            chosen, why = choose_method(X.shape[0], method.value)
            err.print(f"method: {chosen} ({why})" + (f", seed {seed}" if chosen == "graph" else ""), highlight=False)
        model.fit(X)
        if save_tree is not None:
            from ..io import atomic_write

            atomic_write(save_tree, lambda tmp: np.save(tmp, model.linkage_), name="--save-tree")
        _save_ints(out_path, model.labels_)
    except BatchalInputError as exc:
        _fail(option_names(str(exc)))
    _report(model, out_path, quiet, report, method_shown=True)


def _cluster_ray(embeddings, out_path, threshold, mean_cluster_size, metric, method, knn, seed, save_tree, quiet,
                 engine, ray_address, report, checkpoint_dir, resume):
    """``cluster --engine ray``: the workers read the embeddings (.npy or Parquet) where they lie."""
    if not embeddings.exists():
        _fail(f"--embeddings: no such file {embeddings}")
    eng = _engine(engine, ray_address, quiet)
    from ..engines.base import StageFailed

    try:
        with eng:
            if not quiet:
                err.print("stages: kNN graph (IVF cells, shards in actors) -> RAC rounds (actors own clusters by hash)",
                          highlight=False)
            model = eng.cluster(embeddings, threshold=threshold, mean_cluster_size=mean_cluster_size,
                                metric=metric.value, method=method.value, knn=knn, progress=not quiet,
                                random_state=seed, checkpoint_dir=checkpoint_dir, resume=resume)
        if save_tree is not None:
            from ..io import atomic_write

            atomic_write(save_tree, lambda tmp: np.save(tmp, model.linkage_), name="--save-tree")
        _save_ints(out_path, model.labels_)
    except BatchalInputError as exc:
        _fail(option_names(str(exc)))
    except StageFailed as exc:  # workers died more often than a stage may restart: resumable
        _fail(str(exc), code=1)
    if not quiet:
        t = model.timings_
        if model.ray_info_.get("resumed_from_round") is not None or model.ray_info_.get("knn_resumed"):
            err.print(f"resumed from the checkpoint in {checkpoint_dir}", highlight=False)
        err.print(f"ray: kNN {t.get('knn', 0):.1f}s, HAC {t.get('merge', 0):.1f}s in {t.get('rounds', 0)} rounds "
                  f"({t.get('actors', 0)} actors)", highlight=False)
    _report(model, out_path, quiet, report)


@app.command()
def recut(
    tree: Path = typer.Option(..., "--tree", help="merge tree saved by `batchal cluster --save-tree` (.npy)"),
    out_path: Path = typer.Option(..., "--out", "-o", help=_OUT_HELP),
    threshold: Optional[float] = typer.Option(None, "--threshold", callback=finite(0), help="cut the tree at this distance"),
    mean_cluster_size: Optional[float] = typer.Option(None, "--mean-cluster-size", callback=finite(1), help="cut where clusters average this size (default 10)"),
    report: bool = typer.Option(True, "--report/--no-report", help=_REPORT_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
):
    """Cut a saved merge tree at another threshold or mean cluster size, without re-clustering."""
    from ..clustering import AverageLinkage
    from ..io import load_array

    mean_cluster_size = _cut_options(threshold, mean_cluster_size, out_path, report)
    try:
        Z = load_array(tree, name="--tree")
        model = AverageLinkage.from_linkage(Z, threshold=threshold, mean_cluster_size=mean_cluster_size,
                                            name=f"--tree {tree}")
        _save_ints(out_path, model.labels_)
    except BatchalInputError as exc:
        _fail(str(exc))
    _report(model, out_path, quiet, report)


def _cut_options(threshold, mean_cluster_size, out_path: Path, report: bool):
    """Check the cut and output options shared by cluster and recut; returns the mean size to use."""
    from ..clustering.report import report_paths
    from ..io import check_output

    if threshold is not None and mean_cluster_size is not None:
        _fail("give --threshold or --mean-cluster-size, not both")
    check_output(out_path, name="--out", suffixes=(".npy", ".csv"))
    if report:
        for side in report_paths(out_path):
            check_output(side, name="--out (report beside it)")
    return 10.0 if threshold is None and mean_cluster_size is None else mean_cluster_size


def _report(model, out_path: Path, quiet: bool, report: bool, method_shown: bool = False) -> None:
    from ..clustering.report import cluster_report, format_report, write_report

    rep = write_report(model, out_path) if report else cluster_report(model)
    if not quiet:
        out.print(format_report(rep, method=not method_shown), highlight=False)
