"""The ``batchal`` command-line tool (a thin layer over the Python API)."""
from __future__ import annotations

import sys
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console

from ._validation import BatchalInputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Batch active learning at scale: pick the next batch to label (Cluster-Margin and baselines).",
)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _fail(msg: str, code: int = 2):
    err.print(f"[bold red]error:[/] {msg}", highlight=False)
    raise typer.Exit(code)


class Metric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"
    sqeuclidean = "sqeuclidean"


class Method(str, Enum):
    auto = "auto"
    exact = "exact"
    graph = "graph"


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
):
    """Cluster the pool once with average-linkage HAC; one cluster id per row."""
    from .clustering import AverageLinkage
    from .io import load_array

    mean_cluster_size = _cut_options(threshold, mean_cluster_size, out_path)
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
            from .clustering.hac import choose_method

            n = X.shape[0] if X.ndim == 2 else 0
            chosen, why = choose_method(n, method.value)
            err.print(f"method: {chosen} ({why})", highlight=False)
        if save_tree is not None and save_tree.suffix.lower() != ".npy":
            _fail(f"--save-tree must end in .npy; got {save_tree.name}")
        model.fit(X)
        if save_tree is not None:
            from .io import atomic_write

            atomic_write(save_tree, lambda tmp: np.save(tmp, model.linkage_))
        _save_ints(out_path, model.labels_)
    except BatchalInputError as exc:
        _fail(str(exc))
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
    from .clustering import AverageLinkage

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
    from .clustering.report import format_report, write_report

    report = write_report(model, out_path)
    if not quiet:
        out.print(format_report(report), highlight=False)


def _save_ints(path: Path, labels: np.ndarray) -> None:
    from .io import atomic_write

    if path.suffix.lower() == ".npy":
        atomic_write(path, lambda tmp: np.save(tmp, labels.astype(np.int64)))
    else:
        atomic_write(path, lambda tmp: np.savetxt(tmp, labels, fmt="%d", header="cluster", comments=""))


@app.command()
def select(
    strategy: str = typer.Option(..., "--strategy", "-s", help="random, margin, entropy, least-confidence, coreset, badge, cluster-margin"),
    batch_size: int = typer.Option(..., "--batch-size", "-k", help="How many rows to select"),
    out_path: Path = typer.Option(..., "--out", "-o", help="Selected row indices, int64 in selection order (.npy or .csv)"),
    probs: Optional[Path] = typer.Option(None, "--probs", help="(n, C) predicted probabilities"),
    logits: Optional[Path] = typer.Option(None, "--logits", help="(n, C) logits (softmax applied; sigmoid with --multilabel)"),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="(n, d) embeddings (coreset, badge)"),
    clusters: Optional[Path] = typer.Option(None, "--clusters", help="(n,) int cluster ids (cluster-margin)"),
    labeled: Optional[Path] = typer.Option(None, "--labeled", help="int row indices already labeled"),
    ids: Optional[Path] = typer.Option(None, "--ids", help="(n,) item ids; a .csv output then also lists the ids"),
    margin_factor: float = typer.Option(10.0, "--margin-factor", help="cluster-margin: k_m = factor x batch size"),
    max_candidate_share: float = typer.Option(0.1, "--max-candidate-share", help="cluster-margin: cap k_m at this share of the unlabeled rows (not below 2 x batch size); 1 = the paper's rule"),
    partitions: int = typer.Option(1, "--partitions", help="badge: split the pool into this many random parts"),
    multilabel: bool = typer.Option(False, "--multilabel", help="columns are independent binary problems"),
    aggregate: str = typer.Option("min", "--aggregate", help="multi-label margin over classes: min or mean"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (same seed, same batch)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Pick the next batch of rows to label."""
    from .api import select as _select
    from .io import load_array, save_indices
    from .selectors import REGISTRY, available_strategies
    from ._validation import check_ids

    if strategy not in REGISTRY:
        _fail(f"unknown strategy {strategy!r}; choose one of: {', '.join(available_strategies())}")
    if out_path.suffix.lower() not in (".npy", ".csv"):
        _fail(f"--out must end in .npy or .csv; got {out_path.name}")
    if probs is not None and logits is not None:
        _fail("give --probs or --logits, not both")
    params = {}
    if strategy == "cluster-margin":
        params["margin_factor"] = margin_factor
        params["max_candidate_share"] = max_candidate_share
    if strategy == "badge":
        params["partitions"] = partitions
    if strategy in ("coreset", "badge"):
        params["progress"] = not quiet
    t0 = time.perf_counter()
    try:
        arrays = dict(
            probs=load_array(probs, name="--probs") if probs else None,
            logits=load_array(logits, name="--logits") if logits else None,
            embeddings=load_array(embeddings, name="--embeddings") if embeddings else None,
            clusters=load_array(clusters, name="--clusters") if clusters else None,
            labeled=load_array(labeled, name="--labeled") if labeled else None,
        )
        id_arr = check_ids(load_array(ids, name="--ids")) if ids else None
        t1 = time.perf_counter()
        idx = _select(strategy, batch_size, multilabel=multilabel, aggregate=aggregate, seed=seed, **arrays, **params)
        t2 = time.perf_counter()
        if id_arr is not None and id_arr.shape[0] <= int(idx.max()):
            raise BatchalInputError(f"--ids has {id_arr.shape[0]} rows but the pool has more")
        save_indices(out_path, idx, ids=id_arr)
    except BatchalInputError as exc:
        _fail(str(exc))
    if not quiet:
        err.print(
            f"{strategy}: selected {idx.shape[0]:,} rows -> {out_path} "
            f"(load {t1 - t0:.2f}s, select {t2 - t1:.2f}s)",
            highlight=False,
        )


@app.command()
def simulate(
    data: Optional[Path] = typer.Option(None, "--data", help="npz with X, y (and optionally X_test, y_test)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="digits, fashion-mnist, mnist1d, blobs or multilabel"),
    size: Optional[int] = typer.Option(None, "--size", help="pool size of generated datasets (mnist1d, blobs, multilabel)"),
    strategies: str = typer.Option("cluster-margin,margin,random", "--strategies", help="comma-separated strategy names"),
    seed_size: int = typer.Option(100, "--seed-size"),
    batch_size: int = typer.Option(100, "--batch-size"),
    rounds: int = typer.Option(5, "--rounds"),
    trials: int = typer.Option(3, "--trials"),
    model: str = typer.Option("logreg", "--model", help="logreg or mlp (mlp needs torch)"),
    epochs: int = typer.Option(30, "--epochs", help="MLP: epochs per round, at most --max-steps steps"),
    max_steps: int = typer.Option(1000, "--max-steps", help="MLP: gradient steps per round at most (0 = no cap)"),
    margin_factor: float = typer.Option(10.0, "--margin-factor"),
    max_candidate_share: float = typer.Option(0.1, "--max-candidate-share", help="cap k_m at this share of the unlabeled rows (1 = the paper's rule)"),
    mean_cluster_size: float = typer.Option(10.0, "--mean-cluster-size"),
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="clustering distance"),
    cluster_method: Method = typer.Option(Method.auto, "--cluster-method"),
    cluster_space: str = typer.Option("embedding", "--cluster-space", help="cluster the seed model's embedding (as in the paper) or the input features"),
    knn: int = typer.Option(50, "--knn"),
    partitions: int = typer.Option(1, "--badge-partitions"),
    target: Optional[float] = typer.Option(None, "--target", help="target metric (default: 98% of the whole-pool model)"),
    jobs: Optional[int] = typer.Option(None, "--jobs", help="parallel processes (default: number of cores)"),
    seed: int = typer.Option(0, "--seed"),
    out_dir: Path = typer.Option(Path("sim_out"), "--out"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Replay active learning on labeled data; write results.csv, curves.png and summary.md."""
    from .simulate import SimulationConfig, load_dataset, load_npz
    from .simulate import simulate as _simulate

    if (data is None) == (dataset is None):
        _fail("give exactly one of --data FILE.npz or --dataset NAME")
    try:
        ds = load_npz(data, seed=seed) if data is not None else load_dataset(dataset, size=size, seed=seed, progress=not quiet)
        cfg = SimulationConfig(
            strategies=[s.strip() for s in strategies.split(",") if s.strip()],
            seed_size=seed_size, batch_size=batch_size, rounds=rounds, trials=trials, model=model,
            epochs=epochs, max_steps=max_steps or None,
            margin_factor=margin_factor, max_candidate_share=max_candidate_share, mean_cluster_size=mean_cluster_size, metric=metric.value,
            cluster_method=cluster_method.value, cluster_space=cluster_space, knn=knn, badge_partitions=partitions, seed=seed,
            n_jobs=jobs, target=target, progress=not quiet,
        )
        if not quiet:
            err.print(ds.describe(), highlight=False)
        res = _simulate(ds, cfg, out_dir=out_dir)
    except BatchalInputError as exc:
        _fail(str(exc))
    if not quiet:
        out.print((out_dir / "summary.md").read_text(), highlight=False)
        err.print(f"wrote {out_dir}/results.csv, curves.png, summary.md ({res.seconds:.0f} s)", highlight=False)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("batchal_demo"), "--out", help="where to write the table and learning-curve PNG"),
    trials: int = typer.Option(3, "--trials"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """A short active-learning run on scikit-learn's digits: cluster-margin vs margin vs random."""
    from .simulate import SimulationConfig, load_dataset
    from .simulate import simulate as _simulate
    from .simulate.report import savings_table, _by

    ds = load_dataset("digits")
    cfg = SimulationConfig(strategies=["cluster-margin", "margin", "random"], seed_size=30, batch_size=30,
                           rounds=8, trials=trials, model="logreg", margin_factor=3.0, progress=not quiet)
    if not quiet:
        err.print(f"{ds.describe()}; seed {cfg.seed_size}, batches of {cfg.batch_size}, {cfg.rounds} rounds, {trials} trials", highlight=False)
    res = _simulate(ds, cfg, out_dir=out_dir)
    from rich.table import Table

    table = Table(title=f"digits: test accuracy (mean over {trials} trials)")
    table.add_column("labels", justify="right")
    curves = {s: _by(res.rows, s) for s in cfg.strategies}
    for s in cfg.strategies:
        table.add_column(s, justify="right")
    lab = curves["random"][0]
    for i, L in enumerate(lab):
        table.add_row(f"{int(L)}", *[f"{np.nanmean(curves[s][1][i]):.3f}" for s in cfg.strategies])
    out.print(table)
    rfinal = float(np.nanmean(curves["random"][1][-1]))
    tab = savings_table(res.rows, cfg.strategies, rfinal)
    for s in ("cluster-margin", "margin"):
        v = tab[s].get("vs_random")
        if v and np.isfinite(v[0]):
            out.print(f"{s}: reaches random's final accuracy ({rfinal:.3f}) with {100 * v[0]:.0f}% fewer labels", highlight=False)
    out.print(f"learning curves: {out_dir / 'curves.png'}; summary: {out_dir / 'summary.md'} ({res.seconds:.0f} s)", highlight=False)


@app.command()
def strategies():
    """List the available selection strategies."""
    from .selectors import REGISTRY

    for name in sorted(REGISTRY):
        doc = (REGISTRY[name].__doc__ or "").strip().splitlines()[0]
        out.print(f"[bold]{name}[/]: {doc}", highlight=False)


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
