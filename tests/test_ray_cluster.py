"""The ray engine's kNN graph and graph HAC equal the local engine's (a real local Ray instance)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray", reason="the ray engine's tests need ray (pip install \"batchal[ray]\")")

from batchal.clustering.graph import graph_linkage
from batchal.clustering.knn import knn_graph
from ray_util import start_ray, write_shards

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


@pytest.mark.parametrize("reserve,copied", [(2.5, False), (1.0, True)])
def test_rac_on_ray_arena_growth_keeps_the_tree(ray_mod, reserve, copied):
    # no slack: the first round's merged lists need a compaction and a growth, within the
    # reservation (a moved bound) or past it (a copy); the tree is the same either way
    from batchal.engines.ray._sources import RowSource
    from batchal.engines.ray.rac import ray_rac

    X = _blobs(1200, 8, 12, seed=5)
    Zl, _ = graph_linkage(X, metric="cosine", knn=8, knn_method="flat")
    res = knn_graph(X, 8, metric="cosine", method="flat")
    Zr, info = ray_rac(RowSource.open(X, name="e", ray=ray_mod), [(0, res.indices)], 1200, metric="cosine",
                       n_actors=2, slack=1.0, reserve=reserve)
    np.testing.assert_array_equal(canonical_tree(Zr, 1200), canonical_tree(Zl, 1200))
    assert info["arena"]["compactions"] > 0 and info["arena"]["grown"] > 0
    assert (info["arena"]["copied"] > 0) == copied


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


def test_rac_takes_the_knn_lists_from_a_callable_once(ray_mod):
    # a callable's lists are let go once the actors hold the graph (they leave the object store before the
    # rounds); it is called again only by a restart that finds no checkpoint (test_ray_faults)
    from batchal.engines.ray._sources import RowSource
    from batchal.engines.ray.rac import ray_rac

    X = _blobs(1500, 8, 15, seed=7)
    Zl, _ = graph_linkage(X, metric="cosine", knn=8, knn_method="flat")
    I = knn_graph(X, 8, metric="cosine", method="flat").indices
    calls = []

    def lists():
        calls.append(1)
        return [(a, ray_mod.put(np.ascontiguousarray(I[a:a + 500]))) for a in range(0, 1500, 500)]

    Zr, info = ray_rac(RowSource.open(X, name="e", ray=ray_mod), lists, 1500, metric="cosine", n_actors=2)
    assert len(calls) == 1 and info["restarts"] == 0
    np.testing.assert_array_equal(canonical_tree(Zr, 1500), canonical_tree(Zl, 1500))


def test_rac_reads_the_live_knn_lists_twice_and_ends_their_actors(ray_mod, monkeypatch):
    # the IVF kNN stage for the RAC leaves its lists in its live actors (LiveLists): each chunks() call
    # emits them anew, chunk by chunk (the graph build reads them twice: count, fill), equal to the
    # gathered lists; the build ends the actors once its own hold the graph
    from batchal.engines.ray import knn as RK
    from batchal.engines.ray._sources import RowSource
    from batchal.engines.ray.rac import ray_rac

    monkeypatch.setattr(RK, "EMIT_ROWS", 700)  # several chunks per actor
    X = _blobs(4000, 8, 40, seed=8)
    src = RowSource.open(X, name="e", ray=ray_mod)
    want = RK.ray_knn(src, 8, metric="cosine", method="ivf", nprobe=2, n_actors=2).indices
    live, _ = RK.ray_knn(src, 8, metric="cosine", method="ivf", nprobe=2, n_actors=2, keep_chunks=True)
    assert isinstance(live, RK.LiveLists) and len(live) == 6
    for _ in range(2):
        got = np.full_like(want, -2)
        for start, ref in live.chunks():
            assert start is None
            qids, I = ray_mod.get(ref)
            got[qids] = I
        np.testing.assert_array_equal(got, want)
    actors = list(live.actors)
    Zr, info = ray_rac(src, lambda: live, 4000, metric="cosine", n_actors=2)
    assert info["restarts"] == 0 and not live.actors
    with pytest.raises(ray_mod.exceptions.RayActorError):
        ray_mod.get(actors[0].emit_ids.remote(0, 1))
    np.testing.assert_array_equal(want, knn_graph(X, 8, metric="cosine", method="ivf", nprobe=2).indices)
    Zl, _ = graph_linkage(X, metric="cosine", knn=8, knn_method="ivf", nprobe=2)
    np.testing.assert_array_equal(canonical_tree(Zr, 4000), canonical_tree(Zl, 4000))


@pytest.mark.parametrize("metric,method,n", [("cosine", "flat", 3000), ("sqeuclidean", "ivf", 24000),
                                             ("euclidean", "ivf", 24000)])
def test_knn_on_ray_equals_local(ray_mod, metric, method, n):
    from batchal.engines import get_engine

    X = _blobs(n, 12, max(10, n // 200), seed=2)
    local = knn_graph(X, 10, metric=metric, method=method)
    res = get_engine("ray", num_actors=3).knn_graph(X, 10, metric=metric, method=method)
    assert res.method == method and res.info.get("nprobe") == local.info.get("nprobe")
    np.testing.assert_array_equal(res.indices, local.indices)
    np.testing.assert_array_equal(res.distances, local.distances)


def test_knn_on_ray_exchange_in_pieces_equals_local(ray_mod, monkeypatch):
    # the shard exchange in many small pieces (rows of a (shard, owner) split across rounds, two in flight)
    from batchal.engines import get_engine
    from batchal.engines.ray import knn as RK

    monkeypatch.setattr(RK, "SEND_ROWS", 997)
    X = _blobs(24000, 12, 120, seed=3)
    local = knn_graph(X, 10, metric="sqeuclidean", method="ivf", nprobe=3)
    res = get_engine("ray", num_actors=3).knn_graph(X, 10, metric="sqeuclidean", method="ivf", nprobe=3)
    np.testing.assert_array_equal(res.indices, local.indices)
    np.testing.assert_array_equal(res.distances, local.distances)


def test_knn_on_ray_given_centroids_and_few_candidates(ray_mod):
    # tiny cells and nprobe=1: many queries have fewer than k + 1 candidates (the padding rule)
    from batchal.clustering.knn import _train_cells
    from batchal.engines import get_engine

    X = _blobs(3000, 6, 30, seed=4)
    local = knn_graph(X, 12, metric="cosine", method="ivf", nlist=600, nprobe=1)
    C = _train_cells(X, "cosine", 600, np.random.default_rng(0), False)
    res = get_engine("ray").knn_graph(X, 12, metric="cosine", method="ivf", nprobe=1, centroids=C)
    assert (local.indices < 0).any()
    np.testing.assert_array_equal(res.indices, local.indices)
    np.testing.assert_array_equal(res.distances, local.distances)


def test_knn_on_ray_auto_nprobe_equals_local_from_shards(ray_mod, tmp_path):
    # above 20,000 rows with the default nprobe ("auto": the local sample's exact top-k, folded by the shards);
    # three Parquet files of uneven row groups: three actors whose shards cut the local row blocks
    from batchal.clustering.knn import _train_cells
    from batchal.engines import get_engine

    X = _blobs(24000, 12, 120, seed=2)
    write_shards(tmp_path, {"embedding": X}, [(0, 7001), (7001, 15500), (15500, 24000)], 2999)
    eng = get_engine("ray", num_actors=3)
    local = knn_graph(X, 10, metric="cosine")
    res = eng.knn_graph(str(tmp_path), 10, metric="cosine")
    assert local.method == res.method == "ivf" and res.info["actors"] == 3 and local.info["nprobe"] > 1
    for key in ("nlist", "nprobe", "nprobe_estimated_recall", "nprobe_recall", "nprobe_queries"):
        assert res.info[key] == local.info[key], key
    np.testing.assert_array_equal(res.indices, local.indices)
    np.testing.assert_array_equal(res.distances, local.distances)
    # given the centroids the local builder trains, "auto" still draws the local sample; row blocks of
    # 5,000 rows: some lie whole inside a shard, some are cut by one
    local = knn_graph(X, 10, metric="euclidean", chunk_rows=5000)
    C = _train_cells(X, "euclidean", local.info["nlist"], np.random.default_rng(0), False)
    res = eng.knn_graph(str(tmp_path), 10, metric="euclidean", centroids=C, chunk_rows=5000)
    assert res.info["nprobe"] == local.info["nprobe"] > 1 and res.info["nprobe_recall"] == local.info["nprobe_recall"]
    np.testing.assert_array_equal(res.indices, local.indices)
    np.testing.assert_array_equal(res.distances, local.distances)


def test_knn_on_ray_few_candidates_from_shards(ray_mod, tmp_path):
    # tiny cells, one probe, three actors: rows with fewer than k candidates across shards and probes
    from batchal.clustering.knn import _train_cells
    from batchal.engines import get_engine

    X = _blobs(3000, 6, 30, seed=4)
    write_shards(tmp_path, {"embedding": X}, [(0, 1100), (1100, 1900), (1900, 3000)], 700)
    local = knn_graph(X, 12, metric="sqeuclidean", method="ivf", nlist=700, nprobe=2)
    C = _train_cells(X, "sqeuclidean", 700, np.random.default_rng(0), False)
    res = get_engine("ray", num_actors=3).knn_graph(str(tmp_path), 12, metric="sqeuclidean", method="ivf",
                                                     nprobe=2, centroids=C)
    assert (local.indices < 0).any() and res.info["actors"] == 3
    np.testing.assert_array_equal(res.indices, local.indices)
    np.testing.assert_array_equal(res.distances, local.distances)


def test_cluster_end_to_end_and_cli(ray_mod, tmp_path):
    from typer.testing import CliRunner

    from batchal import AverageLinkage
    from batchal.cli import app

    X = _blobs(21000, 8, 100, seed=6)  # above 20,000 rows: IVF kNN, as locally
    np.save(tmp_path / "E.npy", X)
    local = AverageLinkage(method="graph", knn=10, mean_cluster_size=10).fit(X)
    runner = CliRunner()
    r = runner.invoke(app, ["cluster", "-e", str(tmp_path / "E.npy"), "--method", "graph", "--knn", "10",
                            "--engine", "ray", "--save-tree", str(tmp_path / "T.npy"), "-o", str(tmp_path / "C.npy")])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(canonical_tree(np.load(tmp_path / "T.npy"), X.shape[0]),
                                  canonical_tree(local.linkage_, X.shape[0]))
    np.testing.assert_array_equal(np.load(tmp_path / "C.npy"), local.labels_)
    bad = runner.invoke(app, ["cluster", "-e", str(tmp_path / "E.npy"), "--method", "exact", "--engine", "ray",
                              "-o", str(tmp_path / "D.npy")])
    assert bad.exit_code == 2 and bad.output.count("error:") == 1 and "exact" in bad.output
    X[5, 3] = np.nan
    np.save(tmp_path / "N.npy", X)
    nan = runner.invoke(app, ["cluster", "-e", str(tmp_path / "N.npy"), "--engine", "ray", "-q",
                              "-o", str(tmp_path / "D.npy")])
    assert nan.exit_code == 2 and "NaN (first at row 5)" in nan.output
