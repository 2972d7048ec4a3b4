"""A campaign on the ray engine records what the same campaign on the local engine records (a real local Ray).

The engine only computes: the clusters, each round's batch (ids and order),
its margins and the scores file must be the local ones, the labeled and
pending items excluded as locally, and a strategy the ray engine does not run
refused with nothing written.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ray", reason="the ray engine's tests need ray (pip install \"batchal[ray]\")")
from typer.testing import CliRunner

from batchal import BatchalInputError, Campaign
from batchal.cli import app
from batchal.selectors import RECOMMENDED
from campaign_util import CLASSES, make_pool, make_predictions, write_label_csv
from ray_util import ray_engine
from test_ray_cluster import canonical_tree

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

runner = CliRunner()
#: (batch size, strategy, seed) of the two rounds; the first round is partly labeled, then closed
ROUNDS = [(100, "cluster-margin", 3), (120, RECOMMENDED, 4)]
N_LABELED = 60
CLUSTER = dict(mean_cluster_size=10.0, method="graph", knn=10)  # graph: what the ray engine runs


@pytest.fixture(scope="module")
def engine():
    yield from ray_engine()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3,000 items in two shards (init + add: the ray workers read both embedding files)."""
    d = tmp_path_factory.mktemp("ray-campaign")
    ids, _ = make_pool(d / "pool.parquet", n=2500)
    new_ids, _ = make_pool(d / "new.parquet", n=500, seed=5, start=2500)
    ids = ids + new_ids
    make_predictions(d / "P1.parquet", ids, seed=1)
    return d, ids


def _run_api(d, ids, name, engine):
    """Init, add, cluster, round 1 (label 60, close: 40 return to the pool), round 2 (labeled items unpredicted)."""
    c = Campaign.init(d / name, d / "pool.parquet", classes=CLASSES)
    c.add(d / "new.parquet")
    c.cluster(**CLUSTER, engine=engine)
    (k1, s1, seed1), (k2, s2, seed2) = ROUNDS
    b1 = c.select(k1, d / "P1.parquet", strategy=s1, seed=seed1, engine=engine)
    write_label_csv(d / f"{name}-l1.csv", b1.ids[:N_LABELED])
    c.label(d / f"{name}-l1.csv", close=True)
    rest = [i for i in ids if i not in set(b1.ids[:N_LABELED])]
    make_predictions(d / f"{name}-P2.parquet", rest, seed=2)
    b2 = c.select(k2, d / f"{name}-P2.parquet", strategy=s2, seed=seed2, engine=engine)
    return c, b1, b2


def snapshot(path) -> dict:
    """Everything a campaign records but names, times and paths (which differ between any two runs)."""
    c = Campaign(path)
    with c._store.read() as conn:
        q = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        tree = c._store.load_npy(q("SELECT tree_file FROM clustering ORDER BY gen DESC LIMIT 1")[0][0])
        snap = dict(
            clusters=np.asarray(c._clusters(conn)).tolist(),
            tree=canonical_tree(np.asarray(tree), tree.shape[0] + 1).tolist(),
            clustering=q("SELECT gen, params, metric, threshold, n_rows FROM clustering ORDER BY gen"),
            rounds=q("SELECT round, status, batch_size, strategy, seed, seed_used, predictions_sha256, multilabel, "
                     "close_reason FROM rounds ORDER BY round"),
            batch_items=q("SELECT round, pos, row, item_id, score, pred, returned FROM batch_items "
                          "ORDER BY round, pos"),
            # bit for bit (the items without a prediction hold NaN, which equals nothing as a float)
            scores=[np.asarray(c._store.load_npy(f)).tobytes() for (f,) in
                    q("SELECT scores_file FROM rounds ORDER BY round")],
            labels=q("SELECT row, item_id, round, label FROM labels ORDER BY row"),
            # the clustering's kNN graph (kept for `campaign dedup`) is the local engine's alone: the ray
            # engine's graph stays distributed over its workers, and dedup then searches
            files=sorted(q("SELECT kind, count(*) FROM files WHERE kind != 'knn' GROUP BY kind")),
            history=[(e, {k: v for k, v in json.loads(x).items() if k != "source"})  # source: the labels file
                     for e, x in q("SELECT command, detail FROM history ORDER BY seq")],
        )
    st = c.status()
    for key in ("campaign", "campaign_id"):
        st.pop(key)
    for r in st["rounds"]:
        r.pop("opened_at"), r.pop("closed_at")
    snap["status"] = st
    assert c.check() == [], c.check()
    c.close()
    return snap


@pytest.fixture(scope="module")
def local(data):
    d, ids = data
    c, b1, b2 = _run_api(d, ids, "local", None)
    c.close()
    return dict(b1=b1, b2=b2, snap=snapshot(d / "local"))


def test_api_campaign_on_ray_records_the_local_campaign(engine, data, local, monkeypatch):
    from batchal.engines.ray import RayEngine
    from batchal.engines.ray.select import RayPool

    calls = []

    def spy(cls, name):
        f = getattr(cls, name)

        def wrapped(*a, **k):
            calls.append(name)
            return f(*a, **k)
        monkeypatch.setattr(cls, name, wrapped)

    spy(RayEngine, "linkage")  # the HAC and the bottom-k really ran on Ray, not in this process
    spy(RayPool, "top_uncertain")
    d, ids = data
    c, b1, b2 = _run_api(d, ids, "ray", engine)
    assert calls == ["linkage", "top_uncertain", "top_uncertain"]
    for got, want in ((b1, local["b1"]), (b2, local["b2"])):
        assert got.ids == want.ids  # the same items, in the same order
        np.testing.assert_array_equal(got.scores, want.scores)
        assert got.predictions == want.predictions and got.seed == want.seed and got.strategy == want.strategy
        assert got.diagnostics == want.diagnostics and got.diagnostics["k_m"] > 0
    labeled = set(b1.ids[:N_LABELED])
    assert not labeled & set(b2.ids)  # labeled items excluded; returned ones may come back
    c.close()
    assert snapshot(d / "ray") == local["snap"]
    r = Campaign(d / "ray")
    with r._store.read() as conn:
        assert r._meta(conn, "knn_graph") is None  # campaign dedup searches there, and says why


def test_api_engine_by_name_and_refusals(engine, data, local, tmp_path):
    d, _ = data
    c = Campaign.init(tmp_path / "c", d / "pool.parquet", classes=CLASSES)
    c.add(d / "new.parquet")
    before = c.status()
    for strategy in ("coreset", "badge:partitions=2"):
        with pytest.raises(BatchalInputError, match=rf"strategy '{strategy.split(':')[0]}'.*--engine local"):
            c.select(10, d / "P1.parquet", strategy=strategy, engine="ray")
    with pytest.raises(BatchalInputError, match="exact"):
        c.cluster(method="exact", engine=engine)
    with pytest.raises(BatchalInputError, match="unknown engine 'spark'"):
        c.select(10, d / "P1.parquet", strategy="margin", engine="spark")
    assert c.status() == before and c.check() == []
    ref = Campaign.init(tmp_path / "ref", d / "pool.parquet", classes=CLASSES)
    ref.add(d / "new.parquet")
    # a seed round without predictions (nothing to score: the ray engine's pool is the local one)
    b0 = c.select(20, strategy="random", seed=2, engine=engine)
    assert b0.ids == ref.select(20, strategy="random", seed=2).ids
    c.label(close=True)
    ref.label(close=True)
    # by name: the engine joins the Ray instance already running (and leaves it running)
    b = c.select(10, d / "P1.parquet", strategy="margin", seed=1, engine="ray")
    assert b.ids == ref.select(10, d / "P1.parquet", strategy="margin", seed=1).ids
    import ray

    assert ray.is_initialized()


def _cli(*args, ok=True):
    r = runner.invoke(app, ["campaign", *map(str, args)])
    if ok:
        assert r.exit_code == 0, r.output
    return r


def test_cli_campaign_on_ray_records_the_local_campaign(engine, data, local):
    d, _ = data
    c = d / "cli-ray"
    ray_opts = ("--engine", "ray")
    _cli("init", c, "--pool", d / "pool.parquet", "--classes", ",".join(CLASSES))
    _cli("add", c, "--pool", d / "new.parquet")
    _cli("cluster", c, "--mean-cluster-size", 10, "--method", "graph", "--knn", 10, "-q", *ray_opts)
    (k1, s1, seed1), (k2, s2, seed2) = ROUNDS
    _cli("select", c, "-k", k1, "--predictions", d / "P1.parquet", "-s", s1, "--seed", seed1,
         "--out", d / "cli-r1.csv", "-q", *ray_opts)
    b1 = (d / "cli-r1.csv").read_text().splitlines()[1:]
    assert b1 == local["b1"].ids
    write_label_csv(d / "cli-l1.csv", b1[:N_LABELED])
    _cli("label", c, d / "cli-l1.csv", "--close", "-q")
    # round 2 with the default strategy (the recommended spec) and its predictions file of the API run
    r = _cli("select", c, "-k", k2, "--predictions", d / "local-P2.parquet", "--seed", seed2,
             "--out", d / "cli-r2.csv", *ray_opts)
    assert "engine: ray" in r.output and f"({s2}, seed {seed2})" in r.output and "k_m" in r.output
    assert (d / "cli-r2.csv").read_text().splitlines()[1:] == local["b2"].ids
    assert _cli("check", c).exit_code == 0
    assert snapshot(c) == local["snap"]


def test_cli_refusals_leave_the_campaign_unchanged(engine, data, monkeypatch):
    d, _ = data
    c = d / "cli-refusals"
    _cli("init", c, "--pool", d / "pool.parquet", "--classes", ",".join(CLASSES))

    def state():
        return _cli("status", c, "--json").stdout, sorted(p.relative_to(c).as_posix() for p in c.rglob("*"))

    before = state()

    def no_ray(*a, **k):
        raise AssertionError("a Ray engine was made for a command that must fail first")

    import batchal.cli.campaign as cli_campaign

    with monkeypatch.context() as m:  # refused before a Ray instance is started (or joined)
        m.setattr(cli_campaign, "_engine", no_ray)
        for args, names in [
            (("select", c, "-k", 10, "--predictions", d / "P1.parquet", "-s", "coreset"),
             ["'coreset'", "--engine local"]),
            (("select", c, "-k", 10, "--predictions", d / "P1.parquet", "-s", "badge:partitions=2"), ["'badge'"]),
            (("select", c, "-k", 10, "--predictions", d / "nope.parquet"), ["--predictions", "nope.parquet"]),
            (("select", d / "not-a-campaign", "-k", 10, "--predictions", d / "P1.parquet"), ["not a campaign"]),
            (("cluster", d / "not-a-campaign"), ["not a campaign"]),
        ]:
            r = _cli(*args, "--engine", "ray", ok=False)
            assert r.exit_code == 2, r.output
            assert r.output.count("error:") == 1 and len(r.output.strip().splitlines()) == 1, r.output
            for name in names:
                assert name in r.output, (name, r.output)
    for args in (("select", c, "-k", 10, "--predictions", d / "P1.parquet"), ("cluster", c)):
        r = _cli(*args, "--engine", "spark", ok=False)  # bad engine name: one line, exit 2
        assert r.exit_code == 2 and r.output.count("error:") == 1 and "--engine" in r.output, r.output
        r = _cli(*args, "--ray-address", "auto", ok=False)  # as `batchal select`: the address is for ray
        assert r.exit_code == 2 and "--ray-address is only for --engine ray" in r.output, r.output
    r = _cli("cluster", c, "--method", "exact", "--engine", "ray", "-q", ok=False)
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "exact" in r.output, r.output
    assert not (d / "not-a-campaign").exists()
    assert state() == before
    assert _cli("check", c).exit_code == 0
