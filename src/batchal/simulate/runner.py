"""Replay batch active learning on a labeled dataset.

Each (trial, strategy) run: a uniform random seed set (the same for every
strategy of a trial), a model trained on it, then rounds of
select -> reveal labels -> retrain -> evaluate on the test split. As in the
paper, Cluster-Margin clusters the pool once per trial, on the embedding of
the model trained on the seed set. Runs execute in parallel processes.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

import numpy as np

from .._validation import BatchalInputError
from ..selectors import Pool
from ..selectors.spec import parse_spec, split_specs
from .datasets import Dataset
from .models import MODELS, make_model


@dataclass
class SimulationConfig:
    """Settings of a simulated campaign (see ``batchal simulate --help``)."""

    strategies: list = field(default_factory=lambda: ["cluster-margin", "margin", "random"])
    seed_size: int = 100
    batch_size: int = 100
    rounds: int = 5
    trials: int = 3
    model: str = "logreg"
    epochs: int = 30
    max_steps: int | None = 1000
    margin_factor: float = 10.0
    max_candidate_share: float | None = 0.1
    mean_cluster_size: float = 10.0
    metric: str = "cosine"
    cluster_space: str = "embedding"
    cluster_method: str = "auto"
    knn: int = 50
    badge_partitions: int = 1
    seed: int = 0
    n_jobs: int | None = None
    target: float | None = None
    progress: bool = True

    def validate(self, n_pool: int) -> None:
        if isinstance(self.strategies, str):
            self.strategies = [s.text for s in split_specs(self.strategies)]
        # every spec parses, and labels (the specs as written, whitespace removed) are distinct
        self.strategies = [s.text for s in split_specs(",".join(str(s) for s in self.strategies))]
        if self.cluster_space not in ("embedding", "input"):
            raise BatchalInputError(f"cluster_space must be 'embedding' or 'input'; got {self.cluster_space!r}")
        if self.model not in MODELS:
            raise BatchalInputError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise BatchalInputError(f"max_steps must be >= 1 (or None for no cap); got {self.max_steps}")
        for name in ("seed_size", "batch_size", "rounds", "trials", "epochs"):
            if int(getattr(self, name)) < 1:
                raise BatchalInputError(f"{name} must be >= 1; got {getattr(self, name)}")
        need = self.seed_size + self.batch_size * self.rounds
        if need > n_pool:
            raise BatchalInputError(
                f"seed size + batch size x rounds = {need:,} labels, more than the pool of {n_pool:,}"
            )


def _metric(dataset: Dataset, P: np.ndarray) -> float:
    """Accuracy (multi-class) or macro mAP over classes present in the test set (multi-label)."""
    if dataset.multilabel:
        from sklearn.metrics import average_precision_score

        keep = dataset.y_test.sum(0) > 0
        return float(average_precision_score(dataset.y_test[:, keep], P[:, keep], average="macro"))
    return float((P.argmax(1) == dataset.y_test).mean())


def _limit_threads(n: int | None) -> None:
    if not n:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    try:
        import numba

        numba.set_num_threads(n)
    except Exception:  # pragma: no cover - numba's pool may already be sized
        pass


def cluster_purity(clusters: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose label is the majority label of their cluster (a diagnostic of the embedding)."""
    cl_lab, counts = np.unique(np.stack([clusters.astype(np.int64), y.astype(np.int64)], 1), axis=0,
                               return_counts=True)
    best = np.zeros(int(clusters.max()) + 1, dtype=np.int64)
    np.maximum.at(best, cl_lab[:, 0], counts)
    return float(best.sum() / clusters.shape[0])


def trial_seed(base: int, trial: int) -> int:
    return int(base) * 10_007 + int(trial)


def selector_defaults(cfg: SimulationConfig) -> dict:
    """Configuration values a strategy spec falls back to for parameters it does not set."""
    return {"margin_factor": cfg.margin_factor, "max_candidate_share": cfg.max_candidate_share,
            "partitions": cfg.badge_partitions, "progress": False}


def copy_share(source: np.ndarray, labeled_before: np.ndarray, batch: np.ndarray) -> float:
    """Share of a batch that copies an item already labeled or already in the batch (redundant pools)."""
    seen = set(source[labeled_before].tolist())
    dup = 0
    for s in source[batch].tolist():
        dup += s in seen
        seen.add(s)
    return dup / max(batch.shape[0], 1)


def run_one(dataset: Dataset, cfg: SimulationConfig, trial: int, strategy: str, threads: int | None = None):
    """One strategy (a spec) over all rounds of one trial; returns (rows, diagnostics)."""
    _limit_threads(threads)
    spec = parse_spec(strategy)
    ts = trial_seed(cfg.seed, trial)
    rng = np.random.default_rng(ts)
    X, y = dataset.X, dataset.y
    n = X.shape[0]
    labeled = rng.choice(n, size=cfg.seed_size, replace=False)
    model = make_model(cfg.model, dataset.n_classes, dataset.multilabel, seed=ts, threads=threads,
                       epochs=cfg.epochs, max_steps=cfg.max_steps)
    model.set_pool(X)
    model.fit(X[labeled], y[labeled])
    diag = {"trial": trial, "strategy": strategy}
    clusters = None
    if "clusters" in spec.requires:
        from ..clustering import AverageLinkage

        t0 = time.perf_counter()
        hac = AverageLinkage(mean_cluster_size=cfg.mean_cluster_size, metric=cfg.metric,
                             method=cfg.cluster_method, knn=cfg.knn, random_state=ts)
        hac.fit(model.embed(X) if cfg.cluster_space == "embedding" else X)
        clusters = hac.labels_
        sizes = np.bincount(clusters)
        diag.update(cluster_seconds=time.perf_counter() - t0, n_clusters=int(sizes.shape[0]),
                    threshold=float(hac.threshold_), cluster_method=hac.method_,
                    singleton_share=float((sizes == 1).mean()), cluster_sizes=sizes.tolist(),
                    purity=None if dataset.multilabel else cluster_purity(clusters, y))
    rows = []

    def record(r, sel_seconds, batch=None, P=None):
        row = dict(strategy=strategy, trial=trial, round=r, n_labeled=int(labeled.shape[0]),
                   accuracy=_metric(dataset, model.predict_proba(dataset.X_test)),
                   select_seconds=sel_seconds)
        if batch is not None and P is not None:
            if dataset.multilabel:
                m = np.abs(2.0 * P[batch] - 1.0).min(1)
            else:
                top2 = np.sort(P[batch], axis=1)[:, -2:]
                m = top2[:, 1] - top2[:, 0]
            row["batch_mean_margin"] = float(m.mean())
            if not dataset.multilabel:
                freq = np.bincount(y[batch], minlength=dataset.n_classes) / batch.shape[0]
                nz = freq[freq > 0]
                row["batch_label_entropy"] = float(-(nz * np.log(nz)).sum())
            if clusters is not None:
                row["batch_clusters"] = int(np.unique(clusters[batch]).shape[0])
            if dataset.source is not None:
                row["batch_copy_share"] = copy_share(dataset.source, labeled[: labeled.shape[0] - batch.shape[0]], batch)
            row.update({f"diag_{k}": v for k, v in sel_diag.items()})
        rows.append(row)

    sel_diag: dict = {}
    record(0, 0.0)
    for r in range(1, cfg.rounds + 1):
        P = model.predict_proba(X)
        E = model.embed(X) if "embeddings" in spec.requires else None
        t0 = time.perf_counter()
        selector = spec.make(random_state=ts * 100 + r, defaults=selector_defaults(cfg))
        batch = selector.select(Pool(probs=P, embeddings=E, clusters=clusters, labeled=labeled,
                                     multilabel=dataset.multilabel), cfg.batch_size)
        dt = time.perf_counter() - t0
        sel_diag = dict(getattr(selector, "diagnostics_", {}))
        labeled = np.concatenate([labeled, batch])
        model.fit(X[labeled], y[labeled])
        record(r, dt, batch, P)
    return rows, diag


def full_pool_score(dataset: Dataset, cfg: SimulationConfig, threads: int | None = None) -> float:
    """Test metric of the same model trained on the whole labeled pool (the reference for targets)."""
    _limit_threads(threads)
    model = make_model(cfg.model, dataset.n_classes, dataset.multilabel, seed=cfg.seed, threads=threads,
                       reference=True)
    model.set_pool(dataset.X)
    model.fit(dataset.X, dataset.y)
    return _metric(dataset, model.predict_proba(dataset.X_test))


_WORKER_DATASET: Dataset | None = None


def _init_worker(dataset: Dataset) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = dataset


def _worker_run(cfg, trial, strategy):
    return run_one(_WORKER_DATASET, cfg, trial, strategy, threads=1)


def _worker_full(cfg):
    return full_pool_score(_WORKER_DATASET, cfg, threads=1)


@dataclass
class SimulationResult:
    """Rows of per-round results plus per-run diagnostics."""

    config: SimulationConfig
    dataset: str
    rows: list
    diagnostics: list
    full_score: float
    metric_name: str
    seconds: float
    redundancy: dict | None = None

    def to_frame(self):
        import pandas as pd  # optional; only for users who want a DataFrame

        return pd.DataFrame(self.rows)


def simulate(dataset: Dataset, cfg: SimulationConfig, *, out_dir=None) -> SimulationResult:
    """Run every (trial, strategy) pair, in parallel processes when ``cfg.n_jobs > 1``.

    Writes ``results.csv``, ``curves.png`` and ``summary.md`` to ``out_dir`` when given.
    """
    cfg.validate(dataset.X.shape[0])
    # longest first (greedy diversity selectors, then cluster-margin's clustering), so
    # no core idles at the end behind one long job
    cost = {"coreset": 0, "badge": 1, "cluster-margin": 2}
    jobs = sorted(((t, s) for t in range(cfg.trials) for s in cfg.strategies),
                  key=lambda j: (cost.get(parse_spec(j[1]).name, 3), j[0]))
    n_jobs = cfg.n_jobs or min(os.cpu_count() or 1, len(jobs) + 1)
    t_start = time.perf_counter()
    rows, diags = [], []
    progress = _progress(cfg.progress, len(jobs) + 1)
    if n_jobs <= 1:
        full = full_pool_score(dataset, cfg)
        progress.advance()
        for t, s in jobs:
            r, d = run_one(dataset, cfg, t, s)
            rows += r
            diags.append(d)
            progress.advance()
    else:
        import multiprocessing as mp

        # spawn: numba's and torch's thread pools are not fork-safe once started;
        # the dataset travels once per worker (initializer), not once per job
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(dataset,)) as ex:
            fut_full = ex.submit(_worker_full, cfg)
            futs = [ex.submit(_worker_run, cfg, t, s) for t, s in jobs]
            for f in as_completed(futs + [fut_full]):
                if f is not fut_full:
                    r, d = f.result()
                    rows += r
                    diags.append(d)
                progress.advance()
            full = fut_full.result()
    progress.close()
    rows.sort(key=lambda r: (cfg.strategies.index(r["strategy"]), r["trial"], r["round"]))
    diags.sort(key=lambda d: (cfg.strategies.index(d["strategy"]), d["trial"]))
    res = SimulationResult(cfg, dataset.name, rows, diags, full,
                           "mAP" if dataset.multilabel else "accuracy", time.perf_counter() - t_start,
                           redundancy=dataset.redundancy)
    if out_dir is not None:
        from .report import write_outputs

        write_outputs(res, out_dir)
    return res


class _progress:
    """A rich progress bar over runs that ``enabled=False`` silences."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self.bar = Progress("simulating", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("runs", total=total)

    def advance(self):
        if self.bar:
            self.bar.advance(self.task)

    def close(self):
        if self.bar:
            self.bar.stop()


def config_dict(cfg: SimulationConfig) -> dict:
    return asdict(cfg)
