"""The Ray engine on a cluster of several nodes (a head and two workers on this machine, one CPU each).

Each node has its own raylet and object store, so the actors of a stage spread
over the nodes and their messages cross object stores, as on a real cluster.
The answers must still be the local engine's: kNN lists and distances, the
merge tree, a selection and a whole campaign. The stage info names the node
of every actor and counts what crossed between nodes.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray", reason="the ray engine's tests need ray (pip install \"batchal[ray]\")")

import batchal
from batchal.clustering.graph import graph_linkage
from batchal.clustering.knn import knn_graph
from ray_util import CLUSTER_NODES, alive_nodes, ray_cluster, write_shards
from test_ray_campaign import _run_api, data, local, snapshot  # noqa: F401  (data, local: fixtures)
from test_ray_cluster import _blobs, _rac, canonical_tree

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def cluster():
    yield from ray_cluster()


@pytest.fixture(scope="module")
def engine(cluster):
    from batchal.engines import get_engine

    eng = get_engine("ray")  # joins the initialised cluster; one actor per CPU: one per node
    yield eng
    eng.close()


def test_the_cluster_has_three_nodes(cluster):
    import ray

    assert len(alive_nodes()) == CLUSTER_NODES == 3
    assert ray.cluster_resources()["CPU"] == CLUSTER_NODES


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
def test_knn_across_nodes_equals_local(engine, metric, tmp_path):
    X = _blobs(24000, 12, 120, seed=2)
    write_shards(tmp_path, {"embedding": X}, [(0, 7001), (7001, 15500), (15500, 24000)], 2999)
    local = knn_graph(X, 10, metric=metric, method="ivf")
    res = engine.knn_graph(str(tmp_path), 10, metric=metric, method="ivf")
    np.testing.assert_array_equal(res.indices, local.indices)
    np.testing.assert_array_equal(res.distances, local.distances)
    # the actors spread over the nodes (Ray's SPREAD is best effort: at least two of the three)
    assert res.info["actors"] == 3 and res.info["nodes"] >= 2
    assert set(res.info["actor_nodes"]) <= set(alive_nodes())
    assert res.info["cross_node_rows"] > 0  # rows of the shard exchange went to an owner on another node


def test_merge_tree_across_nodes_equals_local(cluster):
    import ray

    X = _blobs(1500, 8, 15)
    Zl, _ = graph_linkage(X, metric="cosine", knn=8, knn_method="flat")
    res = knn_graph(X, 8, metric="cosine", method="flat")
    Zr, info = _rac(ray, X, res.indices, "cosine", n_actors=3)
    np.testing.assert_array_equal(canonical_tree(Zr, 1500), canonical_tree(Zl, 1500))
    assert info["nodes"] >= 2 and set(info["actor_nodes"]) <= set(alive_nodes()) and info["cross_node_bytes"] > 0
    assert info["cross_node_bytes"] <= info["bytes_sent"]


def test_selection_across_nodes_equals_local(engine, tmp_path):
    r = np.random.default_rng(7)
    n = 6000
    P = r.dirichlet(np.full(5, 0.4), size=n).astype(np.float32)
    clusters = r.integers(0, 700, n)
    labeled = r.choice(n, 300, replace=False)
    write_shards(tmp_path, {"probs": P}, [(0, 1700), (1700, 4200), (4200, n)], 600)
    for spec in ("cluster-margin", "cluster-margin:order=margin:tol=0.1", "margin"):
        kw = dict(clusters=clusters, labeled=labeled, seed=11)
        np.testing.assert_array_equal(engine.select(spec, 250, probs=tmp_path, **kw),
                                      batchal.select(spec, 250, probs=P, **kw))


def test_campaign_across_nodes_records_the_local_campaign(engine, data, local):  # noqa: F811
    d, ids = data
    c, b1, b2 = _run_api(d, ids, "ray-nodes", engine)
    for got, want in ((b1, local["b1"]), (b2, local["b2"])):
        assert got.ids == want.ids
        np.testing.assert_array_equal(got.scores, want.scores)
    c.close()
    assert snapshot(d / "ray-nodes") == local["snap"]
