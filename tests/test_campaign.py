"""Campaigns end to end through the CLI, and the rules for bad inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchal import BatchalInputError, Campaign
from batchal.cli import app
from campaign_util import (CLASSES, fsl, ls_export, make_pool, make_predictions, truth, write_json,
                           write_label_csv)

runner = CliRunner()


def run(*args, ok=True):
    r = runner.invoke(app, ["campaign", *map(str, args)])
    if ok:
        assert r.exit_code == 0, r.output
    return r


@pytest.fixture
def camp(tmp_path):
    """An initialised, clustered campaign of 600 string-id items, with predictions."""
    ids, E = make_pool(tmp_path / "pool.parquet")
    make_predictions(tmp_path / "pred.parquet", ids)
    run("init", tmp_path / "c", "--pool", tmp_path / "pool.parquet", "--classes", ",".join(CLASSES))
    run("cluster", tmp_path / "c", "--mean-cluster-size", 10, "-q")
    return tmp_path, tmp_path / "c", ids


def read_ids_csv(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "id"
    return lines[1:]


def status(d):
    r = run("status", d, "--json")
    return json.loads(r.stdout)


def test_three_rounds_end_to_end(camp):
    tmp, d, ids = camp
    # round 1: csv out, every item labeled -> the round closes by itself
    run("select", d, "--predictions", tmp / "pred.parquet", "--batch-size", 50, "--seed", 1, "--out", tmp / "r1.csv")
    b1 = read_ids_csv(tmp / "r1.csv")
    assert len(b1) == len(set(b1)) == 50 and set(b1) <= set(ids)
    s = status(d)
    assert (s["pool"], s["labeled"], s["pending"]) == (600, 0, 50)
    assert s["rounds"] == [dict(s["rounds"][0], round=1, selected=50, labeled=0, open=True)]
    write_label_csv(tmp / "l1.csv", b1)
    r = run("label", d, tmp / "l1.csv")
    assert "50 new labels" in r.output and "round 1 closed" in r.output
    # round 2: jsonl out; half labeled through Parquet, then --close returns the rest to the pool
    run("select", d, "--predictions", tmp / "pred.parquet", "-k", 40, "--strategy", "margin", "--out", tmp / "r2.jsonl")
    rows = [json.loads(x) for x in (tmp / "r2.jsonl").read_text().splitlines()]
    b2 = [x["id"] for x in rows]
    assert len(b2) == 40 and not set(b2) & set(b1)
    assert rows[0]["round"] == 2 and rows[0]["prediction"] in CLASSES and 0 <= rows[0]["score"] <= 1
    # margin picks the smallest margins first
    assert [x["score"] for x in rows] == sorted(x["score"] for x in rows)
    pq.write_table(pa.table({"id": b2[:20], "label": [truth(i) for i in b2[:20]]}), tmp / "l2.parquet")
    r = run("label", d, tmp / "l2.parquet", "--close")
    assert "20 new labels" in r.output and "20 unlabeled items back in the pool" in r.output
    # round 3: Label Studio tasks with the image URL; returned items may be selected again
    run("select", d, "--predictions", tmp / "pred.parquet", "-k", 300, "--strategy", "margin",
        "--out", tmp / "r3.json", "--data-column", "image")
    tasks = json.loads((tmp / "r3.json").read_text())
    b3 = [t["data"]["id"] for t in tasks]
    assert len(b3) == 300 and not set(b3) & (set(b1) | set(b2[:20]))
    assert set(b2[20:]) <= set(b3)  # the 20 returned have the smallest margins: back in the next batch
    t0 = tasks[0]
    assert t0["data"]["image"] == f"https://example.org/img/{t0['data']['id']}.jpg"
    pred = t0["predictions"][0]
    assert pred["model_version"] == "round-3" and pred["result"][0]["type"] == "choices"
    assert pred["result"][0]["value"]["choices"][0] in CLASSES and pred["result"][0]["to_name"] == "image"
    export = ls_export(tasks, {i: truth(i) for i in b3})
    write_json(tmp / "ls.json", export)
    r = run("label", d, tmp / "ls.json")
    assert "300 new labels" in r.output and "round 3 closed" in r.output
    s = status(d)
    assert (s["labeled"], s["pending"], s["available"]) == (370, 0, 230)
    assert [(x["round"], x["selected"], x["labeled"], x["open"]) for x in s["rounds"]] == [
        (1, 50, 50, False), (2, 40, 20, False), (3, 300, 300, False)]
    assert sum(s["rounds"][0]["labels"].values()) == 50
    # the labeled set, exports and checks
    run("labels", d, "--out", tmp / "labels.csv")
    got = dict(line.split(",")[:2] for line in (tmp / "labels.csv").read_text().splitlines()[1:])
    got = {k.strip('"'): v.strip('"') for k, v in got.items()}
    assert got == {i: truth(i) for i in b1 + b2[:20] + b3}
    run("labels", d, "--out", tmp / "labels.parquet")
    assert pq.read_table(tmp / "labels.parquet").num_rows == 370
    run("export", d, "--round", 2, "--format", "csv", "--out", tmp / "e2.csv")
    assert read_ids_csv(tmp / "e2.csv") == b2
    run("status", d, "--plot", tmp / "status.png")
    assert (tmp / "status.png").stat().st_size > 1000
    assert "ok" in run("check", d).output


def test_select_is_idempotent_while_open(camp):
    tmp, d, ids = camp
    args = ["select", d, "--predictions", tmp / "pred.parquet", "-k", 30, "--out", tmp / "a.csv"]
    first = run(*args)
    assert "redundancy: margin's own batch" in first.output  # the recommended spec reads clusters
    run(*args[:-1], tmp / "b.csv")  # no seed given: the recorded one is used again
    assert read_ids_csv(tmp / "a.csv") == read_ids_csv(tmp / "b.csv")
    r = run("select", d, "--predictions", tmp / "pred.parquet", "-k", 30, "--out", tmp / "b.npy", ok=False)
    assert r.exit_code == 2 and "end it in .csv" in r.output
    r = run("select", d, "--predictions", tmp / "pred.parquet", "-k", 31, ok=False)
    assert r.exit_code == 2 and "--batch-size 30 (not 31)" in r.output
    make_predictions(tmp / "pred2.parquet", ids, seed=9)
    r = run("select", d, "--predictions", tmp / "pred2.parquet", "-k", 30, ok=False)
    assert r.exit_code == 2 and "other predictions" in r.output
    assert len(status(d)["rounds"]) == 1


def test_label_rules(camp):
    tmp, d, ids = camp
    run("select", d, "--predictions", tmp / "pred.parquet", "-k", 20, "--seed", 0, "--out", tmp / "b.csv")
    b = read_ids_csv(tmp / "b.csv")
    outside = next(i for i in ids if i not in b)
    bad_files = {
        "unknown": ([*b[:3], "nope"], None, "not in the campaign: 'nope'"),
        "outside": ([b[0], outside], None, "not in the open round's batch"),
        "conflict": ([b[0], b[0]], ["cat", "dog"], "conflicting labels"),
        "not a class": ([b[0]], ["wolf"], "not among the campaign's classes"),
        "empty": ([b[0]], [""], "empty label"),
    }
    for name, (i, lab, msg) in bad_files.items():
        write_label_csv(tmp / "bad.csv", i, lab)
        r = run("label", d, tmp / "bad.csv", ok=False)
        assert r.exit_code == 2 and msg in r.output, (name, r.output)
        assert r.output.count("error:") == 1
        assert status(d)["labeled"] == 0, name  # nothing half-written
    (tmp / "nolabel.csv").write_text(f"id,class\n{b[-1]},{truth(b[-1])}\n")
    r = run("label", d, tmp / "nolabel.csv", ok=False)
    assert r.exit_code == 2 and "no column 'label'" in r.output and "--label-column" in r.output
    assert "1 new labels" in run("label", d, tmp / "nolabel.csv", "--label-column", "class").output
    write_label_csv(tmp / "ok.csv", b[:10] + b[:2])  # a repeated row with the same label is fine
    assert "10 new labels" in run("label", d, tmp / "ok.csv").output
    assert "0 new labels, 10 already recorded" in run("label", d, tmp / "ok.csv").output  # a no-op
    write_label_csv(tmp / "other.csv", [b[0]], ["fox" if truth(b[0]) != "fox" else "cat"])
    r = run("label", d, tmp / "other.csv", ok=False)
    assert "already labeled differently" in r.output
    # a Label Studio export: cancelled annotations skipped, majority wins, a tie is an error
    tasks = Campaign(d).batch(1)
    tasks = [{"data": {"id": i, "batchal_campaign": tasks["campaign_id"]}} for i in b]
    export = ls_export(tasks, {i: truth(i) for i in b[10:15]}, cancelled={b[15]},
                       extra_votes={b[10]: [truth(b[10]), "fox"]})
    write_json(tmp / "ls.json", export)
    r = run("label", d, tmp / "ls.json")
    assert "5 new labels" in r.output and "1 cancelled annotations skipped" in r.output
    export = ls_export(tasks, {b[16]: "cat"}, extra_votes={b[16]: ["dog"]})
    write_json(tmp / "tie.json", export)
    r = run("label", d, tmp / "tie.json", ok=False)
    assert "disagree" in r.output and repr(b[16]) in r.output
    for t in tasks:
        t["data"]["batchal_campaign"] = "0123abcd"
    write_json(tmp / "foreign.json", ls_export(tasks, {b[17]: "cat"}))
    r = run("label", d, tmp / "foreign.json", ok=False)
    assert "another campaign" in r.output
    assert status(d)["labeled"] == 16
    assert "ok" in run("check", d).output


def test_multilabel_and_int_ids(tmp_path):
    r = np.random.default_rng(0)
    np.save(tmp_path / "E.npy", r.normal(size=(200, 4)).astype(np.float32))
    run("init", tmp_path / "c", "--pool", tmp_path / "E.npy")
    P = r.random((200, 3))
    np.save(tmp_path / "P.npy", P)
    run("select", tmp_path / "c", "--predictions", tmp_path / "P.npy", "-k", 5, "--strategy", "margin",
        "--multilabel", "--out", tmp_path / "b.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert all(isinstance(x["id"], int) for x in rows)
    m = np.abs(2 * P - 1).min(axis=1)
    assert [x["id"] for x in rows] == np.argsort(m)[:5].tolist()
    write_label_csv(tmp_path / "l.csv", [x["id"] for x in rows], ["0|2", "2|0", "1", " 1 | 0 ", "2"])
    run("label", tmp_path / "c", tmp_path / "l.csv")
    got = Campaign(tmp_path / "c").labels().to_pydict()
    assert dict(zip(got["id"], got["label"])) == dict(zip([x["id"] for x in rows], ["0|2", "0|2", "1", "0|1", "2"]))


def test_bad_pools(tmp_path):
    E = np.ones((4, 3), dtype=np.float32)
    pq.write_table(pa.table({"key": ["a", "b", "c", "d"], "embedding": fsl(E)}), tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"id": ["a", "b", "a", "d"], "embedding": fsl(E)}), tmp_path / "dup.parquet")
    pq.write_table(pa.table({"id": ["a", "b", "c"], "embedding": pa.array([[1.0, 2.0], [1.0], [3.0, 4.0]])}),
                   tmp_path / "ragged.parquet")
    En = E.copy()
    En[2, 1] = np.nan
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "embedding": fsl(En)}), tmp_path / "nan.parquet")
    cases = {"nocol": "no column 'id'", "dup": "duplicate ids, e.g. 'a'", "ragged": "ragged: id 'b' has 1 values",
             "nan": "NaN (id 'c')"}
    for name, msg in cases.items():
        r = run("init", tmp_path / name, "--pool", tmp_path / f"{name}.parquet", ok=False)
        assert r.exit_code == 2 and msg in r.output, (name, r.output)
        assert not (tmp_path / name / "arrays").exists() or not any((tmp_path / name / "arrays").iterdir())
        with pytest.raises(BatchalInputError, match="not a campaign"):
            Campaign(tmp_path / name)
    # init again after a failure works, and with the same pool is a no-op
    pq.write_table(pa.table({"key": ["a", "b", "c", "d"], "embedding": fsl(E)}), tmp_path / "nocol.parquet")
    run("init", tmp_path / "nocol", "--pool", tmp_path / "nocol.parquet", "--id-column", "key")
    run("init", tmp_path / "nocol", "--pool", tmp_path / "nocol.parquet", "--id-column", "key")
    r = run("init", tmp_path / "nocol", "--pool", tmp_path / "dup.parquet", ok=False)
    assert "already a campaign" in r.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    r = run("init", tmp_path / "mine", "--pool", tmp_path / "nocol.parquet", "--id-column", "key", ok=False)
    assert "holds other files (notes.txt)" in r.output and (tmp_path / "mine" / "notes.txt").exists()


def test_bad_predictions(camp):
    tmp, d, ids = camp
    P = np.full((len(ids), 3), 1 / 3, dtype=np.float32)
    variants = {
        "unknown": (ids + ["zzz"], np.vstack([P, P[:1]]), "not in the campaign: 'zzz'"),
        "missing": (ids[:-2], P[:-2], "no row for 2 items that can be selected"),
        "dup": (ids + ids[:1], np.vstack([P, P[:1]]), "more than once"),
        "nan": (ids, np.where(np.arange(len(ids))[:, None] == 7, np.nan, P).astype(np.float32), f"NaN (id '{ids[7]}')"),
        "sum": (ids, P * 2, "must sum to 1"),
    }
    for name, (i, A, msg) in variants.items():
        pq.write_table(pa.table({"id": i, "probs": fsl(A)}), tmp / f"{name}.parquet")
        r = run("select", d, "--predictions", tmp / f"{name}.parquet", "-k", 5, ok=False)
        assert r.exit_code == 2 and msg in r.output, (name, r.output)
    pq.write_table(pa.table({"id": ids, "p": fsl(P)}), tmp / "col.parquet")
    r = run("select", d, "--predictions", tmp / "col.parquet", "-k", 5, ok=False)
    assert "neither a 'probs' nor a 'logits' column" in r.output
    r = run("select", d, "--predictions", tmp / "col.parquet", "--probs-column", "p", "-k", 5, "--strategy", "margin")
    assert status(d)["pending"] == 5
    # predictions may leave out labeled and pending items
    b1 = Campaign(d).batch(1)["ids"]
    nxt = [i for i in ids if i not in b1]
    pq.write_table(pa.table({"id": nxt, "logits": fsl(np.zeros((len(nxt), 3), np.float32))}), tmp / "rest.parquet")
    write_label_csv(tmp / "l.csv", b1[:3])
    run("label", d, tmp / "l.csv", "--close")  # two items go back to the pool: they need predictions again
    r = run("select", d, "--predictions", tmp / "rest.parquet", "-k", 5, "--strategy", "margin", ok=False)
    assert "no row for 2 items" in r.output and repr(b1[3]) in r.output
    pq.write_table(pa.table({"id": nxt + b1[3:], "logits": fsl(np.zeros((len(nxt) + 2, 3), np.float32))}),
                   tmp / "rest.parquet")
    run("select", d, "--predictions", tmp / "rest.parquet", "-k", 5, "--strategy", "margin")


def test_add_joins_nearest_cluster(camp):
    tmp, d, ids = camp
    c = Campaign(d)
    emb = c._store.load_npy(c._store.conn.execute("SELECT emb_file FROM shards").fetchone()[0])
    C0 = np.asarray(c._clusters(c._store.conn))
    near = emb[:5] + 1e-4
    far = -10 * np.abs(emb[:3]) - 50  # nowhere near the pool (cosine: an unseen direction mix)
    far[:, 0] = 100
    new = np.vstack([near, far]).astype(np.float32)
    pq.write_table(pa.table({"id": [f"n{i}" for i in range(8)], "embedding": fsl(new)}), tmp / "new.parquet")
    r = run("add", d, "--pool", tmp / "new.parquet")
    assert "added 8 items" in r.output
    rep = c.add(tmp / "new.parquet")  # the same again: a no-op
    assert rep["unchanged"] and c.status()["pool"] == 608
    C1 = np.asarray(c._clusters(c._store.conn))
    assert C1.shape == (608,) and (C1[:600] == C0).all()
    assert (C1[600:605] == C0[:5]).all()
    assert (rep["joined"], rep["singletons"]) == (5, 3) and rep["distance"]["max"] > rep["threshold"]
    assert len(set(C1[605:])) == 3 and not set(C1[605:]) & set(C0)  # three new singleton clusters
    pq.write_table(pa.table({"id": ["n0", "m1"], "embedding": fsl(new[:2])}), tmp / "clash.parquet")
    r = run("add", d, "--pool", tmp / "clash.parquet", ok=False)
    assert "already in the campaign" in r.output
    make_predictions(tmp / "pred.parquet", ids + [f"n{i}" for i in range(8)])
    run("select", d, "--predictions", tmp / "pred.parquet", "-k", 608)  # every item, the new ones included
    assert "ok" in run("check", d).output


def test_check_detects_damage(camp):
    tmp, d, ids = camp
    run("select", d, "--predictions", tmp / "pred.parquet", "-k", 10)
    c = Campaign(d)
    name = c._store.conn.execute("SELECT scores_file FROM rounds").fetchone()[0]
    p = d / name
    a = np.load(p)
    a[0] += 1
    os.chmod(p, 0o644)
    np.save(p, a)
    r = run("check", d, ok=False)
    assert r.exit_code == 1 and "does not match its recorded SHA-256" in r.output


def test_leftovers_cleaned_and_lock_timeout(camp, monkeypatch):
    from batchal.campaign.store import _Lock

    tmp, d, ids = camp
    (d / "arrays" / ".scores-x.npy.abc.tmp.npy").write_bytes(b"half")
    (d / "arrays" / "scores-deadbeef.npy").write_bytes(b"unreferenced")
    lock = _Lock(d / "lock", 1, "test")
    lock.acquire()
    try:
        monkeypatch.setenv("BATCHAL_LOCK_TIMEOUT", "0.3")
        r = run("select", d, "--predictions", tmp / "pred.parquet", "-k", 10, ok=False)
        assert r.exit_code == 3 and "busy" in r.output and f"pid {os.getpid()}" in r.output
    finally:
        lock.release()
    run("select", d, "--predictions", tmp / "pred.parquet", "-k", 10)
    left = {p.name for p in (d / "arrays").iterdir()}
    assert ".scores-x.npy.abc.tmp.npy" not in left and "scores-deadbeef.npy" not in left
    assert "ok" in run("check", d).output


def test_two_concurrent_writers(camp):
    """Two label commands at once: the second waits for the lock, both succeed, nothing is lost."""
    tmp, d, ids = camp
    run("select", d, "--predictions", tmp / "pred.parquet", "-k", 200, "--out", tmp / "b.csv")
    b = read_ids_csv(tmp / "b.csv")
    write_label_csv(tmp / "a.csv", b[:100])
    write_label_csv(tmp / "z.csv", b[100:])
    env = dict(os.environ, BATCHAL_LOCK_TIMEOUT="60")
    procs = [subprocess.Popen([sys.executable, "-c", "from batchal.cli import app; app()", "campaign", "label", str(d), str(tmp / f)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for f in ("a.csv", "z.csv")]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    s = status(d)
    assert s["labeled"] == 200 and s["rounds"][0]["open"] is False
    assert "ok" in run("check", d).output


def test_labelstudio_files_split(camp):
    tmp, d, ids = camp
    run("select", d, "--predictions", tmp / "pred.parquet", "-k", 25, "--out", tmp / "t.json", "--tasks-per-file", 10)
    parts = sorted(tmp.glob("t-*.json"))
    assert [p.name for p in parts] == ["t-001.json", "t-002.json", "t-003.json"]
    assert [len(json.loads(p.read_text())) for p in parts] == [10, 10, 5]


def test_seed_round_without_predictions_and_npy_add(camp):
    tmp, d, ids = camp
    c = Campaign(d)
    r = run("select", d, "-k", 5, ok=False)
    assert "needs --predictions" in r.output
    run("select", d, "-k", 20, "--strategy", "random", "--seed", 0, "--out", tmp / "seed.json")
    tasks = json.loads((tmp / "seed.json").read_text())
    assert len(tasks) == 20 and all(t["predictions"] == [] for t in tasks)  # nothing to pre-annotate
    write_json(tmp / "ls.json", ls_export(tasks, {t["data"]["id"]: truth(t["data"]["id"]) for t in tasks}))
    assert "20 new labels" in run("label", d, tmp / "ls.json").output
    E = np.random.default_rng(0).normal(size=(7, 8)).astype(np.float32)
    np.save(tmp / "new.npy", E)
    np.save(tmp / "new_ids.npy", np.array([f"x{i}" for i in range(7)]))
    r = run("add", d, "--pool", tmp / "new.npy", ok=False)
    assert "--pool ids are ints; this campaign's ids are strs" in r.output
    run("add", d, "--pool", tmp / "new.npy", "--ids", tmp / "new_ids.npy")
    assert c.status()["pool"] == 607 and c.check() == []


def test_select_with_the_embedding_duplicate_test_reads_the_campaigns_embeddings(camp):
    """cluster-margin:...:dup= reads the campaign's stored embeddings: the batch the API gives on the same arrays."""
    import batchal

    tmp, d, ids = camp
    spec = "cluster-margin:order=margin:dup=0.01"
    c = Campaign(d)
    batch = c.select(40, tmp / "pred.parquet", strategy=spec, seed=3)
    with c._store.read() as conn:
        E, cl = np.asarray(c._embeddings(conn)), np.asarray(c._clusters(conn))
    P = pq.read_table(tmp / "pred.parquet").column("probs").combine_chunks().flatten().to_numpy()
    want = batchal.select(spec, 40, probs=P.reshape(len(ids), -1), embeddings=E, clusters=cl, seed=3)
    assert batch.ids == [ids[i] for i in want]
    # the pool's 30 tight groups: the batch spreads over more groups than margin's own list
    group = {i: g for i, g in zip(ids, cl)}
    plain = batchal.select("margin", 40, probs=P.reshape(len(ids), -1))
    assert len({group[i] for i in batch.ids}) >= len({cl[i] for i in plain})


@pytest.mark.parametrize("bad", ["x", float("nan"), True, -1])
def test_campaign_api_scalars_refused_by_name_and_nothing_written(tmp_path, bad):
    """The Python API's scalar arguments (the CLI's typed options already refuse these): a clear error naming the
    argument, and the campaign store unchanged (each check runs before the command's transaction)."""
    from campaign_util import make_pool, make_predictions

    ids, _ = make_pool(tmp_path / "pool.parquet", n=120)
    make_predictions(tmp_path / "preds.parquet", ids)
    c = Campaign.init(tmp_path / "c", tmp_path / "pool.parquet")
    c.select(5, tmp_path / "preds.parquet", strategy="margin", seed=0)
    before = c.status()
    calls = {
        "--knn": lambda: c.dedup(0.01, knn=bad),
        "--seed": lambda: c.dedup(0.01, seed=bad),
        "round": lambda: c.batch(bad),
        "--round": lambda: c.undo(bad),
    }
    for name, call in calls.items():
        with pytest.raises(BatchalInputError, match=name):
            call()
    with pytest.raises(BatchalInputError, match="--seed"):
        c.select(5, tmp_path / "preds.parquet", strategy="margin", seed=bad)
    assert c.status() == before
    c.close()
