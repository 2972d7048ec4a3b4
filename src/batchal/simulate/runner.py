"""Replay batch active learning on a labeled dataset.

Each (trial, strategy) run: a uniform random seed set (the same for every
strategy of a trial), a model trained on it, then rounds of
select -> reveal labels -> retrain -> evaluate on the test split. As in the
paper, Cluster-Margin clusters the pool once per trial, on the embedding of
the model trained on the seed set; that clustering is computed once and shared
by every spec of the trial (once per dataset, and cached on disk, where the
embedding does not depend on the labels: see :mod:`.clusters`). Runs execute
in parallel processes.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._validation import BatchalInputError, check_count, check_number
from ..io import atomic_write
from ..selectors import Pool
from ..selectors.spec import parse_spec, split_specs
from . import clusters as _clusters
from .clusters import cluster_purity  # noqa: F401  (public name kept here)
from .datasets import Dataset
from ..stopping import StopTracker
from .models import MODELS, TRAINING, make_model


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
    max_steps: int | None = None
    training: str = "budget"
    min_steps: int = 20_000
    warm_start: bool = True
    whiten: bool = False
    #: logreg: L-BFGS stopping tolerance on the (scaled) gradient, as scikit-learn's ``tol``
    tol: float = 1e-4
    margin_factor: float = 10.0
    max_candidate_share: float | None = 0.1
    mean_cluster_size: float = 10.0
    metric: str = "cosine"
    cluster_space: str = "embedding"
    cluster_method: str = "auto"
    knn: int = 50
    cluster_cache: bool = True
    #: reuse the whole-pool reference score of the same pool and training rule from the cache
    reference_cache: bool = True
    badge_partitions: int = 1
    seed: int = 0
    n_jobs: int | None = None
    target: float | None = None
    progress: bool = True
    #: copy each batch item's label to its near-duplicate group at this distance (None: off; .propagate)
    propagate: float | None = None
    propagate_metric: str = "cosine"

    def validate(self, n_pool: int) -> None:
        if isinstance(self.strategies, str):
            self.strategies = [s.text for s in split_specs(self.strategies)]
        # every spec parses, and labels (the specs as written, whitespace removed) are distinct
        self.strategies = [s.text for s in split_specs(",".join(str(s) for s in self.strategies))]
        if self.cluster_space not in ("embedding", "input"):
            raise BatchalInputError(f"cluster_space must be 'embedding' or 'input'; got {self.cluster_space!r}")
        if self.model not in MODELS:
            raise BatchalInputError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.training not in TRAINING:
            raise BatchalInputError(f"training must be one of {', '.join(TRAINING)}; got {self.training!r}")
        if self.max_steps is not None:
            check_count(self.max_steps, "max_steps", 1, note="or None for no cap")
        check_number(self.tol, "tol", 0, open_low=True)
        check_count(self.min_steps, "min_steps", 0)
        for name in ("seed_size", "batch_size", "rounds", "trials", "epochs", "knn", "badge_partitions"):
            check_count(getattr(self, name), name, 1)
        check_count(self.seed, "seed", 0)
        if self.n_jobs is not None:
            check_count(self.n_jobs, "n_jobs", 1)
        # read by the specs that cluster or select by cluster-margin only, but checked for every run, before any work
        check_number(self.margin_factor, "margin_factor", 1)
        if self.max_candidate_share is not None:
            check_number(self.max_candidate_share, "max_candidate_share", 0, 1, open_low=True)
        check_number(self.mean_cluster_size, "mean_cluster_size", 1)
        if self.target is not None:
            check_number(self.target, "target", 0, 1, note="a test metric to reach")
        if self.propagate is not None:
            from ..dedup import check_dedup_args

            check_dedup_args(self.propagate, self.propagate_metric)
        need = self.seed_size + self.batch_size * self.rounds
        if need > n_pool:
            raise BatchalInputError(
                f"seed size + batch size x rounds = {need:,} labels, more than the pool of {n_pool:,}"
            )


#: classes whose recall is reported as the rare-class recall (the rarest in the pool)
N_RARE = 5


def rare_classes(dataset: Dataset) -> np.ndarray:
    """The ``min(N_RARE, n_classes // 2)`` classes rarest in the pool (ties: lower class id), multi-class only."""
    counts = np.bincount(np.asarray(dataset.y), minlength=dataset.n_classes)
    present = np.flatnonzero(counts)
    k = max(1, min(N_RARE, present.shape[0] // 2))
    return present[np.argsort(counts[present], kind="stable")[:k]]


def evaluate(dataset: Dataset, P: np.ndarray, rare: np.ndarray | None = None) -> dict:
    """Test metrics of predictions ``P`` on the test split.

    Multi-class: ``accuracy`` (the headline), ``balanced_accuracy`` (mean recall
    over the classes in the test split) and ``rare_recall`` (mean recall of the
    pool's rarest classes, :func:`rare_classes`). Multi-label: ``accuracy`` holds
    the macro average precision over classes present in the test split (the
    headline mAP, as Open Images reports), ``micro_ap`` the pooled one.
    """
    yt = dataset.y_test
    if dataset.multilabel:
        macro, micro = average_precision(yt, P)
        return {"accuracy": macro, "micro_ap": micro}
    pred = P.argmax(1)
    n_c = max(dataset.n_classes, P.shape[1])
    hit = np.bincount(yt[pred == yt], minlength=n_c).astype(float)
    tot = np.bincount(yt, minlength=n_c).astype(float)
    recall = np.where(tot > 0, hit / np.maximum(tot, 1), np.nan)
    out = {"accuracy": float((pred == yt).mean()), "balanced_accuracy": float(np.nanmean(recall))}
    if rare is not None:
        r = recall[rare]
        out["rare_recall"] = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
    return out


def average_precision(Y, P) -> tuple[float, float]:
    """Macro and pooled (micro) average precision of scores ``P`` for 0/1 labels ``Y`` (n, C).

    The macro average runs over the classes with a positive in ``Y``. Equal to
    scikit-learn's ``average_precision_score`` (``average="macro"`` and
    ``"micro"`` on those classes), ties included: its step-wise sum over
    thresholds is the mean, over the positives, of the precision at each
    positive's score, ``tp(>= s) / n(>= s)``. Computed from one sort per class
    and one of all scores, not one sort per class per call of scikit-learn's
    binary routine, which on 20,000 x 1,000 (strided columns) took 70 s.
    """
    Y = np.asarray(Y)
    P = np.asarray(P)
    keep = np.flatnonzero(Y.sum(0, dtype=np.int64) > 0)
    S = np.ascontiguousarray(P[:, keep].T) + 0  # (classes, n); + 0 turns -0.0 into 0.0 as == does
    cls, rows = np.nonzero(Y[:, keep].T != 0)  # positives, class-major
    s = S[cls, rows]
    S.sort(axis=1)
    n = S.shape[1]
    ge = np.empty(s.shape[0], dtype=np.int64)  # scores of the class >= each positive's score
    tp = np.empty(s.shape[0], dtype=np.int64)  # positives of the class scoring >= it
    cut = np.searchsorted(cls, np.arange(keep.shape[0] + 1))
    for k in range(keep.shape[0]):
        a, b = cut[k], cut[k + 1]
        sk = s[a:b]
        ge[a:b] = n - np.searchsorted(S[k], sk, side="left")
        tp[a:b] = (b - a) - np.searchsorted(np.sort(sk), sk, side="left")
    prec = tp / ge
    macro = float(np.mean(np.add.reduceat(prec, cut[:-1]) / np.diff(cut)))
    # pooled: one ranking of every (row, class) score
    flat = np.sort(S, axis=None)
    sp = np.sort(s)
    micro = float(np.mean((s.shape[0] - np.searchsorted(sp, s, side="left"))
                          / (flat.shape[0] - np.searchsorted(flat, s, side="left"))))
    return macro, micro


def _metric(dataset: Dataset, P: np.ndarray) -> float:
    """The headline metric: accuracy (multi-class) or macro mAP (multi-label)."""
    return evaluate(dataset, P)["accuracy"]


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


@contextmanager
def _single_threaded(torch_model: bool = False):
    """One BLAS / numba / torch thread inside, as in every worker process; the caller's settings after.

    ``torch_model``: the run fits a torch model, so torch is imported first and its thread count restored.

    Why: a fit rounds differently with its thread count, so without this a serial run (``n_jobs=1``)
    gave other numbers than the same run in workers (measured on a 32-class pool of 12,000 rows: 25 of
    42 accuracies moved, by up to 0.37 points), and the small fits of a simulation lose more to thread
    hand-offs than they gain (that run took 21 s serially against 4.8 s in two workers).
    """
    from threadpoolctl import threadpool_limits

    numba = sys.modules.get("numba")
    numba_threads = numba.get_num_threads() if numba is not None else None
    if torch_model:
        import torch  # noqa: F401  (its default thread count is read before the run sets one)
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(1):
        try:
            yield
        finally:
            if numba_threads is not None:
                numba.set_num_threads(numba_threads)
            if torch_threads is not None:
                torch.set_num_threads(torch_threads)


def trial_seed(base: int, trial: int) -> int:
    return int(base) * 10_007 + int(trial)


def selector_defaults(cfg: SimulationConfig) -> dict:
    """Configuration values a strategy spec falls back to for parameters it does not set."""
    return {"margin_factor": cfg.margin_factor, "max_candidate_share": cfg.max_candidate_share,
            "partitions": cfg.badge_partitions, "progress": False}


def _new_model(dataset: Dataset, cfg: SimulationConfig, ts: int, threads: int | None, reference: bool = False):
    return make_model(cfg.model, dataset.n_classes, dataset.multilabel, seed=ts, threads=threads,
                      reference=reference, epochs=cfg.epochs, max_steps=cfg.max_steps, training=cfg.training,
                      min_steps=cfg.min_steps,
                      warm_start=cfg.warm_start, whiten=cfg.whiten, tol=cfg.tol)


def seed_set(n: int, cfg: SimulationConfig, trial: int) -> np.ndarray:
    """The trial's uniform random seed set (the same for every strategy of the trial)."""
    return np.random.default_rng(trial_seed(cfg.seed, trial)).choice(n, size=cfg.seed_size, replace=False)


def _say(cfg: SimulationConfig, text: str) -> None:
    """A progress line on stderr when progress is on and stderr is not a terminal (logs, CI, nohup)."""
    if cfg.progress and not sys.stderr.isatty():
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def clustered_embedding(model, X, cfg: SimulationConfig) -> np.ndarray:
    """The embedding a trial clusters: the seed model's (``model`` fitted on the seed set), or the input."""
    if cfg.cluster_space == "input":
        return np.ascontiguousarray(X, dtype=np.float32)
    return model.embed(X)


def trial_clusters(dataset: Dataset, cfg: SimulationConfig, trial: int, threads: int | None = None):
    """The trial's one-time clustering, shared by its specs; returns ``(labels, diagnostics)``.

    Clusters the seed model's embedding (or the input, ``cluster_space="input"``).
    When no label enters that embedding the result is the same for every trial:
    the clustering then uses the run's seed, not the trial's, so trials share it
    (and the disk cache serves every later run on the same pool).
    """
    _limit_threads(threads)
    ts = trial_seed(cfg.seed, trial)
    X, y = dataset.X, dataset.y
    model = _new_model(dataset, cfg, ts, threads)
    model.set_pool(X)
    free = _clusters.labels_free(cfg, model)
    if cfg.cluster_space != "input" and not free:
        labeled = seed_set(X.shape[0], cfg, trial)
        model.fit(X[labeled], y[labeled])
    E = clustered_embedding(model, X, cfg)
    params = _clusters.clustering_params(cfg, cfg.seed if free else ts)
    res = _clusters.cluster_embedding(E, params, cache=cfg.cluster_cache)
    del E
    diag = _clusters.diagnostics(res, y, dataset.multilabel)
    _say(cfg, f"clustering for trial {trial}{' (shared by every trial)' if free else ''}: "
              f"{diag['n_clusters']:,} clusters, {res['method']}, "
              + ("from the cache" if res["cached"] else f"{res['seconds']:.0f} s"))
    return res["labels"], diag


def _batch_diagnostics(dataset, labeled_before, batch, P, clusters, sel_diag) -> dict:
    row = {}
    if dataset.multilabel:
        m = np.abs(2.0 * P[batch] - 1.0).min(1)
    else:
        top2 = np.sort(P[batch], axis=1)[:, -2:]
        m = top2[:, 1] - top2[:, 0]
    row["batch_mean_margin"] = float(m.mean())
    if not dataset.multilabel:
        freq = np.bincount(dataset.y[batch], minlength=dataset.n_classes) / batch.shape[0]
        nz = freq[freq > 0]
        row["batch_label_entropy"] = float(-(nz * np.log(nz)).sum())
    if clusters is not None:
        row["batch_clusters"] = int(np.unique(clusters[batch]).shape[0])
    if dataset.source is not None:
        row["batch_copy_share"] = copy_share(dataset.source, labeled_before, batch)
    row.update({f"diag_{k}": v for k, v in sel_diag.items() if isinstance(v, (int, float))})
    return row


def run_one(dataset: Dataset, cfg: SimulationConfig, trial: int, strategy: str, threads: int | None = None,
            clusters: tuple | None = None):
    """One strategy (a spec) over all rounds of one trial; returns (rows, diagnostics).

    ``clusters`` is the trial's ``(labels, diagnostics)`` from :func:`trial_clusters`,
    computed here when the spec reads clusters and none is given.
    """
    _limit_threads(threads)
    spec = parse_spec(strategy)
    ts = trial_seed(cfg.seed, trial)
    X, y = dataset.X, dataset.y
    labeled = seed_set(X.shape[0], cfg, trial)
    t_run = time.perf_counter()
    model = _new_model(dataset, cfg, ts, threads)
    model.set_pool(X)
    model.fit(X[labeled], y[labeled])
    diag = {"trial": trial, "strategy": strategy}
    cl = None
    if "clusters" in spec.requires:
        if clusters is None:
            clusters = trial_clusters(dataset, cfg, trial, threads)
        cl = clusters[0]
        diag.update(clusters[1])
    # cluster-margin's near-duplicate test (dup=) reads the embedding the pool was clustered on, as a
    # campaign's reads its one embedding; BADGE and coreset read the current model's each round
    fixed_E = clustered_embedding(model, X, cfg) if {"clusters", "embeddings"} <= set(spec.requires) else None
    prop = None
    if cfg.propagate is not None:  # labels copied to near-duplicates (.propagate)
        from .propagate import start

        prop = start(dataset, cfg, model)
    rare = None if dataset.multilabel else rare_classes(dataset)
    # the campaign's label-free stopping signals, computed the same way (batchal.stopping)
    tracker = StopTracker(X.shape[0], seed=ts)
    rows = []

    def record(r, sel_seconds, fit_seconds, extra=None):
        row = dict(strategy=strategy, trial=trial, round=r, n_labeled=int(labeled.shape[0]),
                   select_seconds=sel_seconds, fit_seconds=fit_seconds)
        row.update(evaluate(dataset, model.predict_proba(dataset.X_test), rare))
        mask = np.zeros(X.shape[0], dtype=bool)
        mask[labeled] = True
        stop = tracker.update(model.predict_proba(X[tracker.rows]), labeled=mask, subset=True,
                              multilabel=dataset.multilabel)
        row.update(stop_kappa=stop["kappa"], stop_changed=stop["changed"], stop_uncertainty=stop["uncertainty"],
                   stop_advice=stop["advice"] is not None)
        if hasattr(model, "history_") and model.history_:
            row["train_epochs"] = model.history_[-1][0]
            row["train_steps"] = model.history_[-1][3]
        if getattr(model, "n_iter_", None):  # logistic regression: did this round's L-BFGS converge?
            row["train_iters"] = int(model.n_iter_[-1])
            row["train_converged"] = bool(model.n_iter_[-1] < model.max_iter)
        if extra:
            row.update(extra)
        rows.append(row)
        _say(cfg, f"trial {trial} {strategy} round {r}/{cfg.rounds}: {row['n_labeled']:,} labels, "
                  f"{'mAP' if dataset.multilabel else 'accuracy'} {row['accuracy']:.4f} "
                  f"(select {sel_seconds:.1f} s, fit {fit_seconds:.1f} s; {time.perf_counter() - t_run:.0f} s in this run)")

    record(0, 0.0, 0.0, prop.record() if prop else None)
    for r in range(1, cfg.rounds + 1):
        # propagated labels can use up the pool before the rounds do (validate() checks bought labels only):
        # then a round buys what is left, and once nothing is left the model stands and no label is bought
        excluded = labeled if prop is None else prop.excluded(labeled)
        left = X.shape[0] - excluded.shape[0]
        if left <= 0:
            record(r, 0.0, 0.0, dict(prop.record(), pool_exhausted=True))
            continue
        P = model.predict_proba(X)
        E = fixed_E if fixed_E is not None else (model.embed(X) if "embeddings" in spec.requires else None)
        t0 = time.perf_counter()
        selector = spec.make(random_state=ts * 100 + r, defaults=selector_defaults(cfg))
        batch = selector.select(Pool(probs=P, embeddings=E, clusters=cl,
                                     labeled=excluded, multilabel=dataset.multilabel), min(cfg.batch_size, left))
        dt = time.perf_counter() - t0
        del E
        extra = _batch_diagnostics(dataset, labeled, batch, P, cl, dict(getattr(selector, "diagnostics_", {})))
        del P
        labeled = np.concatenate([labeled, batch])
        if prop is not None:
            extra.update(prop.add(batch, labeled))
        t1 = time.perf_counter()
        model.fit(*(prop.training_set(X, y, labeled) if prop is not None else (X[labeled], y[labeled])))
        record(r, dt, time.perf_counter() - t1, extra)
    return rows, diag


def copy_share(source: np.ndarray, labeled_before: np.ndarray, batch: np.ndarray) -> float:
    """Share of a batch that copies an item already labeled or already in the batch (redundant pools)."""
    seen = set(source[labeled_before].tolist())
    dup = 0
    for s in source[batch].tolist():
        dup += s in seen
        seen.add(s)
    return dup / max(batch.shape[0], 1)


#: bump when a model's training changes what the whole-pool reference scores for the same data
REFERENCE_VERSION = 1


def reference_params(dataset: Dataset, cfg: SimulationConfig) -> dict:
    """What the whole-pool reference depends on besides the pool: the labels, the test split, the training rule.

    ``warm_start`` and ``max_steps`` are left out: the reference is one fit, without a step cap.
    """
    h = _clusters.embedding_hash
    return {"y": h(np.asarray(dataset.y)), "X_test": h(np.asarray(dataset.X_test)),
            "y_test": h(np.asarray(dataset.y_test)), "model": cfg.model, "epochs": int(cfg.epochs),
            "training": cfg.training, "min_steps": int(cfg.min_steps), "whiten": bool(cfg.whiten),
            "seed": int(cfg.seed), "version": REFERENCE_VERSION, **({"tol": float(cfg.tol)} if cfg.model == "logreg" else {})}


def full_pool_score(dataset: Dataset, cfg: SimulationConfig, threads: int | None = None) -> float:
    """Test metric of the same model trained on the whole labeled pool (the reference for targets).

    Cached on disk (``cache_dir()/reference``, keyed by the pool's bytes and
    :func:`reference_params`) when ``cfg.reference_cache``: the fit on every row
    costs 2-8 minutes at 1M rows and gives the same score for every batch size
    and spec list of a pool.
    """
    path = None
    if cfg.reference_cache:
        # the thread count is in the key: torch's sums (MLP) differ in the last bits between counts
        params = dict(reference_params(dataset, cfg), threads=threads)
        path = _clusters.cache_path("reference", np.asarray(dataset.X), params, ".json")
        if path.exists():
            try:
                score = float(json.loads(path.read_text())["score"])
                _say(cfg, f"whole-pool reference: {score:.4f} (from the cache)")
                return score
            except (ValueError, KeyError, TypeError):  # a damaged entry is recomputed, never trusted
                pass
    _limit_threads(threads)
    model = _new_model(dataset, cfg, cfg.seed, threads, reference=True)
    model.set_pool(dataset.X)
    t0 = time.perf_counter()
    model.fit(dataset.X, dataset.y)
    score = _metric(dataset, model.predict_proba(dataset.X_test))
    seconds = time.perf_counter() - t0
    _say(cfg, f"whole-pool reference: {score:.4f} ({seconds:.0f} s)")
    if path is not None:
        entry = json.dumps({"score": score, "seconds": seconds, "dataset": dataset.name})
        atomic_write(path, lambda tmp: Path(tmp).write_text(entry))
    return score


_WORKER_DATASET: Dataset | None = None


def _init_worker(dataset: Dataset, parent: int | None = None) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = dataset
    if parent is not None:
        _exit_with_parent(parent)


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker when the simulation process that started it is gone.

    A killed ``batchal simulate`` (SIGTERM, SIGKILL, a closed terminal) runs no
    executor shutdown, and its spawned workers would keep training models for
    nobody, holding both cores. A daemon thread watches the parent's pid.
    """
    import threading

    def watch():
        while True:
            time.sleep(every)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="batchal-parent-watch", daemon=True).start()


def _worker_run(cfg, trial, strategy, clusters):
    return run_one(_WORKER_DATASET, cfg, trial, strategy, threads=1, clusters=clusters)


def _worker_full(cfg):
    return full_pool_score(_WORKER_DATASET, cfg, threads=1)


def _worker_clusters(cfg, trial):
    return trial_clusters(_WORKER_DATASET, cfg, trial, threads=1)


def peak_rss_bytes() -> dict:
    """Peak resident memory of this process and of the largest finished child process (bytes; Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return {"main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            "largest_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale}


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
    #: peak resident memory in bytes: ``main`` (this process), ``largest_worker``
    peak_rss: dict | None = None
    #: pool and test sizes, classes
    pool: dict | None = None

    def to_frame(self):
        import pandas as pd  # optional; only for users who want a DataFrame

        return pd.DataFrame(self.rows)


def _plan(dataset: Dataset, cfg: SimulationConfig):
    """Cluster jobs (trial -> the trial whose clustering it reuses) and the runs, longest first."""
    needs = [s for s in cfg.strategies if "clusters" in parse_spec(s).requires]
    shared = _clusters.labels_free(cfg, _new_model(dataset, cfg, cfg.seed, None)) if needs else False
    owner = {t: (0 if shared else t) for t in range(cfg.trials)} if needs else {}
    # longest first (greedy diversity selectors, then cluster-margin), so no core idles at the end
    cost = {"coreset": 0, "badge": 1, "cluster-margin": 2}
    jobs = sorted(((t, s) for t in range(cfg.trials) for s in cfg.strategies),
                  key=lambda j: (cost.get(parse_spec(j[1]).name, 3), j[0]))
    return owner, jobs


def simulate(dataset: Dataset, cfg: SimulationConfig, *, out_dir=None) -> SimulationResult:
    """Run every (trial, strategy) pair, in parallel processes when ``cfg.n_jobs > 1``.

    The pool is clustered once per trial (once in all where the embedding does
    not depend on the labels), before the specs that read the clusters start.
    Writes ``results.csv``, ``curves.png`` and ``summary.md`` to ``out_dir`` when given.
    """
    cfg.validate(dataset.X.shape[0])
    owner, jobs = _plan(dataset, cfg)
    cluster_jobs = sorted(set(owner.values()))
    n_jobs = cfg.n_jobs or min(os.cpu_count() or 1, len(jobs) + 1)
    t_start = time.perf_counter()
    rows, diags = [], []
    progress = _progress(cfg.progress, len(jobs) + len(cluster_jobs) + 1)
    reads = {s: "clusters" in parse_spec(s).requires for s in cfg.strategies}

    def collect(r, d):
        rows.extend(r)
        diags.append(d)
        progress.advance()

    if n_jobs <= 1:
        with _single_threaded(cfg.model == "mlp"):  # the workers' one thread: the numbers do not depend on n_jobs
            full = full_pool_score(dataset, cfg, threads=1)
            progress.advance()
            done = {}
            for t in cluster_jobs:
                done[t] = trial_clusters(dataset, cfg, t, threads=1)
                progress.advance()
            for t, s in jobs:
                collect(*run_one(dataset, cfg, t, s, threads=1, clusters=done[owner[t]] if reads[s] else None))
    else:
        import multiprocessing as mp

        # spawn: numba's and torch's thread pools are not fork-safe once started;
        # the dataset travels once per worker (initializer), not once per job
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(dataset, os.getpid())) as ex:
            pending = {ex.submit(_worker_clusters, cfg, t): ("clusters", t) for t in cluster_jobs}
            pending[ex.submit(_worker_full, cfg)] = ("full", None)
            waiting = []
            done: dict = {}
            for t, s in jobs:
                if reads[s]:
                    waiting.append((t, s))
                else:
                    pending[ex.submit(_worker_run, cfg, t, s, None)] = ("run", None)
            full = None
            while pending:
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for f in finished:
                    kind, t = pending.pop(f)
                    if kind == "clusters":
                        done[t] = f.result()
                        progress.advance()
                        # the specs reading this clustering go ahead of the runs not yet started
                        for tt, s in [j for j in waiting if owner[j[0]] == t]:
                            pending[ex.submit(_worker_run, cfg, tt, s, done[t])] = ("run", None)
                        waiting = [j for j in waiting if owner[j[0]] != t]
                    elif kind == "full":
                        full = f.result()
                        progress.advance()
                    else:
                        collect(*f.result())
    progress.close()
    rows.sort(key=lambda r: (cfg.strategies.index(r["strategy"]), r["trial"], r["round"]))
    diags.sort(key=lambda d: (cfg.strategies.index(d["strategy"]), d["trial"]))
    pool = {"rows": int(dataset.X.shape[0]), "features": int(dataset.X.shape[1]), "test_rows": int(dataset.X_test.shape[0]),
            "classes": int(dataset.n_classes), "multilabel": bool(dataset.multilabel)}
    res = SimulationResult(cfg, dataset.name, rows, diags, full,
                           "mAP" if dataset.multilabel else "accuracy", time.perf_counter() - t_start,
                           redundancy=dataset.redundancy, peak_rss=peak_rss_bytes(), pool=pool)
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
