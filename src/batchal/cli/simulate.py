"""``batchal simulate`` and ``batchal demo``: replayed active learning on labeled data."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .._validation import BatchalInputError
from ._common import DEFAULT_SEED, QUIET_HELP, SEED_HELP, Method, Metric, _fail, app, err, finite, out

_DATA_HELP = ("your labeled data: an .npz with X (n, d) numbers and y (n,) class labels (ints or strings; or an "
              "(n, C) 0/1 matrix for multi-label), optionally X_test and y_test; without them 20% is held out")


class DedupMetric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"


class ClusterSpace(str, Enum):
    embedding = "embedding"
    input = "input"


class Model(str, Enum):
    logreg = "logreg"
    mlp = "mlp"


class Training(str, Enum):
    budget = "budget"
    early_stop = "early-stop"
    full = "full"


@app.command()
def simulate(
    data: Optional[Path] = typer.Option(None, "--data", help=_DATA_HELP),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="digits, fashion-mnist, mnist1d, blobs, multilabel, or a generated pool at the paper's scale: mnist1d-lt, fmnist-web, fmnist-web-lt (-views: the test images drawn as pool rows are), manyclass, multilabel-vocab"),
    size: Optional[int] = typer.Option(None, "--size", min=1, help="pool size: generated datasets (mnist1d, blobs, multilabel) are made this size; digits and fashion-mnist get a stratified random subset"),
    strategies: str = typer.Option("cluster-margin,margin,random", "--strategies", help="comma-separated strategy specs: NAME or NAME:key=value[:key=value...]; each labels its curve"),
    redundancy: Optional[str] = typer.Option(None, "--redundancy", help="make the pool redundant: zipf[:a=2,cap=50,noise=0.05,shift=S] repeats each pool row m ~ Zipf(a) times (at most cap), each copy perturbed; the test split is untouched"),
    seed_size: int = typer.Option(100, "--seed-size", min=1, help="labels drawn at random before the first round (the seed set)"),
    batch_size: int = typer.Option(100, "--batch-size", min=1, help="labels each strategy picks per round"),
    rounds: int = typer.Option(5, "--rounds", min=1, help="selection rounds after the seed set"),
    trials: int = typer.Option(3, "--trials", min=1, help="repetitions with different seed sets (for the spread)"),
    model: Model = typer.Option(Model.logreg, "--model", help="logistic regression, or a torch MLP (needs torch)"),
    epochs: int = typer.Option(30, "--epochs", min=1, help="MLP: epochs per round (budget, full) or at most (early-stop)"),
    training: Training = typer.Option(Training.budget, "--training", help="MLP: budget = every labeled row for max(--epochs epochs, --min-steps steps), constant learning rate, the lowest-training-loss epoch kept (check a conclusion with both doubled); early-stop = epochs until a held-out 10% of the labeled set (at most 20,000 rows) stops improving for 3 epochs; full = exactly --epochs epochs at a constant learning rate"),
    min_steps: int = typer.Option(20_000, "--min-steps", min=0, help="MLP, budget rule: gradient steps per round at least (small labeled sets need more than --epochs epochs)"),
    max_steps: int = typer.Option(0, "--max-steps", min=0, help="MLP: gradient steps per round at most (0 = no cap)"),
    warm_start: bool = typer.Option(True, "--warm-start/--cold-start", help="logreg: start each round's fit from the previous round's coefficients (same optimum, fewer iterations)"),
    whiten: bool = typer.Option(False, "--whiten/--no-whiten", help="logreg: fit on the input whitened with the pool's covariance: far fewer iterations on correlated features, but the L2 penalty then acts on whitened coefficients (default: standardised input)"),
    tol: float = typer.Option(1e-4, "--tol", callback=finite(0, lo_open=True), help="logreg: L-BFGS stopping tolerance on the gradient (scikit-learn's tol); check a conclusion at 1e-6, where fits no longer depend on the start or the thread count"),
    cluster_cache: bool = typer.Option(True, "--cluster-cache/--no-cluster-cache", help="reuse a clustering of the same embedding and parameters from the cache ($BATCHAL_CACHE or ~/.cache/batchal)"),
    reference_cache: bool = typer.Option(True, "--reference-cache/--no-reference-cache", help="reuse the whole-pool reference score of the same pool, test split and training rule from the cache"),
    margin_factor: float = typer.Option(10.0, "--margin-factor", callback=finite(1), help="cluster-margin: k_m = factor x batch size"),
    max_candidate_share: float = typer.Option(0.1, "--max-candidate-share", callback=finite(0, 1, lo_open=True), help="cluster-margin: cap k_m at this share of the unlabeled rows (1 = the paper's rule)"),
    mean_cluster_size: float = typer.Option(10.0, "--mean-cluster-size", callback=finite(1), help="cluster-margin: cut the clustering where clusters average this size"),
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="clustering distance"),
    cluster_method: Method = typer.Option(Method.auto, "--cluster-method", help="HAC: exact (all pairs), graph (kNN graph) or auto (by size)"),
    cluster_space: ClusterSpace = typer.Option(ClusterSpace.embedding, "--cluster-space", help="cluster the seed model's embedding (as in the paper) or the input features"),
    knn: int = typer.Option(50, "--knn", min=1, help="neighbours per row for the graph clustering"),
    partitions: int = typer.Option(1, "--badge-partitions", min=1, help="badge: split the pool into this many random parts"),
    target: Optional[float] = typer.Option(None, "--target", callback=finite(0, 1, lo_open=True), help="target metric (default: 98% of the whole-pool model)"),
    jobs: Optional[int] = typer.Option(None, "--jobs", min=1, help="parallel processes (default: number of cores); each fits with one thread, "
                                        "so the numbers do not depend on it"),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", min=0, help=SEED_HELP + "; trial t uses a seed derived from it"),
    propagate: Optional[float] = typer.Option(None, "--propagate", callback=finite(0), help="after each batch, copy each item's label to its near-duplicate group at this distance (1 - cos; on the seed model's embedding); results.csv records labels bought (n_labeled), propagated (n_propagated) and the propagated labels' error rate"),
    propagate_metric: DedupMetric = typer.Option(DedupMetric.cosine, "--propagate-metric", help="distance of --propagate"),
    config: Optional[Path] = typer.Option(None, "--config", help="a selection config (TOML): its strategy (with balance, candidates) runs next to --strategies; [dedup] propagate = true, threshold = T sets --propagate; [weights] may hold uncertainty alone; other keys are refused"),
    out_dir: Path = typer.Option(Path("sim_out"), "--out", help="folder for results.csv, curves.png, summary.md and the rest (written all at once)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
):
    """Replay active learning on labeled data; write results.csv, curves.png and summary.md."""
    from ..io import check_output
    from ..simulate import SimulationConfig, load_dataset, load_npz
    from ..simulate import simulate as _simulate

    if (data is None) == (dataset is None):
        _fail("give exactly one of --data FILE.npz or --dataset NAME")
    check_output(out_dir, name="--out", directory=True)
    specs = [x.strip() for x in strategies.split(",") if x.strip()]
    if config is not None:  # validated before any data is loaded
        from ..selection_config import load_config, simulation_settings

        try:
            settings = simulation_settings(load_config(config))
        except BatchalInputError as exc:
            _fail(str(exc))
        if settings["propagate"] is not None and propagate is not None:
            _fail(f"--propagate: --config {config} sets it too ([dedup] propagate); give it in one place")
        if settings["propagate"] is not None:
            propagate, propagate_metric = settings["propagate"], DedupMetric(settings["propagate_metric"])
        if settings["strategy"] is not None and settings["strategy"] not in specs:
            specs.append(settings["strategy"])
    try:
        ds = load_npz(data, seed=seed) if data is not None else load_dataset(dataset, size=size, seed=seed, progress=not quiet)
        if redundancy is not None:
            from ..simulate import make_redundant

            ds = make_redundant(ds, redundancy, seed=seed)
        cfg = SimulationConfig(
            strategies=specs, propagate=propagate, propagate_metric=propagate_metric.value,
            seed_size=seed_size, batch_size=batch_size, rounds=rounds, trials=trials, model=model.value,
            epochs=epochs, max_steps=max_steps or None, training=training.value, min_steps=min_steps, warm_start=warm_start, whiten=whiten, tol=tol,
            cluster_cache=cluster_cache, reference_cache=reference_cache,
            margin_factor=margin_factor, max_candidate_share=max_candidate_share, mean_cluster_size=mean_cluster_size, metric=metric.value,
            cluster_method=cluster_method.value, cluster_space=cluster_space.value, knn=knn, badge_partitions=partitions, seed=seed,
            n_jobs=jobs, target=target, progress=not quiet,
        )
        need = seed_size + batch_size * rounds
        if need > ds.X.shape[0]:
            raise BatchalInputError(f"--seed-size {seed_size:,} + --batch-size {batch_size:,} x --rounds {rounds} = "
                                    f"{need:,} labels, more than the pool of {ds.X.shape[0]:,} rows")
        cfg.validate(ds.X.shape[0])  # everything refused before any work
        if not quiet:
            err.print(ds.describe(), highlight=False)
            k = len(cfg.strategies)
            err.print(f"running {k * trials} runs ({k} strateg{'ies' if k > 1 else 'y'} x {trials} "
                      f"trial{'s' if trials > 1 else ''}) and the whole-pool reference, seed {seed}", highlight=False)
        res = _simulate(ds, cfg)
        res.class_names = ds.class_names  # string labels: their names go into run.json
        from ..simulate.report import write_outputs

        write_outputs(res, out_dir, name="--out")
    except BatchalInputError as exc:
        _fail(str(exc))
    if not quiet:
        from rich.markdown import Markdown

        out.print(Markdown((out_dir / "summary.md").read_text()))  # tables, not raw markdown
        err.print(f"wrote {out_dir}/results.csv, curves.png, summary.md ({res.seconds:.0f} s)", highlight=False)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("batchal_demo"), "--out", help="where to write the tables, summaries and learning-curve PNGs"),
    trials: int = typer.Option(10, "--trials", min=1, help="repetitions with different seed sets (3 are too few to tell 1.0x from 1.3x on this small pool)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress or tables"),
):
    """Where diversity pays: digits as it is, then digits made redundant (web-like near-duplicates).

    Logistic regression; seed set and batches of 2.5% of the pool, 6 rounds; the
    recommended spec, the paper's cluster-margin, margin and random side by side.
    """
    from ..io import check_output
    from ..selectors import RECOMMENDED
    from ..simulate import SimulationConfig, load_dataset, make_redundant

    check_output(out_dir, name="--out", directory=True)
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
        from ..simulate.report import demo_conclusion

        out.print(demo_conclusion(RECOMMENDED), highlight=False)
