"""The simulator's one-time clustering: one per trial, shared by every spec that reads clusters.

As in the paper, the pool is clustered once, on the embedding of the model
trained on the seed set. Every spec of a trial reads the same clusters, so
they are computed once per trial, not once per spec; where the embedding does
not depend on the labels (logistic regression clusters the standardised
input; ``cluster_space="input"`` the raw one) they are computed once per
dataset. Results are cached on disk, keyed by a hash of the embedding and the
clustering parameters, so the same pool at another batch size (or a rerun)
clusters nothing.
"""
from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from ..io import atomic_write

#: bump when the clustering code changes what it returns for the same input
CACHE_VERSION = 1


def embedding_hash(E: np.ndarray) -> str:
    """SHA-256 of an array's shape, dtype and bytes (streamed over row blocks)."""
    E = np.ascontiguousarray(E)
    h = hashlib.sha256(f"{E.shape}|{E.dtype.str}".encode())
    rows = max(1, (64 << 20) // max(E.strides[0], 1))
    for a in range(0, E.shape[0], rows):
        h.update(memoryview(E[a : a + rows]).cast("B"))
    return h.hexdigest()


def cache_path(kind: str, E: np.ndarray, params: dict, suffix: str):
    """Where a result computed from embedding ``E`` with ``params`` is cached: ``cache_dir()/kind/<hash><suffix>``
    (the hash covers the embedding's bytes and the parameters; the folder is made)."""
    from .datasets import cache_dir

    key = hashlib.sha256((embedding_hash(E) + json.dumps(params, sort_keys=True)).encode()).hexdigest()[:32]
    folder = cache_dir() / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key}{suffix}"


def labels_free(cfg, model) -> bool:
    """Whether the clustered embedding is the same for every trial (no labels enter it)."""
    return cfg.cluster_space == "input" or not getattr(model, "embedding_uses_labels", True)


def clustering_params(cfg, random_state: int) -> dict:
    return {"mean_cluster_size": float(cfg.mean_cluster_size), "metric": cfg.metric, "method": cfg.cluster_method,
            "knn": int(cfg.knn), "random_state": int(random_state), "version": CACHE_VERSION}


def cluster_embedding(E: np.ndarray, params: dict, *, cache: bool = True) -> dict:
    """Average-linkage clusters of ``E`` (cached under ``cache_dir()/clusters`` when ``cache``).

    Returns a dict with ``labels`` (int64, one per row), ``threshold``,
    ``method``, ``seconds`` (of the clustering itself, also when read from the
    cache) and ``cached`` (whether it was read from the cache).
    """
    from ..clustering import AverageLinkage

    path = cache_path("clusters", E, params, ".npz") if cache else None
    if path is not None:
        if path.exists():
            try:
                with np.load(path) as z:
                    return {"labels": z["labels"].astype(np.int64), "threshold": float(z["threshold"]),
                            "method": str(z["method"]), "seconds": float(z["seconds"]), "cached": True}
            except Exception:  # a damaged cache entry is recomputed, never trusted
                pass
    t0 = time.perf_counter()
    kw = {k: v for k, v in params.items() if k != "version"}
    hac = AverageLinkage(**kw).fit(E)
    out = {"labels": hac.labels_.astype(np.int64), "threshold": float(hac.threshold_), "method": hac.method_,
           "seconds": time.perf_counter() - t0, "cached": False}
    if path is not None:
        atomic_write(path, lambda tmp: np.savez(
            tmp, labels=out["labels"].astype(np.int32 if out["labels"].max() < 2**31 else np.int64),
            threshold=out["threshold"], method=out["method"], seconds=out["seconds"],
            params=json.dumps(params, sort_keys=True)))
    return out


def cluster_purity(clusters: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose label is the majority label of their cluster (a diagnostic of the embedding)."""
    cl_lab, counts = np.unique(np.stack([clusters.astype(np.int64), y.astype(np.int64)], 1), axis=0,
                               return_counts=True)
    best = np.zeros(int(clusters.max()) + 1, dtype=np.int64)
    np.maximum.at(best, cl_lab[:, 0], counts)
    return float(best.sum() / clusters.shape[0])


def diagnostics(result: dict, y: np.ndarray, multilabel: bool) -> dict:
    """What the simulator reports about a clustering (sizes, singletons, purity)."""
    clusters = result["labels"]
    sizes = np.bincount(clusters)
    return {"cluster_seconds": result["seconds"], "cluster_cached": result["cached"],
            "n_clusters": int(sizes.shape[0]), "threshold": result["threshold"],
            "cluster_method": result["method"], "singleton_share": float((sizes == 1).mean()),
            "cluster_sizes": sizes.tolist(), "purity": None if multilabel else cluster_purity(clusters, y)}
