#!/usr/bin/env python
"""How far apart are copies, and how far distinct items, in the embedding the recommended spec reads?

For 1,000 random rows of each pool, the exact (faiss flat, inner product on unit
rows) 60 nearest neighbours in the standardised input (the embedding the
simulator clusters with logistic regression), split into rows copying the same
source item and distinct rows: the cosine distance to the nearest copy and to the
nearest distinct row, in percentiles, and the share of each within thresholds.
This is the evidence for ``dup=0.01`` (the recommended spec) and for ``batchal
dedup``'s default threshold.

Usage::

    python benchmarks/bench_copy_distances.py fmnist-web mnist1d manyclass digits+zipf
"""
from __future__ import annotations

import sys

import numpy as np

THRESHOLDS = (0.005, 0.01, 0.02, 0.05)


def measure(name: str, queries: int = 1000, k: int = 60, seed: int = 0) -> dict:
    import faiss

    from batchal.simulate import load_dataset, make_redundant

    base, _, red = name.partition("+")
    ds = load_dataset(base, size=1_000_000 if base in ("mnist1d",) else None)
    if red:
        ds = make_redundant(ds, red, seed=0)
    X = np.asarray(ds.X, dtype=np.float32)
    Z = (X - X.mean(0)) / (X.std(0) + 1e-6)
    Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    src = np.asarray(ds.source) if ds.source is not None else np.arange(X.shape[0])
    q = np.random.default_rng(seed).choice(X.shape[0], min(queries, X.shape[0]), replace=False)
    index = faiss.IndexFlatIP(Z.shape[1])
    index.add(Z)
    D, idx = index.search(Z[q], min(k + 1, X.shape[0]))
    dist, same = 1.0 - D[:, 1:], src[idx[:, 1:]] == src[q][:, None]
    copy = np.where(same, dist, np.inf).min(1)
    other = np.where(~same, dist, np.inf).min(1)
    has = np.isfinite(copy)
    return {"pool": name, "rows": X.shape[0], "dim": X.shape[1], "with_copy": float(has.mean()),
            "copy_pct": np.percentile(copy[has], [50, 95, 99]).tolist() if has.any() else None,
            "distinct_pct": np.percentile(other[np.isfinite(other)], [1, 5, 50]).tolist(),
            "copies_within": {t: float((copy[has] <= t).mean()) if has.any() else None for t in THRESHOLDS},
            "distinct_within": {t: float((other <= t).mean()) for t in THRESHOLDS}}


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or ["fmnist-web", "mnist1d", "manyclass", "digits+zipf"]
    print("| pool | rows x dim | rows with a copy among 60 NN | copy: median / 95% / 99% | distinct: 1% / 5% / median | "
          + " | ".join(f"within {t}: copies / distinct" for t in THRESHOLDS) + " |")
    print("|---|---|---:|---|---|" + "---|" * len(THRESHOLDS))
    for name in names:
        r = measure(name)
        cp = " / ".join(f"{v:.4f}" for v in r["copy_pct"]) if r["copy_pct"] else "—"
        dp = " / ".join(f"{v:.4f}" for v in r["distinct_pct"])
        cells = []
        for t in THRESHOLDS:
            c = r["copies_within"][t]
            cells.append(f"{'—' if c is None else f'{100 * c:.0f}%'} / {100 * r['distinct_within'][t]:.1f}%")
        print(f"| {name} | {r['rows']:,} x {r['dim']} | {100 * r['with_copy']:.0f}% | {cp} | {dp} | " + " | ".join(cells) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
