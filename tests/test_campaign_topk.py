"""A campaign over three rounds through the CLI with top-k Parquet predictions: the batches of dense ones."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchal import topk_predictions, topk_table
from batchal.cli import app
from campaign_util import fsl, make_pool, write_label_csv
from topk_util import redundant_pool

runner = CliRunner()
C = 8
VOCAB = [f"c{i}" for i in range(C)]


def run(*args, ok=True):
    r = runner.invoke(app, ["campaign", *map(str, args)])
    if ok:
        assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("camp")
    ids, _ = make_pool(tmp / "pool.parquet", n=900)
    run("init", tmp / "c", "--pool", tmp / "pool.parquet", "--classes", ",".join(VOCAB))
    run("cluster", tmp / "c", "--mean-cluster-size", 10, "-q")
    return tmp, ids


def _predictions(tmp, ids, rnd, multilabel, k, leave_out=()):
    """Round ``rnd``'s model output: dense and top-k Parquet, rows shuffled, ``leave_out`` ids omitted."""
    r = np.random.default_rng(rnd)
    n = len(ids)
    # at most k uncertain classes per item, the rest confidently absent, as with large vocabularies: there the
    # top-k entries decide every near-duplicate comparison, so the recommended spec's batch is the dense one
    P, _ = redundant_pool(n=n, C=C, active=3, multilabel=multilabel, seed=rnd)
    P = P[r.permutation(n)]
    keep = np.array([i not in set(leave_out) for i in ids])
    order = r.permutation(np.flatnonzero(keep))
    sel_ids = [ids[i] for i in order]
    dense, top = tmp / f"dense{rnd}.parquet", tmp / f"top{rnd}.parquet"
    pq.write_table(pa.table({"id": sel_ids, "probs": fsl(P[order])}), dense)
    c, p = topk_predictions(P[order], k, multilabel=multilabel)
    pq.write_table(topk_table(sel_ids, c, p, n_classes=C), top, row_group_size=200)
    return dense, top


@pytest.mark.parametrize("multilabel", [False, True], ids=["multiclass", "multilabel"])
def test_three_rounds_with_topk_parquet_equal_dense(clustered, tmp_path, multilabel):
    tmp, ids = clustered
    dirs = {kind: tmp_path / kind for kind in ("dense", "top")}
    for d in dirs.values():
        shutil.copytree(tmp / "c", d)
    ml = ["--multilabel"] if multilabel else []
    labeled = []
    for rnd in (1, 2, 3):
        dense, top = _predictions(tmp_path, ids, rnd, multilabel, k=4, leave_out=labeled)
        got = {}
        for kind, preds in (("dense", dense), ("top", top)):
            out = tmp_path / f"{kind}{rnd}.jsonl"
            run("select", dirs[kind], "--predictions", preds, "-k", 60, "--seed", rnd, *ml, "--out", out)
            got[kind] = [json.loads(x) for x in out.read_text().splitlines()]
        assert [x["id"] for x in got["top"]] == [x["id"] for x in got["dense"]]
        assert [x["score"] for x in got["top"]] == [x["score"] for x in got["dense"]]
        if not multilabel:  # the top class is the first entry; multi-label pre-annotations may miss classes
            assert [x["prediction"] for x in got["top"]] == [x["prediction"] for x in got["dense"]]
        batch = [x["id"] for x in got["dense"]]
        labels = [VOCAB[sum(map(ord, i)) % C] for i in batch]
        for kind in dirs:
            write_label_csv(tmp_path / f"l{rnd}.csv", batch, labels)
            assert "round %d closed" % rnd in run("label", dirs[kind], tmp_path / f"l{rnd}.csv").output
        labeled += batch
    stops = {}
    for kind, d in dirs.items():
        s = json.loads(run("status", d, "--json").stdout)
        assert (s["labeled"], s["pending"]) == (180, 0)
        assert "ok" in run("check", d).output
        stops[kind] = [r["stop"] for r in s["rounds"]]
        assert stops[kind][0]["kappa"] is None and all(-1 <= x["kappa"] <= 1 and 0 <= x["changed"] <= 1
                                                       for x in stops[kind][1:])
    # the stopping signals from top-k: the dense ones where the predicted labels are the same (multi-class:
    # the top class), the uncertainty the exact margin-based one instead of the entropy
    assert [x["uncertainty_kind"] for x in stops["top"]] == ["margin"] * 3
    assert [x["uncertainty_kind"] for x in stops["dense"]] == ["entropy"] * 3
    if not multilabel:
        assert [(x["kappa"], x["changed"], x["n"]) for x in stops["top"]] == \
            [(x["kappa"], x["changed"], x["n"]) for x in stops["dense"]]


def test_topk_predictions_refused_in_a_campaign(clustered, tmp_path):
    tmp, ids = clustered
    d = tmp_path / "c"
    shutil.copytree(tmp / "c", d)
    P = np.random.default_rng(0).dirichlet(np.ones(C), size=len(ids)).astype(np.float32)
    c, p = topk_predictions(P, 3)
    c[5, 2] = C  # outside the campaign's classes
    pq.write_table(topk_table(ids, c, p), tmp_path / "bad.parquet")
    r = run("select", d, "--predictions", tmp_path / "bad.parquet", "-k", 10, ok=False)
    assert r.exit_code == 2 and "class id 8 outside the vocabulary of 8" in r.output and "row 5" in r.output
    c[5, 2] = c[5, 0]
    pq.write_table(topk_table(ids, c, p), tmp_path / "dup.parquet")
    r = run("select", d, "--predictions", tmp_path / "dup.parquet", "-k", 10, ok=False)
    assert r.exit_code == 2 and "repeats a class id" in r.output and "dup.parquet" in r.output
    r = run("select", d, "--predictions", tmp_path / "dup.parquet", "-k", 10, "--strategy", "entropy", ok=False)
    assert r.exit_code == 2
    s = json.loads(run("status", d, "--json").stdout)
    assert s["rounds"] == []  # nothing recorded


def test_precomputed_clusters(tmp_path):
    ids, E = make_pool(tmp_path / "pool.parquet", n=300)
    run("init", tmp_path / "c", "--pool", tmp_path / "pool.parquet", "--classes", ",".join(VOCAB))
    cl = np.arange(300) // 10
    np.save(tmp_path / "C.npy", cl)
    r = run("cluster", tmp_path / "c", "--clusters", tmp_path / "C.npy")
    assert "30 over 300 rows" in r.output and "precomputed" in r.output
    assert "nothing to do" in run("cluster", tmp_path / "c", "--clusters", tmp_path / "C.npy").output
    np.save(tmp_path / "C2.npy", cl[:-1])
    r = run("cluster", tmp_path / "c", "--clusters", tmp_path / "C2.npy", "--force", ok=False)
    assert r.exit_code == 2 and "299 cluster ids" in r.output
    r = run("cluster", tmp_path / "c", "--clusters", tmp_path / "C.npy", "--mean-cluster-size", 5, ok=False)
    assert r.exit_code == 2
    from batchal import Campaign

    c = Campaign(tmp_path / "c")
    P, _ = redundant_pool(n=300, C=C, active=3, seed=1)
    cls, pr = topk_predictions(P, 4)
    pq.write_table(topk_table(ids, cls, pr, n_classes=C), tmp_path / "top.parquet")
    got = c.select(30, tmp_path / "top.parquet", strategy="cluster-margin", seed=0)
    dense = __import__("batchal").select("cluster-margin", 30, probs=P, clusters=cl, seed=0)
    assert list(got.ids) == [ids[i] for i in dense]
    assert "ok" in run("check", tmp_path / "c").output
