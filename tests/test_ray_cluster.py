"""The ray engine's kNN graph and graph HAC equal the local engine's (a real local Ray instance)."""
from __future__ import annotations

import numpy as np
import pytest

from batchal.clustering.graph import graph_linkage
from batchal.clustering.knn import knn_graph
from ray_util import start_ray

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def ray_mod():
    ray = start_ray()
    yield ray
    ray.shutdown()


def canonical_tree(Z: np.ndarray, n: int) -> np.ndarray:
    """A merge tree as a sorted table of merges, each child named by (smallest leaf, size).

    Two trees are the same tree exactly when these tables are equal: row order
    and internal node numbering (which depend on the order merges are written
    down) drop out; which clusters merge, and at what height, stays.
    """
    minleaf = np.empty(2 * n - 1, dtype=np.int64)
    minleaf[:n] = np.arange(n)
    size = np.ones(2 * n - 1, dtype=np.int64)
    rows = []
    for i, (a, b, h, _) in enumerate(Z):
        a, b = int(a), int(b)
        minleaf[n + i] = min(minleaf[a], minleaf[b])
        size[n + i] = size[a] + size[b]
        lo, hi = sorted([(minleaf[a], size[a]), (minleaf[b], size[b])])
        rows.append((*lo, *hi, h))
    rows.sort(key=lambda r: r[:4])
    return np.array(rows)


def _blobs(n, d, centers, seed=0):
    r = np.random.default_rng(seed)
    C = r.standard_normal((centers, d)) * 2
    lab = r.integers(0, centers, n)
    sd = r.uniform(0.5, 1.5, centers)
    return (C[lab] + r.standard_normal((n, d)) * sd[lab, None]).astype(np.float32)


def _islands(n, d, group, seed=1):
    """Tight far-apart groups: a kNN graph with n / group components (exercises the join)."""
    r = np.random.default_rng(seed)
    C = r.standard_normal((n // group, d)) * 100
    X = (np.repeat(C, group, 0) + r.standard_normal((n, d)) * 0.01).astype(np.float32)
    return X[r.permutation(n)]


def _rac(ray, X, I, metric, n_actors=2, chunk=700):
    from batchal.engines.ray._sources import RowSource
    from batchal.engines.ray.rac import ray_rac

    src = RowSource.open(X, name="embeddings", ray=ray)
    chunks = [(a, ray.put(np.ascontiguousarray(I[a:a + chunk]))) for a in range(0, X.shape[0], chunk)]
    return ray_rac(src, chunks, X.shape[0], metric=metric, n_actors=n_actors)


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
def test_rac_on_ray_equals_local_graph_hac(ray_mod, metric):
    X = _blobs(1500, 8, 15)
    Zl, _ = graph_linkage(X, metric=metric, knn=8, knn_method="flat")
    res = knn_graph(X, 8, metric=metric, method="flat")  # the graph the local HAC used
    Zr, info = _rac(ray_mod, X, res.indices, metric, n_actors=3)
    np.testing.assert_array_equal(canonical_tree(Zr, X.shape[0]), canonical_tree(Zl, X.shape[0]))
    assert info["rounds"] > 5 and sum(info["merges_per_round"]) + info["components"] - 1 == X.shape[0] - 1


@pytest.mark.parametrize("n", [1000, 15005])
def test_rac_on_ray_joins_components_as_local(ray_mod, n):
    # 200 components: joined over a complete graph; 3,200: over a kNN graph of their means
    X = _islands(n, 12, 5)
    Zl, linfo = graph_linkage(X, metric="cosine", knn=3, knn_method="flat")
    res = knn_graph(X, 3, metric="cosine", method="flat")
    Zr, info = _rac(ray_mod, X, res.indices, "cosine", chunk=4000)
    assert info["components"] == linfo["components"] == n // 5
    np.testing.assert_array_equal(canonical_tree(Zr, n), canonical_tree(Zl, n))


def test_rac_float32_statistics(ray_mod):
    # the statistics dtype the local engine uses above 512 MiB, forced small
    X = _blobs(1500, 6, 10, seed=3)
    Zl, _ = graph_linkage(X, metric="cosine", knn=6, knn_method="flat", stats_dtype="float32")
    res = knn_graph(X, 6, metric="cosine", method="flat")
    from batchal.engines.ray._sources import RowSource
    from batchal.engines.ray.rac import ray_rac

    Zr, _ = ray_rac(RowSource.open(X, name="e", ray=ray_mod), [(0, res.indices)], 1500, metric="cosine",
                    n_actors=2, stats_dtype="float32")
    np.testing.assert_array_equal(canonical_tree(Zr, 1500), canonical_tree(Zl, 1500))
