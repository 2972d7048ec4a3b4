"""SIGKILL at any moment of a campaign command: the campaign is as before it or as after it.

Two kinds of kill: at every named point of the commands (``BATCHAL_CRASH_AT``:
array written, database changed but not committed, committed but output not
written, ...) and at random moments of ``select`` and ``label`` over many
rounds. After each kill the same command is run again (resume) and
``Campaign.check`` must pass; across all rounds no item is selected twice and
no label is lost.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from batchal.campaign import Campaign
from campaign_util import make_pool, make_predictions, truth, write_label_csv

CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["pytest", "crash_worker"])  # pytest: the main module each child re-imports

#: rounds of (select, label part, label rest or --close) with a random kill in each command
RANDOM_ROUNDS = int(os.environ.get("BATCHAL_CRASH_ROUNDS", "14"))


#: seconds the last child ran its command (start of the command to exit)
LAST = {"seconds": 0.0}


def child(directory, op, crash_at=None, kill_after=None, **kwargs):
    """Run one command in a forked child; kill it after ``kill_after`` s. Returns its exit code."""
    import crash_worker

    started = CTX.Event()
    p = CTX.Process(target=crash_worker.run, args=(str(directory), op, kwargs, crash_at, started))
    p.start()
    assert started.wait(60), "child did not start"
    t0 = time.perf_counter()
    if kill_after is not None:
        p.join(kill_after)
        if p.exitcode is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                # it ended on its own just now: the forkserver (its parent) reaped it before the pipe
                # told us; join() below reads its exit code
                pass
    p.join(120)
    LAST["seconds"] = time.perf_counter() - t0
    assert p.exitcode is not None, "child hung"
    return p.exitcode


def no_leftovers(d):
    files = {p.name for p in (d / "arrays").iterdir()} | {p.name for p in (d / "reports").iterdir()}
    c = Campaign(d)
    listed = {r[0].split("/", 1)[1] for r in c._store.conn.execute("SELECT name FROM files")}
    c.close()
    return files == listed


def checked(d):
    c = Campaign(d)
    problems = c.check()
    assert problems == [], problems
    assert signals_match_rounds(c)
    return c


def signals_match_rounds(c) -> bool:
    """Every round selected with predictions has its stop-set signals, and no signals lack their round's batch."""
    q = c._store.conn.execute
    with_preds = {r for (r,) in q("SELECT round FROM rounds WHERE predictions_sha256 IS NOT NULL")}
    signals = {r for (r,) in q("SELECT round FROM stop_rounds")}
    batches = {r for (r,) in q("SELECT DISTINCT round FROM batch_items")}
    drawn = c._meta(c._store.conn, "stop_set_file") is not None
    return with_preds == signals and signals <= batches and drawn == bool(signals)


@pytest.fixture(scope="module", autouse=True)
def forkserver():
    """Start the forkserver with this directory importable (3.11 does not pass sys.path to its preload)."""
    from multiprocessing import forkserver as fs

    here = os.path.dirname(os.path.abspath(__file__))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = here + (os.pathsep + old if old else "")
    try:
        fs.ensure_running()
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    yield


@pytest.fixture
def pool(tmp_path):
    ids, _ = make_pool(tmp_path / "pool.parquet", n=3000)
    make_predictions(tmp_path / "pred.parquet", ids)
    return tmp_path, ids


def test_injected_kill_points(pool):
    tmp, ids = pool
    d = tmp / "c"
    killed = -signal.SIGKILL
    # init: killed before its commit there is no campaign; killed after, there is one
    assert child(d, "init", "init:before-commit", pool=str(tmp / "pool.parquet")) == killed
    with pytest.raises(Exception, match="not a campaign"):
        Campaign(d)
    assert child(d, "init", "file-tmp:embeddings", pool=str(tmp / "pool.parquet")) == killed
    assert child(d, "init", "init:after-commit", pool=str(tmp / "pool.parquet")) == killed
    Campaign.init(d, tmp / "pool.parquet")  # the same command again: a no-op
    assert checked(d).status()["pool"] == 3000
    # cluster: each point before the commit leaves no clustering
    for point in ("file-tmp:clusters", "file-written:clusters", "file-written:tree", "cluster:before-commit"):
        assert child(d, "cluster", point, mean_cluster_size=10) == killed, point
        assert checked(d).status()["clustering"] is None, point
    assert child(d, "cluster", "cluster:after-commit", mean_cluster_size=10) == killed
    assert checked(d).cluster(mean_cluster_size=10)["unchanged"]
    assert no_leftovers(d)
    sel = dict(batch_size=100, predictions=str(tmp / "pred.parquet"), seed=5)
    for point in ("file-tmp:scores", "file-written:scores", "select:inserted", "file-tmp:stopset",
                  "file-written:stopset", "file-tmp:stoppreds", "file-written:stoppreds", "select:signals",
                  "select:before-commit"):
        assert child(d, "select", point, **sel) == killed, point
        assert checked(d).status()["rounds"] == [], point
        assert checked(d).status()["stop_set"] is None, point
    assert child(d, "select", "select:after-commit", **sel) == killed
    c = checked(d)
    assert c.status()["rounds"][0]["stop"]["n"] == 1000  # committed: the batch and its signals
    b = c.select(**sel)
    assert b.reused and len(b) == 100 and no_leftovers(d)
    write_label_csv(tmp / "l.csv", b.ids[:60])
    for point in ("label:recorded", "label:before-commit"):
        assert child(d, "label", point, labels=str(tmp / "l.csv")) == killed, point
        assert checked(d).status()["labeled"] == 0, point
    assert child(d, "label", "label:after-commit", labels=str(tmp / "l.csv")) == killed
    r = checked(d).label(tmp / "l.csv", close=True)
    assert (r["new"], r["same"], r["closed"], r["returned"]) == (0, 60, [1], 40)
    new_ids, _ = make_pool(tmp / "new.parquet", n=50, prefix="t", seed=3)
    for point in ("file-tmp:embeddings", "file-written:embeddings", "file-written:ids", "file-written:clusters",
                  "add:recorded", "add:before-commit"):
        assert child(d, "add", point, pool=str(tmp / "new.parquet")) == killed, point
        assert checked(d).status()["pool"] == 3000, point
    assert child(d, "add", "add:after-commit", pool=str(tmp / "new.parquet")) == killed
    c = checked(d)
    assert c.add(tmp / "new.parquet")["unchanged"] and c.status()["pool"] == 3050
    make_predictions(tmp / "pred_all.parquet", ids + new_ids)
    c.select(10, tmp / "pred_all.parquet", seed=1)
    assert no_leftovers(d) and checked(d).status()["pending"] == 10


def test_random_kills_over_many_rounds(pool):
    tmp, ids = pool
    d = tmp / "c"
    Campaign.init(d, tmp / "pool.parquet").cluster(mean_cluster_size=10)
    rng = np.random.default_rng(2024)
    pred = str(tmp / "pred.parquet")
    expected: dict = {}   # every label imported so far: none may be lost
    active: set = set()   # labeled or pending: none may be selected again
    # kill delays are uniform over 1.25 x the command's duration, measured by the last child that
    # finished (round 1 is not killed, to measure it): kills land anywhere in the command, on a
    # quiet machine or a loaded one, and about one command in five finishes first
    window = {"select": None, "label": None}
    kills = done = 0

    def attempt(op, **kw):
        nonlocal kills, done
        t = None if window[op] is None else rng.uniform(0, window[op])
        code = child(d, op, kill_after=t, **kw)
        assert code in (0, -signal.SIGKILL), f"{op} failed in the child (exit code {code})"
        if code == 0:
            window[op] = 1.25 * LAST["seconds"]
            done += t is not None
        else:
            kills += 1

    for rnd in range(1, RANDOM_ROUNDS + 1):
        k = int(rng.integers(80, 200))
        sel = dict(batch_size=k, predictions=pred, seed=rnd)
        attempt("select", **sel)
        c = checked(d)
        b = c.select(**sel)  # resume: the recorded batch, or the batch selected now
        assert b.round == rnd and len(b) == k
        assert not set(b.ids) & active, "an item was selected twice"
        active |= set(b.ids)
        close = rnd % 3 == 0
        part = int(rng.integers(1, k))
        write_label_csv(tmp / f"l{rnd}a.csv", b.ids[:part])
        write_label_csv(tmp / f"l{rnd}b.csv", b.ids[part:])
        files = [(tmp / f"l{rnd}a.csv", close)] if close else [(tmp / f"l{rnd}a.csv", False), (tmp / f"l{rnd}b.csv", False)]
        for path, cl in files:
            attempt("label", labels=str(path), close=cl)
            c = checked(d)
            c.label(path, close=cl)  # resume: a no-op if the child committed
            checked(d)
        expected.update({i: truth(i) for i in b.ids[:part]})
        if close:
            active -= set(b.ids[part:])  # returned to the pool
        else:
            expected.update({i: truth(i) for i in b.ids[part:]})
        got = c.labels().to_pydict()
        assert dict(zip(got["id"], got["label"])) == expected, "a label was lost or invented"
        s = c.status()
        assert s["pending"] == 0 and s["labeled"] == len(expected) and not s["rounds"][-1]["open"]
    assert no_leftovers(d)
    print(f"\n{RANDOM_ROUNDS} rounds, {kills} commands killed mid-way, {done} finished before the kill")
    assert kills >= RANDOM_ROUNDS  # the kills really landed inside the commands


def test_cli_kill_points_then_rerun(pool):
    """Through the command line: killed after the commit, the rerun writes the same batch file."""
    tmp, ids = pool
    d = tmp / "c"
    Campaign.init(d, tmp / "pool.parquet").cluster(mean_cluster_size=10)
    cmd = [sys.executable, "-c", "from batchal.cli import app; app()", "campaign", "select", str(d),
           "--predictions", str(tmp / "pred.parquet"), "-k", "50", "--out", str(tmp / "b.csv")]
    r = subprocess.run(cmd, env=dict(os.environ, BATCHAL_CRASH_AT="select:after-commit"), capture_output=True)
    assert r.returncode == -signal.SIGKILL and not (tmp / "b.csv").exists()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "round 1 is open" in r.stderr
    assert (tmp / "b.csv").read_text().splitlines()[1:] == Campaign(d).batch(1)["ids"]
    write_label_csv(tmp / "l.csv", Campaign(d).batch(1)["ids"])
    lab = [sys.executable, "-c", "from batchal.cli import app; app()", "campaign", "label", str(d), str(tmp / "l.csv")]
    r = subprocess.run(lab, env=dict(os.environ, BATCHAL_CRASH_AT="label:before-commit"), capture_output=True)
    assert r.returncode == -signal.SIGKILL and Campaign(d).status()["labeled"] == 0
    r = subprocess.run(lab + ["--close"], capture_output=True, text=True)
    assert r.returncode == 0 and "50 new labels" in r.stderr
    checked(d)


def test_kill_points_of_dedup_propagation_and_undo(pool):
    """Propagated labels survive kill -9 as bought ones do: all of a command's or none; undo likewise."""
    tmp, ids = pool
    d = tmp / "c"
    killed = -signal.SIGKILL
    Campaign.init(d, tmp / "pool.parquet").cluster(mean_cluster_size=10, method="graph")
    for point in ("file-tmp:dedup", "file-written:dedup", "file-written:dedup-rep", "dedup:before-commit"):
        assert child(d, "dedup", point, threshold=0.0008) == killed, point
        assert checked(d).status()["dedup"] is None, point
    assert child(d, "dedup", "dedup:after-commit", threshold=0.0008) == killed
    c = checked(d)
    assert c.dedup(0.0008)["unchanged"] and no_leftovers(d)
    b = c.select(100, tmp / "pred.parquet", seed=5, exclude_duplicates=True)
    write_label_csv(tmp / "l.csv", b.ids)
    for point in ("label:propagated", "label:recorded", "label:before-commit"):
        assert child(d, "label", point, labels=str(tmp / "l.csv"), propagate=True) == killed, point
        s = checked(d).status()
        assert (s["labeled"], s["propagated"]) == (0, 0), point
    assert child(d, "label", "label:after-commit", labels=str(tmp / "l.csv"), propagate=True) == killed
    s = checked(d).status()
    assert s["labeled"] == 100 and s["propagated"] > 0
    r = checked(d).label(tmp / "l.csv", propagate=True)  # the rerun: a no-op
    assert (r["new"], r["same"], r["propagated"]) == (0, 100, 0)
    got = Campaign(d).labels().to_pydict()
    assert sum(got["propagated"]) == s["propagated"]
    for point in ("undo:deleted", "undo:before-commit"):
        assert child(d, "undo", point) == killed, point
        assert checked(d).status()["propagated"] == s["propagated"], point
    assert child(d, "undo", "undo:after-commit") == killed
    s = checked(d).status()
    assert (s["labeled"], s["propagated"], s["rounds"]) == (0, 0, [])
    assert checked(d).dedup(0.0008)["unchanged"] and no_leftovers(d)  # the next writer removes the round's files
