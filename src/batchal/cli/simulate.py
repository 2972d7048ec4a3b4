"""``batchal simulate`` and ``batchal demo``: replayed active learning on labeled data."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from .._validation import BatchalInputError
from ._common import Method, Metric, _fail, app, err, out


@app.command()
def simulate(
    data: Optional[Path] = typer.Option(None, "--data", help="npz with X, y (and optionally X_test, y_test)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="digits, fashion-mnist, mnist1d, blobs or multilabel"),
    size: Optional[int] = typer.Option(None, "--size", help="pool size: generated datasets (mnist1d, blobs, multilabel) are made this size; digits and fashion-mnist get a stratified random subset"),
    strategies: str = typer.Option("cluster-margin,margin,random", "--strategies", help="comma-separated strategy specs: NAME or NAME:key=value[:key=value...]; each labels its curve"),
    redundancy: Optional[str] = typer.Option(None, "--redundancy", help="make the pool redundant: zipf[:a=2,cap=50,noise=0.05,shift=S] repeats each pool row m ~ Zipf(a) times (at most cap), each copy perturbed; the test split is untouched"),
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
    from ..simulate import SimulationConfig, load_dataset, load_npz
    from ..simulate import simulate as _simulate

    if (data is None) == (dataset is None):
        _fail("give exactly one of --data FILE.npz or --dataset NAME")
    try:
        ds = load_npz(data, seed=seed) if data is not None else load_dataset(dataset, size=size, seed=seed, progress=not quiet)
        if redundancy is not None:
            from ..simulate import make_redundant

            ds = make_redundant(ds, redundancy, seed=seed)
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
    out_dir: Path = typer.Option(Path("batchal_demo"), "--out", help="where to write the tables, summaries and learning-curve PNGs"),
    trials: int = typer.Option(3, "--trials", help="repetitions with different seed sets"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress or tables"),
):
    """Where diversity pays: digits as it is, then digits made redundant (web-like near-duplicates).

    Logistic regression; seed set and batches of 2.5% of the pool, 6 rounds; the
    recommended spec, the paper's cluster-margin, margin and random side by side.
    """
    from ..selectors import RECOMMENDED
    from ..simulate import SimulationConfig, load_dataset, make_redundant
    from ..simulate import simulate as _simulate
    from ..simulate.report import comparison_lines, comparison_table

    strategies = list(dict.fromkeys([RECOMMENDED, "cluster-margin", "margin", "random"]))
    plain = load_dataset("digits")
    runs = [("plain", plain, "digits as it is: no near-duplicates"),
            ("redundant", make_redundant(plain, "zipf", seed=0),
             "digits made redundant: each image repeated m ~ Zipf(2) times (at most 50), copies with noise")]
    for tag, ds, what in runs:
        b = max(10, round(0.025 * ds.X.shape[0]))
        cfg = SimulationConfig(strategies=strategies, seed_size=b, batch_size=b, rounds=6, trials=trials,
                               model="logreg", progress=not quiet)
        if not quiet:
            err.print(f"{what}\n{ds.describe()}; seed set of {b} labels, then 6 batches of {b}; {trials} trials",
                      highlight=False)
        res = _simulate(ds, cfg, out_dir=out_dir / tag)
        if not quiet:
            out.print(comparison_table(res, f"{ds.name}: test accuracy (mean over {trials} trials)"))
            for line in comparison_lines(res):
                out.print(line, highlight=False)
            out.print(f"curves: {out_dir / tag / 'curves.png'}; summary: {out_dir / tag / 'summary.md'} "
                      f"({res.seconds:.0f} s)\n", highlight=False)
    if not quiet:
        out.print(
            f"On the plain pool margin's batches are already diverse: the paper's cluster-margin trades uncertainty "
            f"for diversity it does not need. On the redundant pool margin spends labels on copies, and taking one "
            f"item per cluster pays. The recommended spec ({RECOMMENDED}) is margin's list with at most one item per "
            f"cluster per pass: right in both regimes (BENCHMARKS.md, *Label efficiency*).", highlight=False)
