"""Top-k predictions on the ray engine: the same batch as the local engine from the dense matrix."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray", reason="the ray engine's tests need ray (pip install \"batchal[ray]\")")

import batchal
from batchal import BatchalInputError, TopK, topk_predictions, topk_table
from ray_util import ray_engine
from topk_util import redundant_pool

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SPECS = ["margin", "least-confidence", "cluster-margin", "cluster-margin:order=margin",
         "cluster-margin:order=margin:tol=0.1", "random"]


@pytest.fixture(scope="module")
def engine():
    yield from ray_engine()


def _shards(d, P, k, multilabel, bounds, row_group):
    d.mkdir()
    c, p = topk_predictions(P, k, multilabel=multilabel)
    for i, (a, b) in enumerate(bounds):
        pq.write_table(topk_table(np.arange(a, b), c[a:b], p[a:b], n_classes=P.shape[1]), d / f"part-{i}.parquet",
                       row_group_size=row_group)
    return d, TopK(c, p, P.shape[1])


@pytest.fixture(scope="module", params=[False, True], ids=["multiclass", "multilabel"])
def pools(request, tmp_path_factory):
    ml = request.param
    P, cl = redundant_pool(n=4000, multilabel=ml, seed=2)
    d, T = _shards(tmp_path_factory.mktemp("topk") / "preds", P, 5, ml, [(0, 1500), (1500, 1501), (1501, 4000)], 600)
    labeled = np.random.default_rng(3).choice(4000, 250, replace=False)
    return dict(P=P, cl=cl, dir=d, T=T, ml=ml, labeled=labeled)


@pytest.mark.parametrize("spec", SPECS)
def test_ray_topk_batch_equals_local_dense(engine, pools, spec):
    if pools["ml"] and spec == "least-confidence":
        pytest.skip("least confidence is multi-class only")
    kw = dict(clusters=pools["cl"], labeled=pools["labeled"], multilabel=pools["ml"], seed=7)
    dense = batchal.select(spec, 300, probs=pools["P"], **kw)
    np.testing.assert_array_equal(engine.select(spec, 300, probs=pools["dir"], **kw), dense)
    np.testing.assert_array_equal(engine.select(spec, 300, probs=pools["T"], **kw), dense)


def test_ray_topk_refuses_bad_rows_naming_file_and_row(engine, tmp_path):
    P, cl = redundant_pool(n=900, seed=1)
    c, p = topk_predictions(P, 3)
    p[700, 1] = np.nan
    d = tmp_path / "bad"
    d.mkdir()
    pq.write_table(topk_table(None, c[:600], p[:600], 30), d / "a.parquet", row_group_size=200)
    pq.write_table(topk_table(None, c[600:], p[600:], 30), d / "b.parquet", row_group_size=200)
    with pytest.raises(BatchalInputError, match=r"b\.parquet.*NaN \(first at row 700\)"):
        engine.select("margin", 10, probs=d)
    with pytest.raises(BatchalInputError, match="entropy needs every class"):
        engine.select("entropy", 10, probs=d)


def test_campaign_select_on_ray_with_topk_equals_local(engine, tmp_path):
    import shutil

    from batchal import Campaign
    from campaign_util import make_pool

    ids, _ = make_pool(tmp_path / "pool.parquet", n=700)
    c = Campaign.init(tmp_path / "a", tmp_path / "pool.parquet", classes=[f"c{i}" for i in range(30)])
    c.cluster(mean_cluster_size=10)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    P, _ = redundant_pool(n=700, seed=5)
    cl, pr = topk_predictions(P, 4)
    pq.write_table(topk_table(ids, cl, pr, n_classes=30), tmp_path / "top.parquet")
    local = Campaign(tmp_path / "a").select(80, tmp_path / "top.parquet", seed=3)
    on_ray = Campaign(tmp_path / "b").select(80, tmp_path / "top.parquet", seed=3, engine=engine)
    assert list(on_ray.ids) == list(local.ids) and len(local.ids) == 80
    np.testing.assert_array_equal(on_ray.scores, local.scores)
