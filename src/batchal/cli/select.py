"""``batchal select`` and ``batchal strategies``: the next batch."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .._validation import BatchalInputError
from ._common import ENGINE_HELP, RAY_ADDRESS_HELP, EngineName, _engine, _fail, app, err, out


@app.command()
def select(
    strategy: str = typer.Option(..., "--strategy", "-s", help="NAME or NAME:key=value[:key=value...], e.g. cluster-margin:margin_factor=2 (see `batchal strategies`)"),
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
    engine: EngineName = typer.Option(EngineName.local, "--engine", help=ENGINE_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
):
    """Pick the next batch of rows to label."""
    from ..io import load_array, save_indices
    from ..selectors.spec import parse_spec
    from .._validation import check_ids

    try:
        spec = parse_spec(strategy)
    except BatchalInputError as exc:
        _fail(str(exc))
    if out_path.suffix.lower() not in (".npy", ".csv"):
        _fail(f"--out must end in .npy or .csv; got {out_path.name}")
    if probs is not None and logits is not None:
        _fail("give --probs or --logits, not both")
    # command-line options are defaults; a value in the spec wins
    defaults = dict(margin_factor=margin_factor, max_candidate_share=max_candidate_share,
                    partitions=partitions, progress=not quiet)
    if engine is EngineName.ray or ray_address is not None:
        return _select_ray(spec, batch_size, out_path, probs, logits, embeddings, clusters, labeled, ids, defaults,
                           multilabel, aggregate, seed, quiet, engine, ray_address)
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
        from ..selectors import Pool

        selector = spec.make(random_state=seed, defaults=defaults)
        idx = selector.select(Pool(multilabel=multilabel, aggregate=aggregate, **arrays), batch_size)
        t2 = time.perf_counter()
        if id_arr is not None and id_arr.shape[0] <= int(idx.max()):
            raise BatchalInputError(f"--ids has {id_arr.shape[0]} rows but the pool has more")
        save_indices(out_path, idx, ids=id_arr)
    except BatchalInputError as exc:
        _fail(str(exc))
    if not quiet:
        err.print(
            f"{spec}: selected {idx.shape[0]:,} rows -> {out_path} "
            f"(load {t1 - t0:.2f}s, select {t2 - t1:.2f}s)",
            highlight=False,
        )


def _select_ray(spec, batch_size, out_path, probs, logits, embeddings, clusters, labeled, ids, defaults,
                multilabel, aggregate, seed, quiet, engine, ray_address):
    """``select --engine ray``: predictions are read and scored by the Ray workers where they lie."""
    from ..io import load_array, save_indices
    from .._validation import check_ids

    if embeddings is not None:
        _fail("--embeddings: the ray engine runs random, margin, entropy, least-confidence and cluster-margin, "
              "which do not read embeddings; use --engine local")
    eng = _engine(engine, ray_address, quiet)
    t0 = time.perf_counter()
    try:
        with eng:
            idx = eng.select(spec, batch_size, probs=probs, logits=logits,
                             clusters=load_array(clusters, name="--clusters") if clusters else None,
                             labeled=load_array(labeled, name="--labeled") if labeled else None,
                             multilabel=multilabel, aggregate=aggregate, seed=seed, progress=not quiet,
                             defaults=defaults)
        id_arr = check_ids(load_array(ids, name="--ids")) if ids else None
        if id_arr is not None and id_arr.shape[0] <= int(idx.max()):
            raise BatchalInputError(f"--ids has {id_arr.shape[0]} rows but the pool has more")
        save_indices(out_path, idx, ids=id_arr)
    except BatchalInputError as exc:
        _fail(str(exc))
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
        doc = (REGISTRY[name].__doc__ or "").strip().splitlines()[0]
        out.print(f"[bold]{name}[/]: {doc}", highlight=False)
    out.print(f"recommended when you do not know your pool: [bold]{RECOMMENDED}[/]", highlight=False)
