"""``batchal campaign ...``: the labeling workflow across rounds (services in :mod:`batchal.campaign`)."""
from __future__ import annotations

import json
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .._validation import BatchalInputError
from ._common import Method, Metric, _fail, err, finite, out
from ._common import ENGINE_HELP, RAY_ADDRESS_HELP, EngineName, _engine, _SubGroup

campaign_app = typer.Typer(
    cls=_SubGroup,
    add_completion=False,
    no_args_is_help=True,
    help="A persistent, crash-safe campaign: cluster once, then select, label, repeat (state in DIR).",
)

#: exit code when another command holds the campaign's lock past the timeout (retrying may help)
EXIT_BUSY = 3


class ExportFormat(str, Enum):
    csv = "csv"
    jsonl = "jsonl"
    labelstudio = "labelstudio"


class LabelFormat(str, Enum):
    csv = "csv"
    parquet = "parquet"
    labelstudio = "labelstudio"


@contextmanager
def _errors():
    """Input errors -> one ``error:`` line, exit 2; a busy campaign -> exit 3; a failed Ray stage -> exit 1."""
    from ..campaign import CampaignBusyError
    from ..engines.base import StageFailed

    try:
        yield
    except CampaignBusyError as exc:
        _fail(str(exc), EXIT_BUSY)
    except BatchalInputError as exc:
        _fail(str(exc))
    except StageFailed as exc:  # workers died more often than a stage may restart: --resume continues
        _fail(str(exc), 1)


def _open(directory: Path):
    from ..campaign import Campaign

    return Campaign(directory)


@contextmanager
def _engine_for(engine: EngineName, ray_address: Optional[str], quiet: bool):
    """The engine the options ask for (None: local), started only after the caller's input checks.

    As for ``batchal select``: ``--ray-address`` without ``--engine ray`` is an
    error. The engine is closed on the way out (a Ray instance started here is shut down).
    """
    if engine is EngineName.local and ray_address is None:
        yield None
        return
    eng = _engine(engine, ray_address, quiet)
    with eng:
        yield eng


DirArg = typer.Argument(..., help="The campaign directory")


@campaign_app.command("init")
def init(
    directory: Path = DirArg,
    pool: Path = typer.Option(..., "--pool", help="Parquet file or directory of shards (id + embedding columns), or .npy embeddings"),
    id_column: str = typer.Option("id", "--id-column"),
    embedding_column: str = typer.Option("embedding", "--embedding-column"),
    ids: Optional[Path] = typer.Option(None, "--ids", help="for a .npy pool: a .npy of ids (default: row numbers)"),
    classes: Optional[str] = typer.Option(None, "--classes", help="class names in prediction-column order: a,b,c or a file with one per line"),
):
    """Create a campaign from a pool (records a manifest; refuses duplicate ids, ragged or non-finite embeddings)."""
    from ..campaign import Campaign

    with _errors():
        c = Campaign.init(directory, pool, id_column=id_column, embedding_column=embedding_column, ids=ids,
                          classes=classes)
        s = c.status()
    err.print(f"campaign {directory}: {s['pool']:,} items from {pool}", highlight=False, markup=False)


@campaign_app.command("cluster")
def cluster(
    directory: Path = DirArg,
    mean_cluster_size: Optional[float] = typer.Option(None, "--mean-cluster-size", help="cut where clusters average this size (default 10)"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="cut the average-linkage tree at this distance"),
    metric: Metric = typer.Option(Metric.cosine, "--metric"),
    method: Method = typer.Option(Method.auto, "--method"),
    knn: int = typer.Option(50, "--knn", help="neighbours per row for the graph method"),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="replace an existing clustering"),
    clusters: Optional[Path] = typer.Option(None, "--clusters", help="a precomputed clustering: one int cluster id per item, in the campaign's order (.npy); nothing is clustered here"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    engine: EngineName = typer.Option(EngineName.local, "--engine", help=ENGINE_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    resume: bool = typer.Option(False, "--resume", help="ray engine: continue a killed clustering with the same options from its last completed stage or round (checkpoints in the campaign's ray-checkpoint/)"),
):
    """The one-time clustering of the pool, stored with its parameters, tree and report."""
    from ..clustering.report import format_report

    if threshold is not None and mean_cluster_size is not None:
        _fail("give --threshold or --mean-cluster-size, not both")
    with _errors():
        c = _open(directory)  # not a campaign: refused before a Ray instance is started
        with _engine_for(engine, ray_address, quiet) as eng:
            rep = c.cluster(mean_cluster_size=mean_cluster_size, threshold=threshold, metric=metric.value,
                            method=method.value, knn=knn, seed=seed, force=force, progress=not quiet, engine=eng,
                            clusters=clusters, resume=resume)
    if rep.get("unchanged"):
        err.print("already clustered with these parameters (nothing to do)", highlight=False, markup=False)
    if not quiet:
        shown = dict(rep)
        for key in ("report", "histogram"):
            if shown.get(key):
                shown[key] = str(directory / shown[key])
        out.print(format_report(shown), highlight=False, markup=False)


@campaign_app.command("select")
def select(
    directory: Path = DirArg,
    batch_size: int = typer.Option(..., "--batch-size", "-k"),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Parquet (id + probs/logits list column, or id + top_classes/top_probs: top-k) or .npy (.npz of top-k) in the pool's order"),
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="strategy spec (default: `batchal strategies --recommended`)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="same seed, same batch (drawn and recorded when omitted)"),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help=".csv (ids), .jsonl, or .json (Label Studio tasks)"),
    id_column: Optional[str] = typer.Option(None, "--id-column", help="id column of the predictions (default: the pool's)"),
    probs_column: Optional[str] = typer.Option(None, "--probs-column"),
    logits_column: Optional[str] = typer.Option(None, "--logits-column"),
    multilabel: bool = typer.Option(False, "--multilabel", help="classes are independent binary problems"),
    data_column: Optional[List[str]] = typer.Option(None, "--data-column", help="Label Studio: pool column to put under data (repeatable)"),
    tasks_per_file: int = typer.Option(100_000, "--tasks-per-file", help="Label Studio: split the tasks into files of this many"),
    ls_from_name: str = typer.Option("label", "--ls-from-name", help="Label Studio: name of the Choices tag"),
    ls_to_name: Optional[str] = typer.Option(None, "--ls-to-name", help="Label Studio: the object tag it labels (default: the first --data-column, else image)"),
    config: Optional[Path] = typer.Option(None, "--config", help="a selection config (TOML): strategy, balance, thresholds, filters on the pool's columns, a query set, candidates, [dedup] (README, *One selection config*); stored with the round"),
    exclude_duplicates: bool = typer.Option(False, "--exclude-duplicates", help="keep items that are not their near-duplicate group's representative out of the batch (run `campaign dedup` first)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    engine: EngineName = typer.Option(EngineName.local, "--engine", help=ENGINE_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
):
    """Open the next round and select its batch (while it is open, the same command returns the same batch)."""
    from ..engines import check_strategy
    from ..selectors import RECOMMENDED

    # output options are checked before the round is opened, not after
    if out_path is not None and out_path.suffix.lower() not in (".csv", ".jsonl", ".json"):
        _fail(f"--out {out_path.name}: end it in .csv (ids), .jsonl or .json (Label Studio tasks)")
    if data_column and (out_path is None or out_path.suffix.lower() != ".json"):
        _fail("--data-column is for Label Studio tasks (--out FILE.json)")
    use_ray = engine is EngineName.ray or ray_address is not None
    with _errors():
        c = _open(directory)
        if use_ray and config is not None:
            raise BatchalInputError("--config: the ray engine does not apply selection configs; use --engine local")
        if use_ray:  # what can be refused is refused before a Ray instance is started
            if predictions is not None and not predictions.exists():
                raise BatchalInputError(f"--predictions: no such file {predictions}")
            check_strategy("ray", strategy or RECOMMENDED)
        with _engine_for(engine, ray_address, quiet) as eng:
            b = c.select(batch_size, predictions, strategy=strategy, seed=seed, id_column=id_column,
                         probs_column=probs_column, logits_column=logits_column, multilabel=multilabel,
                         engine=eng, config=config, exclude_duplicates=exclude_duplicates)
        # written after the commit: a crash here loses nothing, the same command writes it again
        files = c.export(b.round, out_path, data_columns=data_column or (), tasks_per_file=tasks_per_file,
                         from_name=ls_from_name, to_name=ls_to_name) if out_path else []
    if not quiet:
        where = f" -> {', '.join(map(str, files))}" if files else ""
        if b.reused:
            err.print(f"round {b.round} is open: its batch of {len(b):,} again{where}", highlight=False, markup=False)
        else:
            t = b.timings
            err.print(f"round {b.round}: selected {len(b):,} items ({b.strategy}, seed {b.seed}){where} "
                      f"[open {t['open']:.2f}s, read predictions {t['read']:.2f}s, select {t['select']:.2f}s, "
                      f"record {t['record']:.2f}s]",
                      highlight=False, markup=False)
            if b.diagnostics:
                from ..selectors.cluster_margin import describe_redundancy

                err.print(describe_redundancy(b.diagnostics), highlight=False, markup=False)


@campaign_app.command("label")
def label(
    directory: Path = DirArg,
    labels: Optional[Path] = typer.Argument(None, help="CSV (id,label; multi-label a|b), Parquet, or a Label Studio JSON export"),
    close: bool = typer.Option(False, "--close", help="close the open round; its unlabeled items return to the pool"),
    id_column: Optional[str] = typer.Option(None, "--id-column", help="default: the pool's id column"),
    label_column: str = typer.Option("label", "--label-column"),
    fmt: Optional[LabelFormat] = typer.Option(None, "--format", help="default: from the file's extension"),
    propagate: bool = typer.Option(False, "--propagate", help="then copy each near-duplicate group's bought label (its representative's, else its earliest-bought member's; `campaign dedup`) to its unlabeled members, recorded as propagated, not bought"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Record labels; importing the same labels again is a no-op."""
    with _errors():
        r = _open(directory).label(labels, close=close, id_column=id_column, label_column=label_column,
                                   format=fmt.value if fmt else None, propagate=propagate)
    if not quiet:
        msg = f"{r['new']:,} new labels"
        if r["same"]:
            msg += f", {r['same']:,} already recorded"
        for k, v in r["skipped"].items():
            msg += f", {v:,} {k} skipped"
        for rnd in r["closed"]:
            msg += f"; round {rnd} closed" + (f" ({r['returned']:,} unlabeled items back in the pool)" if r["returned"] else "")
        if propagate:
            msg += f"; {r['propagated']:,} labels propagated to near-duplicates"
        if r.get("open_round"):
            msg += f"; round {r['open_round']} still open"
        if close and not r["closed"]:
            msg += "; no open round to close"
        err.print(msg, highlight=False, markup=False)


class DedupMetric(str, Enum):
    cosine = "cosine"
    euclidean = "euclidean"


@campaign_app.command("dedup")
def dedup(
    directory: Path = DirArg,
    threshold: Optional[float] = typer.Option(None, "--threshold", callback=finite(0), help="largest distance between near-duplicates (1 - cos for cosine, L2 for euclidean); default 0.01 for cosine (BENCHMARKS.md), required for euclidean"),
    metric: Optional[DedupMetric] = typer.Option(None, "--metric", help="default: the clustering's (its kNN graph is reused), else cosine"),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="also write the groups here: Parquet with columns id, group, representative"),
    knn: int = typer.Option(20, "--knn", min=1, help="neighbours per item, only when no stored kNN graph covers the pool"),
    seed: int = typer.Option(0, "--seed", min=0, help="IVF k-means seed, only when the pool is searched"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Group near-duplicate items from the clustering's kNN graph (no second search); recorded in the campaign."""
    from ..io import check_output

    if out_path is not None:
        check_output(out_path, name="--out", suffixes=(".parquet",))
    with _errors():
        c = _open(directory)
        r = c.dedup(threshold, metric=metric.value if metric else None, knn=knn, seed=seed, progress=not quiet)
        if out_path is not None:  # after the commit: a crash here loses nothing, the same command writes it again
            from ..io import atomic_write

            src = directory / r["groups_file"]
            import shutil

            atomic_write(out_path, lambda tmp: shutil.copyfile(src, tmp), name="--out")
    if not quiet:
        what = "already recorded: " if r.get("unchanged") else ""
        err.print(f"dedup: {what}{r['n_rows']:,} items in {r['n_groups']:,} groups; {r['duplicates']:,} are "
                  f"near-duplicates of a representative ({r['source']})"
                  + (f" -> {out_path}" if out_path else ""), highlight=False, markup=False)


@campaign_app.command("undo")
def undo(
    directory: Path = DirArg,
    round_: Optional[int] = typer.Option(None, "--round", "-r", help="the latest round, named to be sure (refused if it is not the latest)"),
):
    """Undo the latest round: its batch, bought and propagated labels, signals and metrics; its items return to the pool."""
    with _errors():
        r = _open(directory).undo(round_)
    err.print(f"round {r['round']} undone: {r['selected']:,} items back in the pool, {r['labels']:,} bought and "
              f"{r['propagated']:,} propagated labels removed", highlight=False, markup=False)


@campaign_app.command("export")
def export(
    directory: Path = DirArg,
    round_: int = typer.Option(..., "--round", "-r"),
    out_path: Path = typer.Option(..., "--out", "-o"),
    fmt: Optional[ExportFormat] = typer.Option(None, "--format", help="default: from the extension (.csv, .jsonl, .json)"),
    data_column: Optional[List[str]] = typer.Option(None, "--data-column", help="Label Studio: pool column to put under data (repeatable)"),
    tasks_per_file: int = typer.Option(100_000, "--tasks-per-file"),
    ls_from_name: str = typer.Option("label", "--ls-from-name"),
    ls_to_name: Optional[str] = typer.Option(None, "--ls-to-name"),
):
    """Write a round's batch again (csv of ids, jsonl, or Label Studio tasks)."""
    with _errors():
        files = _open(directory).export(round_, out_path, format=fmt.value if fmt else None,
                                        data_columns=data_column or (), tasks_per_file=tasks_per_file,
                                        from_name=ls_from_name, to_name=ls_to_name)
    err.print(f"round {round_} -> {', '.join(map(str, files))}", highlight=False, markup=False)


@campaign_app.command("labels")
def labels_(
    directory: Path = DirArg,
    out_path: Path = typer.Option(..., "--out", "-o", help=".csv or .parquet"),
    bought_only: bool = typer.Option(False, "--bought-only", help="leave out the labels propagated to near-duplicates"),
):
    """Write the labeled set (id, label, round, propagated: false for bought labels)."""
    with _errors():
        c = _open(directory)
        p = c.write_labels(out_path, propagated=not bought_only)
    err.print(f"labels -> {p}", highlight=False, markup=False)


@campaign_app.command("status")
def status(
    directory: Path = DirArg,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also draw the rounds to this .png"),
):
    """Pool size, labeled, pending, and per round: selected, labeled, open or closed, label distribution."""
    from ..campaign.report import format_status, plot_status

    with _errors():
        s = _open(directory).status()
        if plot is not None:
            plot_status(s, plot)
    if as_json:
        print(json.dumps(s))
    else:
        out.print(format_status(s), highlight=False, markup=False)
    if plot is not None:
        err.print(f"plot -> {plot}", highlight=False, markup=False)


@campaign_app.command("metric")
def metric(
    directory: Path = DirArg,
    round_: Optional[int] = typer.Option(None, "--round", "-r", help="the round the measurement belongs to"),
    name: Optional[str] = typer.Option(None, "--name", help="e.g. val_acc"),
    value: Optional[float] = typer.Option(None, "--value", help="a finite number"),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="many at once: a CSV with the header round,name,value"),
):
    """Record a per-round measurement of your own (validation accuracy, ...); shown by status and report."""
    from ..campaign.metrics import read_metric_csv

    one = (round_, name, value)
    if csv_path is not None and any(x is not None for x in one):
        _fail("give --csv FILE, or --round, --name and --value, not both")
    if csv_path is None and any(x is None for x in one):
        _fail("give --round, --name and --value (or --csv FILE with round,name,value rows)")
    with _errors():
        c = _open(directory)
        rows = read_metric_csv(csv_path) if csv_path is not None else [one]
        r = c.record_metrics(rows)
    err.print(f"metrics: {r['new']:,} new, {r['replaced']:,} replaced, {r['same']:,} already recorded",
              highlight=False, markup=False)


@campaign_app.command("report")
def report(
    directory: Path = DirArg,
    out_path: Path = typer.Option(..., "--out", "-o", help="the .html file to write (one self-contained page)"),
):
    """One self-contained HTML page of the campaign: labels, batches, stopping signals, metrics."""
    from ..campaign.report_html import write_report

    if out_path.suffix.lower() not in (".html", ".htm"):
        _fail(f"--out {out_path.name}: end it in .html")
    with _errors():
        p = write_report(_open(directory), out_path)
    err.print(f"report -> {p}", highlight=False, markup=False)


@campaign_app.command("add")
def add(
    directory: Path = DirArg,
    pool: Path = typer.Option(..., "--pool", help="new items: Parquet (id + embedding) or .npy"),
    ids: Optional[Path] = typer.Option(None, "--ids", help="for a .npy pool: a .npy of ids (required: row numbers would clash)"),
    id_column: Optional[str] = typer.Option(None, "--id-column"),
    embedding_column: Optional[str] = typer.Option(None, "--embedding-column"),
):
    """Append items; each joins its nearest clustered neighbour's cluster, or a new singleton beyond the threshold."""
    with _errors():
        r = _open(directory).add(pool, id_column=id_column, embedding_column=embedding_column, ids=ids)
    msg = f"added {r['added']:,} items ({r['rows_after']:,} in the pool)"
    if r.get("unchanged"):
        msg = f"already added (shard {r['shard']}); nothing to do"
    elif "joined" in r:
        dist = r["distance"]
        msg += (f"; {r['joined']:,} joined the cluster of their nearest neighbour, {r['singletons']:,} became "
                f"singletons (farther than the threshold {r['threshold']:.4g}); {r['metric']} distance to the "
                f"neighbour: median {dist['median']:.4g}, 90% {dist['p90']:.4g}, max {dist['max']:.4g}")
    else:
        msg += "; not clustered yet"
    out.print(msg, highlight=False, markup=False)


@campaign_app.command("check")
def check(
    directory: Path = DirArg,
    no_hash: bool = typer.Option(False, "--no-hash", help="skip re-hashing the array files"),
):
    """Verify every invariant; exit 0 when all hold, 1 otherwise."""
    with _errors():
        problems = _open(directory).check(hashes=not no_hash)
    if problems:
        for p in problems:
            err.print(f"violated: {p}", highlight=False, markup=False)
        raise typer.Exit(1)
    out.print("ok: all invariants hold", highlight=False, markup=False)


from ._common import app  # noqa: E402  (registration last, after the commands exist)

app.add_typer(campaign_app, name="campaign")
