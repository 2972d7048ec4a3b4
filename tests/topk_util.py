"""Small pools for the top-k tests: dense probabilities and their top-k layout side by side."""
from __future__ import annotations

import numpy as np


def redundant_pool(n=3000, C=30, active=4, multilabel=False, seed=0, noise=0.01):
    """Dense (n, C) float32 probabilities with near-copies, and cluster ids (copies share a cluster).

    Each distinct item puts its mass (multi-class) or its uncertain classes (multi-label) on
    ``active`` random classes; every other class is confidently absent (multi-class: below 1e-4;
    multi-label: p < 0.02), as in large vocabularies. Two thirds of the rows copy a distinct item
    with noise on its active classes: near-duplicates for ``tol=0.1``.
    """
    r = np.random.default_rng(seed)
    base = n // 3
    P = np.empty((base, C))
    for i in range(base):
        s = r.choice(C, active, replace=False)
        if multilabel:
            P[i] = r.uniform(0.0, 0.02, C)
            P[i, s] = r.uniform(0.05, 0.95, active)
        else:
            P[i] = r.uniform(0, 1e-4, C)
            P[i, s] = r.dirichlet(np.ones(active))
            P[i] /= P[i].sum()
    src = r.integers(0, base, n - base)
    Q = np.clip(P[src] + r.normal(scale=noise, size=(n - base, C)) * (P[src] > 0.03), 0, 1)
    if not multilabel:
        Q /= Q.sum(1, keepdims=True)
    P = np.vstack([P, Q]).astype(np.float32)
    cl0 = r.integers(0, max(1, base // 3), base)
    return P, np.concatenate([cl0, cl0[src]]).astype(np.int64)


def random_pool(n=2000, C=12, multilabel=False, seed=0):
    """Dense probabilities with no structure (every class may matter), and random cluster ids."""
    r = np.random.default_rng(seed)
    if multilabel:
        P = 1.0 / (1.0 + np.exp(-3 * r.normal(size=(n, C))))
    else:
        P = r.dirichlet(np.full(C, 0.4), size=n)
    return P.astype(np.float32), r.integers(0, n // 8, n).astype(np.int64)
