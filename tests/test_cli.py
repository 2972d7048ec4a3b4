"""The command-line contract: batchal cluster / select / simulate / demo."""
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from batchal.cli import app
from conftest import make_pool

runner = CliRunner()


@pytest.fixture
def files(tmp_path):
    a = make_pool(n=400, d=6)
    paths = {}
    for k, v in a.items():
        paths[k] = tmp_path / f"{k}.npy"
        np.save(paths[k], v)
    return tmp_path, paths, a


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cluster_then_select(files):
    tmp, p, a = files
    r = run("cluster", "--embeddings", p["embeddings"], "--mean-cluster-size", 10, "--out", tmp / "C.npy", "-q")
    assert r.exit_code == 0, r.output
    C = np.load(tmp / "C.npy")
    assert C.shape == (400,) and C.dtype == np.int64 and C.max() + 1 == 40
    r = run("select", "--strategy", "cluster-margin", "--batch-size", 25, "--probs", p["probs"],
            "--clusters", tmp / "C.npy", "--labeled", p["labeled"], "--margin-factor", 3, "--seed", 7,
            "--out", tmp / "out.npy")
    assert r.exit_code == 0, r.output
    got = np.load(tmp / "out.npy")
    from batchal import select

    want = select("cluster-margin", 25, probs=a["probs"], clusters=C, labeled=a["labeled"], margin_factor=3, seed=7)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64


def test_cluster_threshold_and_csv(files):
    tmp, p, _ = files
    r = run("cluster", "--embeddings", p["embeddings"], "--threshold", 0.5, "--metric", "euclidean",
            "--out", tmp / "C.csv", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp / "C.csv").read_text().splitlines()[0] == "cluster"


def test_cluster_graph_tree_and_recut(files):
    from batchal.clustering import cut

    tmp, p, a = files
    r = run("cluster", "--embeddings", p["embeddings"], "--method", "graph", "--knn", 15,
            "--save-tree", tmp / "T.npy", "--out", tmp / "C.npy")
    assert r.exit_code == 0, r.output
    assert "method: graph (asked for)" in r.output and "singletons:" in r.output
    assert (tmp / "C.report.json").exists() and (tmp / "C.sizes.png").exists()
    Z = np.load(tmp / "T.npy")
    assert Z.shape == (399, 4)
    np.testing.assert_array_equal(np.load(tmp / "C.npy"), cut(Z, 400, mean_cluster_size=10)[0])
    # a coarser cut later, from the tree alone
    r = run("recut", "--tree", tmp / "T.npy", "--mean-cluster-size", 50, "--out", tmp / "C50.npy")
    assert r.exit_code == 0, r.output
    C50 = np.load(tmp / "C50.npy")
    np.testing.assert_array_equal(C50, cut(Z, 400, mean_cluster_size=50)[0])
    assert C50.max() + 1 == 8 and (tmp / "C50.report.json").exists()
    # a broken tree is refused and nothing is written
    np.save(tmp / "bad.npy", Z[:, :3])
    r = run("recut", "--tree", tmp / "bad.npy", "--out", tmp / "C2.npy")
    assert r.exit_code == 2 and "merge tree" in r.output and not (tmp / "C2.npy").exists()


def test_select_csv_and_logits(files, tmp_path):
    tmp, p, a = files
    Z = np.log(a["probs"])
    np.save(tmp / "Z.npy", Z)
    r = run("select", "-s", "margin", "-k", 10, "--logits", tmp / "Z.npy", "--out", tmp / "o.csv")
    assert r.exit_code == 0, r.output
    lines = (tmp / "o.csv").read_text().splitlines()
    assert lines[0] == "index" and len(lines) == 11
    from batchal import select

    np.testing.assert_array_equal([int(x) for x in lines[1:]], select("margin", 10, probs=a["probs"]))


def test_select_every_strategy(files):
    tmp, p, _ = files
    for s in ["random", "margin", "entropy", "least-confidence", "coreset", "badge"]:
        r = run("select", "-s", s, "-k", 20, "--probs", p["probs"], "--embeddings", p["embeddings"],
                "--labeled", p["labeled"], "--out", tmp / f"{s}.npy", "-q")
        assert r.exit_code == 0, (s, r.output)
        assert np.load(tmp / f"{s}.npy").shape == (20,)


def bad(tmp, p, **over):
    args = {"--strategy": "margin", "--batch-size": 5, "--probs": p["probs"], "--out": tmp / "bad.npy"}
    args.update(over)
    flat = []
    for k, v in args.items():
        if v is not None:
            flat += [k, v]
    return run("select", *flat)


@pytest.mark.parametrize(
    "make, msg",
    [
        (lambda P: np.where(np.arange(len(P))[:, None] == 2, np.nan, P), "NaN"),
        (lambda P: P * 0.5, "sum to 1.*--logits"),
        (lambda P: P[:, 0], "2-d"),
    ],
)
def test_bad_probs_fail_cleanly(files, make, msg):
    tmp, p, a = files
    np.save(tmp / "badP.npy", make(a["probs"]))
    r = bad(tmp, p, **{"--probs": tmp / "badP.npy"})
    assert r.exit_code != 0
    assert re.search(msg, r.output), r.output
    assert not (tmp / "bad.npy").exists()


def test_other_bad_inputs_fail_cleanly(files):
    tmp, p, a = files
    np.save(tmp / "L_rep.npy", np.array([1, 1]))
    np.save(tmp / "L_oob.npy", np.array([1, 10_000]))
    np.save(tmp / "E_short.npy", a["embeddings"][:10])
    cases = [
        ({"--strategy": "nope"}, "unknown strategy"),
        ({"--batch-size": 10_000}, "larger than the unlabeled pool"),
        ({"--labeled": tmp / "L_rep.npy"}, "repeated"),
        ({"--labeled": tmp / "L_oob.npy"}, "out of range"),
        ({"--strategy": "coreset"}, "needs --embeddings"),
        ({"--strategy": "coreset", "--probs": None}, "pool is empty"),
        ({"--strategy": "cluster-margin"}, "needs --clusters"),
        ({"--strategy": "coreset", "--embeddings": tmp / "E_short.npy"}, "disagree"),
        ({"--probs": tmp / "missing.npy"}, "no such file"),
        ({"--out": tmp / "bad.txt"}, "must end in"),
    ]
    for over, msg in cases:
        r = bad(tmp, p, **over)
        assert r.exit_code != 0, over
        assert msg in r.output, (over, r.output)
        assert not (tmp / "bad.npy").exists()


def test_existing_output_untouched_on_error(files):
    tmp, p, a = files
    np.save(tmp / "bad.npy", np.arange(3))
    r = bad(tmp, p, **{"--batch-size": 10_000})
    assert r.exit_code != 0
    np.testing.assert_array_equal(np.load(tmp / "bad.npy"), np.arange(3))


def test_strategies_lists_all():
    r = run("strategies")
    assert r.exit_code == 0
    for s in ["cluster-margin", "badge", "coreset", "margin", "random"]:
        assert s in r.output


def test_demo_runs(tmp_path):
    from batchal.selectors import RECOMMENDED

    r = run("demo", "--out", tmp_path / "demo", "--trials", 2)
    assert r.exit_code == 0, r.output
    for regime in ("plain", "redundant"):  # both regimes, each with its curves and summary
        assert (tmp_path / "demo" / regime / "curves.png").stat().st_size > 1000
        assert RECOMMENDED in (tmp_path / "demo" / regime / "summary.md").read_text()
    assert "Redundant pool" in (tmp_path / "demo" / "redundant" / "summary.md").read_text()
    assert "margin's" in r.output and RECOMMENDED in r.output
