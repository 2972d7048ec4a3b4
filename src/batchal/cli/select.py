"""``batchal select`` and ``batchal strategies``: the next batch."""
from __future__ import annotations

import re
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.markup import escape

from .._validation import BatchalInputError
from ._common import DEFAULT_SEED, QUIET_HELP, SEED_HELP, _fail, app, err, finite, option_names, out
from ._common import ENGINE_HELP, RAY_ADDRESS_HELP, EngineName, _engine


class Aggregate(str, Enum):
    min = "min"
    mean = "mean"


@app.command()
def select(
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="NAME or NAME:key=value[:key=value...], e.g. cluster-margin:margin_factor=2 or margin:balance=uniform (see `batchal strategies`); required unless --config gives it"),
    config: Optional[Path] = typer.Option(None, "--config", help="a selection config (TOML): strategy, balance, score thresholds, metadata filters, a query set, [weights] (README, *One selection config*)"),
    batch_size: int = typer.Option(..., "--batch-size", "-k", min=1, help="how many rows to select"),
    out_path: Path = typer.Option(..., "--out", "-o", help="selected row indices, int64 in selection order (.npy or .csv)"),
    probs: Optional[Path] = typer.Option(None, "--probs", help="(n, C) predicted probabilities, or top-k predictions (Parquet columns / .npz arrays top_classes and top_probs)"),
    logits: Optional[Path] = typer.Option(None, "--logits", help="(n, C) logits (softmax applied; sigmoid with --multilabel)"),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="(n, d) embeddings (coreset, badge, and the near-duplicate test of cluster-margin:...:dup=)"),
    scores: Optional[Path] = typer.Option(None, "--scores", help="(n,) precomputed uncertainty, smaller = more uncertain (margin, cluster-margin without tol)"),
    n_classes: Optional[int] = typer.Option(None, "--n-classes", min=1, help="top-k --probs: size of the class vocabulary (class ids are checked against it; default: the file's n_classes metadata)"),
    clusters: Optional[Path] = typer.Option(None, "--clusters", help="(n,) int cluster ids from `batchal cluster` (cluster-margin)"),
    labeled: Optional[Path] = typer.Option(None, "--labeled", help="int row indices already labeled (a batch file of an earlier round works)"),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="per-row metadata (Parquet, one row per pool row) for balance_by=COLUMN"),
    ids: Optional[Path] = typer.Option(None, "--ids", help="(n,) item ids, one per pool row; a .csv output then also lists the ids"),
    margin_factor: float = typer.Option(10.0, "--margin-factor", callback=finite(1), help="cluster-margin: k_m = factor x batch size"),
    max_candidate_share: float = typer.Option(0.1, "--max-candidate-share", callback=finite(0, 1, lo_open=True), help="cluster-margin: cap k_m at this share of the unlabeled rows (not below 2 x batch size); 1 = the paper's rule"),
    partitions: int = typer.Option(1, "--partitions", min=1, help="badge: split the pool into this many random parts"),
    multilabel: bool = typer.Option(False, "--multilabel", help="columns are independent binary problems"),
    aggregate: Aggregate = typer.Option(Aggregate.min, "--aggregate", help="multi-label margin over classes"),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", min=0, help=SEED_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
    engine: EngineName = typer.Option(EngineName.local, "--engine", help=ENGINE_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
):
    """Pick the next batch of rows to label."""
    from ..io import check_output, load_array, load_predictions, save_indices
    from ..selectors.spec import parse_spec
    from ..topk import check_scores
    from .._validation import check_ids, unread_input_warnings

    cfg = None
    if config is not None:
        from ..selection_config import load_config

        try:
            cfg = load_config(config)
        except BatchalInputError as exc:
            _fail(str(exc))
        if strategy is not None and cfg.strategy is not None:
            _fail(f"--strategy: --config {config} gives a strategy too; give it in one place")
        if engine is EngineName.ray or ray_address is not None:
            _fail("--config: the ray engine does not apply selection configs; use --engine local")
    if strategy is None and (cfg is None or cfg.strategy is None):
        _fail("--strategy: give a strategy spec (or strategy = \"SPEC\" in --config)")
    try:
        spec = parse_spec(strategy if strategy is not None else cfg.strategy)
    except BatchalInputError as exc:
        _fail(f"--strategy: {exc}")
    check_output(out_path, name="--out", suffixes=(".npy", ".csv"))
    given = [o for o, v in (("--probs", probs), ("--logits", logits), ("--scores", scores)) if v is not None]
    if len(given) > 1:
        _fail(f"give one of --probs, --logits or --scores, not {' and '.join(given)}")
    # command-line options are defaults; a value in the spec wins
    defaults = dict(margin_factor=margin_factor, max_candidate_share=max_candidate_share,
                    partitions=partitions, progress=not quiet)
    if engine is EngineName.ray or ray_address is not None:
        if scores is not None:
            _fail("--scores: the ray engine scores predictions where they lie; with precomputed scores use --engine local")
        return _select_ray(spec, batch_size, out_path, probs, logits, embeddings, clusters, labeled, ids, defaults,
                           multilabel, aggregate, seed, quiet, engine, ray_address, n_classes)
    t0 = time.perf_counter()
    try:
        arrays = dict(
            probs=load_predictions(probs, name="--probs", multilabel=multilabel, n_classes=n_classes) if probs else None,
            logits=load_array(logits, name="--logits") if logits else None,
            embeddings=load_array(embeddings, name="--embeddings") if embeddings else None,
            clusters=load_array(clusters, name="--clusters") if clusters else None,
            labeled=load_array(labeled, name="--labeled") if labeled else None,
        )
        score_arr = check_scores(load_array(scores, name="--scores"), "--scores") if scores else None
        id_arr = check_ids(load_array(ids, name="--ids", text=True)) if ids else None
        t1 = time.perf_counter()
        from ..io import ParquetColumns
        from ..selectors import Pool

        meta = ParquetColumns(metadata, "--metadata") if metadata is not None else None
        pool = Pool(multilabel=multilabel, aggregate=aggregate.value, scores=score_arr, metadata=meta, **arrays)
        if cfg is not None:
            from ..selection_config import apply_config

            # the config's rules narrow the candidates: rows outside them count as labeled for this pick
            spec, pool.labeled_mask = apply_config(cfg, pool, arrays["embeddings"], strategy=strategy,
                                                   resolve_ids=None if id_arr is None else _id_rows(id_arr))
        selector = spec.make(random_state=seed, defaults=defaults)
        if id_arr is not None and id_arr.shape[0] != pool.n:
            raise BatchalInputError(f"--ids has {id_arr.shape[0]:,} rows but the pool has {pool.n:,}; "
                                    "give one id per pool row")
        read_by_config = ("embeddings",) if cfg is not None and cfg.similar is not None else ()
        for msg in unread_input_warnings({k: v for k, v in arrays.items() if k not in read_by_config},
                                         spec.requires, spec.name,
                                         labels={k: f"--{k}" for k in arrays}):
            err.print(f"[bold yellow]warning:[/] {escape(msg)}", highlight=False)
        idx = selector.select(pool, batch_size)
        t2 = time.perf_counter()
        save_indices(out_path, idx, ids=id_arr, name="--out")
    except BatchalInputError as exc:
        _fail(option_names(str(exc)))
    if not quiet:
        extra = ""
        if getattr(selector, "candidates_", None) is not None:  # cluster-margin: the setting that matters most
            extra = (f"; k_m = {selector.candidates_.shape[0]:,} low-margin candidates in "
                     f"{selector.n_candidate_clusters_:,} clusters")
        err.print(
            f"{spec}: selected {idx.shape[0]:,} rows -> {out_path} (seed {seed}{extra}; "
            f"load {t1 - t0:.2f}s, select {t2 - t1:.2f}s)",
            highlight=False, markup=False,
        )
        diag = getattr(selector, "diagnostics_", None) or {}
        if "k_m" in diag:  # cluster-margin's candidates (absent when typical= took the whole batch)
            from ..selectors.cluster_margin import describe_redundancy

            err.print(describe_redundancy(diag), highlight=False, markup=False)
        if diag.get("typical"):
            err.print(f"typical={selector.typical}: the first {diag['typical']:,} rows are typiclust's (the labeled "
                      f"set holds fewer than {selector.typical:,} rows)", highlight=False, markup=False)
        if "visited_clusters" in diag:  # typiclust
            err.print(f"typiclust: {diag['visited_clusters']:,} clusters visited; {diag['uncovered_clusters_before']:,} "
                      f"clusters held no label before this batch", highlight=False, markup=False)
        if getattr(selector, "balance_", None):
            from ..selectors.balance import describe_balance

            err.print(describe_balance(selector.balance_), highlight=False, markup=False)


def _select_ray(spec, batch_size, out_path, probs, logits, embeddings, clusters, labeled, ids, defaults,
                multilabel, aggregate, seed, quiet, engine, ray_address, n_classes=None):
    """``select --engine ray``: predictions are read and scored by the Ray workers where they lie."""
    from ..io import load_array, save_indices
    from .._validation import check_ids

    if embeddings is not None and "embeddings" not in spec.requires:
        _fail(f"--embeddings: {spec.text} does not read embeddings on the ray engine (only cluster-margin's dup= "
              "near-duplicate test does); drop --embeddings, or use --engine local for coreset and badge")
    for opt, path in (("--probs", probs), ("--logits", logits), ("--clusters", clusters), ("--labeled", labeled),
                      ("--ids", ids), ("--embeddings", embeddings)):
        if path is not None and not path.exists():  # before starting (or joining) a Ray instance
            _fail(f"{opt}: no such file {path}")
    from ..engines import check_strategy

    try:
        check_strategy("ray", spec)  # an undistributed strategy is refused before Ray starts
    except BatchalInputError as e:
        _fail(str(e))
    eng = _engine(engine, ray_address, quiet)
    t0 = time.perf_counter()
    try:
        with eng:
            idx = eng.select(spec, batch_size, probs=probs, logits=logits,
                             clusters=load_array(clusters, name="--clusters") if clusters else None,
                             labeled=load_array(labeled, name="--labeled") if labeled else None,
                             embeddings=load_array(embeddings, name="--embeddings") if embeddings else None,
                             multilabel=multilabel, aggregate=aggregate.value, seed=seed, progress=not quiet,
                             defaults=defaults, n_classes=n_classes)
        id_arr = check_ids(load_array(ids, name="--ids", text=True)) if ids else None
        if id_arr is not None and id_arr.shape[0] <= int(idx.max()):
            raise BatchalInputError(f"--ids has {id_arr.shape[0]} rows but the pool has more")
        save_indices(out_path, idx, ids=id_arr, name="--out")
    except BatchalInputError as exc:
        _fail(option_names(str(exc)))
    if not quiet:
        err.print(f"{spec}: selected {idx.shape[0]:,} rows -> {out_path} (ray, {time.perf_counter() - t0:.2f}s)",
                  highlight=False)


@app.command()
def strategies(
    recommended: bool = typer.Option(False, "--recommended", help="print only the recommended strategy spec (for a pool you do not know)"),
):
    """List the available selection strategies, or print the recommended spec."""
    from ..selectors import RECOMMENDED, REGISTRY

    if recommended:
        print(RECOMMENDED)
        return
    for name in sorted(REGISTRY):
        doc = _plain((REGISTRY[name].__doc__ or "").strip().splitlines()[0])
        out.print(f"[bold]{name}[/]: {escape(doc)}", highlight=False)
    out.print(f"recommended when you do not know your pool: [bold]{escape(str(RECOMMENDED))}[/]", highlight=False)


def _id_rows(ids: np.ndarray):
    """``--ids`` as a lookup: item ids -> pool rows (``-1`` for an id not in the pool), one hash join."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.array(np.asarray(ids).astype(str))
    return lambda query: pc.index_in(pa.array(np.asarray(query).astype(str)), value_set=table).fill_null(-1) \
        .to_numpy(zero_copy_only=False)


def _plain(text: str) -> str:
    """Docstring reST as plain text: ``x`` and :role:`x` become x."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)
