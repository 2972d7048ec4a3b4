"""Issue 26 in a campaign: dedup from the stored kNN graph, propagated labels, undo, --config per round,
class-name shares, balance_by on the pool's columns; candidates=neighbours:K; simulate --propagate."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.spatial.distance import cdist
from typer.testing import CliRunner

import batchal
from batchal import BatchalInputError
from batchal.campaign import Campaign
from batchal.cli import app
from batchal.dedup import near_duplicate_groups
from campaign_util import fsl, make_predictions, write_label_csv

T = 0.0008  # below the pool's within-burst distances' spread: about half the items have a copy


def _pool(path, n=600, d=8, seed=0):
    """make_pool's 30 tight groups, plus a source column (a metadata column of the pool)."""
    r = np.random.default_rng(seed)
    centers = r.normal(size=(30, d))
    E = (centers[r.integers(0, 30, n)] + 0.05 * r.normal(size=(n, d))).astype(np.float32)
    ids = [f"s{i:05d}" for i in range(n)]
    source = np.array(["web", "camera", "scan"])[r.integers(0, 3, n)]
    pq.write_table(pa.table({"id": ids, "embedding": fsl(E), "source": source}), path)
    return ids, E, source


@pytest.fixture
def camp(tmp_path):
    ids, E, source = _pool(tmp_path / "pool.parquet")
    P = make_predictions(tmp_path / "pred.parquet", ids)
    c = Campaign.init(tmp_path / "c", tmp_path / "pool.parquet", classes="cat,dog,fox")
    c.cluster(mean_cluster_size=10, method="graph")
    return c, tmp_path, ids, E, source, P


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_error(r):
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert "Traceback" not in r.output
    return lines[0]


def test_campaign_dedup_equals_batchal_dedup_without_a_second_search(camp, monkeypatch):
    c, tmp, ids, E, _, _ = camp
    import batchal.clustering.knn as knn

    def no_search(*a, **k):
        raise AssertionError("campaign dedup searched the pool although the clustering stored its graph")
    monkeypatch.setattr(knn, "knn_graph", no_search)
    r = c.dedup(T)
    monkeypatch.undo()
    assert r["source"] == "clustering"
    ref = near_duplicate_groups(E, T, knn=50)  # the clustering's k, the same exact search
    t = pq.read_table(c.path / r["groups_file"])
    assert t.column_names == ["id", "group", "representative"]
    np.testing.assert_array_equal(t.column("group").to_numpy(), ref["group"])
    assert t.column("representative").to_pylist() == [ids[i] for i in ref["representative"]]
    assert 100 < r["duplicates"] < 500
    # the CLI writes the same groups; again is a no-op; a metric other than the graph's is refused
    res = _invoke("campaign", "dedup", c.path, "--threshold", T, "--out", tmp / "g.parquet", "-q")
    assert res.exit_code == 0, res.output
    assert pq.read_table(tmp / "g.parquet").equals(t)
    assert c.dedup(T)["unchanged"]
    with pytest.raises(BatchalInputError, match="ranks neighbours by cosine"):
        c.dedup(T, metric="euclidean")
    assert c.status()["dedup"]["n_groups"] == r["n_groups"] and c.check() == []


def test_campaign_dedup_searches_and_says_why_without_a_graph(tmp_path):
    ids, E, _ = _pool(tmp_path / "pool.parquet", n=300)
    c = Campaign.init(tmp_path / "c", tmp_path / "pool.parquet")
    c.cluster(mean_cluster_size=10)  # exact below the size limit: no graph
    r = c.dedup(T, knn=50)
    assert r["source"].startswith("search: the clustering kept no kNN graph")
    np.testing.assert_array_equal(pq.read_table(c.path / r["groups_file"]).column("group").to_numpy(),
                                  near_duplicate_groups(E, T, knn=50)["group"])


def test_propagated_labels_are_apart_excluded_and_undone_with_their_round(camp):
    c, tmp, ids, E, _, _ = camp
    c.dedup(T)
    rep = near_duplicate_groups(E, T, knn=50)["representative"]
    b = c.select(50, tmp / "pred.parquet", seed=0, exclude_duplicates=True)
    rows = np.array([ids.index(i) for i in b.ids])
    assert (rep[rows] == rows).all()  # only representatives
    write_label_csv(tmp / "l.csv", b.ids)
    r = c.label(tmp / "l.csv", propagate=True)
    # reference: every unlabeled member of a labeled representative's group, nothing else
    expected = {ids[j] for j in range(len(ids)) if rep[j] != j and rep[j] in set(rows.tolist())}
    lab = c.labels().to_pydict()
    got = {i: (l, p) for i, l, p in zip(lab["id"], lab["label"], lab["propagated"])}
    assert r["propagated"] == len(expected) > 0
    assert {i for i, (_, p) in got.items() if p} == expected
    assert all(got[i][0] == got[ids[rep[ids.index(i)]]][0] for i in expected)
    s = c.status()
    assert (s["labeled"], s["propagated"]) == (50, len(expected))
    assert s["available"] == 600 - 50 - len(expected) and s["rounds"][0]["propagated"] == len(expected)
    assert c.labels(propagated=False).num_rows == 50 and c.check() == []
    # propagated items are never selected again; propagating again is a no-op
    b2 = c.select(100, tmp / "pred.parquet", seed=1)
    assert not set(b2.ids) & expected
    assert c.label(propagate=True)["propagated"] == 0
    with pytest.raises(BatchalInputError, match="only the latest round"):
        c.undo(1)
    u = c.undo(2)
    assert (u["selected"], u["labels"], u["propagated"]) == (100, 0, 0)
    u = c.undo()
    assert (u["round"], u["labels"], u["propagated"]) == (1, 50, len(expected))
    s = c.status()
    assert (s["labeled"], s["propagated"], s["pending"], s["rounds"]) == (0, 0, 0, []) and c.check() == []
    # the next select is round 1 again, from the whole pool
    assert c.select(50, tmp / "pred.parquet", seed=0, exclude_duplicates=True).ids == b.ids


def test_a_bought_non_representative_labels_its_group(camp):
    """Without --exclude-duplicates a batch takes any member of a group; its label reaches the group.

    A group's label is its representative's when bought, else its earliest-bought member's (round, then
    row), as the simulator replays it; checked against a plain reference over two rounds.
    """
    c, tmp, ids, E, _, _ = camp
    c.dedup(T)
    rep = near_duplicate_groups(E, T, knn=50)["representative"]
    names = ("cat", "dog", "fox")
    bought = {}  # row -> (round, label)
    for rnd, seed in ((1, 0), (2, 1)):
        b = c.select(40, tmp / "pred.parquet", seed=seed, strategy="random")
        rows = [ids.index(i) for i in b.ids]
        labels = [names[(j + rnd) % 3] for j in rows]  # members of one group disagree: the rule decides
        write_label_csv(tmp / f"l{rnd}.csv", b.ids, labels)
        c.label(tmp / f"l{rnd}.csv", propagate=rnd == 2)
        bought.update({j: (rnd, lab) for j, lab in zip(rows, labels)})
    source = {}
    for j in sorted(bought, key=lambda j: (rep[j] != j, bought[j][0], j)):
        source.setdefault(int(rep[j]), j)
    assert any(rep[s] != s for s in source.values()), "some group should be labeled by a non-representative"
    expected = {ids[j]: bought[source[int(rep[j])]][1] for j in range(len(ids))
                if j not in bought and int(rep[j]) in source}
    lab = c.labels().to_pydict()
    got = {i: l for i, l, p in zip(lab["id"], lab["label"], lab["propagated"]) if p}
    assert got == expected and len(got) > 0
    assert c.check() == []
    u = c.undo()  # round 2's labels go, and the labels propagated from them; round 1's sources stay bought
    assert u["round"] == 2 and c.check() == []


def test_propagate_and_exclusion_need_groups(camp):
    c, tmp, *_ = camp
    with pytest.raises(BatchalInputError, match="run `batchal campaign dedup"):
        c.label(propagate=True)
    with pytest.raises(BatchalInputError, match="--exclude-duplicates needs the near-duplicate groups"):
        c.select(10, tmp / "pred.parquet", seed=0, exclude_duplicates=True)
    assert c.status()["rounds"] == []


def test_campaign_select_config_is_stored_and_reproduces_the_batch(camp):
    c, tmp, ids, E, source, P = camp
    (tmp / "shares.json").write_text(json.dumps({"cat": 0.5, "fox": 0.5}))
    (tmp / "s.toml").write_text('strategy = "margin"\nbalance = "shares.json"\n[filters]\nsource = ["web", "scan"]\n')
    b = c.select(40, tmp / "pred.parquet", seed=0, config=tmp / "s.toml")
    # the plain reference: class names as column ids, the filter as labeled rows
    keep = np.isin(source, ["web", "scan"])
    ref = batchal.select("margin", 40, probs=P, labeled=~keep, balance={0: 0.5, 2: 0.5}, seed=0)
    assert b.ids == [ids[i] for i in ref]
    assert np.bincount(P[ref].argmax(1), minlength=3).tolist() == [20, 0, 20]
    rec = c.status()["rounds"][0]["config"]
    assert rec["balance"] == {"cat": 0.5, "fox": 0.5} and rec["filters"] == {"source": ["web", "scan"]}
    assert rec["file"]["sha256"] and rec["strategy"] == "margin"
    res = _invoke("campaign", "status", c.path, "--json")
    assert json.loads(res.stdout)["rounds"][0]["config"] == rec
    # the open round again: the same config gives its batch, another config is refused
    assert c.select(40, tmp / "pred.parquet", seed=0, config=tmp / "s.toml").reused
    (tmp / "t.toml").write_text('strategy = "margin"\n')
    with pytest.raises(BatchalInputError, match="another --config"):
        c.select(40, tmp / "pred.parquet", seed=0, config=tmp / "t.toml")


def test_balance_by_a_column_of_the_campaign_pool(camp):
    c, tmp, ids, E, source, P = camp
    b = c.select(60, tmp / "pred.parquet", seed=0, strategy="margin:balance_by=source")
    ref = batchal.select("margin", 60, probs=P, balance_by="source", metadata={"source": source}, seed=0)
    assert b.ids == [ids[i] for i in ref]
    got = np.unique(source[[ids.index(i) for i in b.ids]], return_counts=True)[1]
    assert got.tolist() == [20, 20, 20]


@pytest.mark.parametrize("text, match", [
    ('strategy = "margin"\nbatch = 3\n', "batch: unknown key"),
    ('strategy = "margin"\nbalance = {"cat" = 0.5, "dog" = 0.4}\n', "balance: .*sum to 1"),
    ('strategy = "margin"\n[filters]\nlang = "en"\n', "filters.lang: the pool has no column 'lang'"),
    ('strategy = "margin"\nbalance_by = "lang"\n', "balance_by: the pool has no column 'lang'"),
    ('strategy = "margin"\nbalance = {"cow" = 1.0}\n', "class 'cow' is not one of the class names"),
    ('strategy = "margin"\n[similar]\nquery_ids = "q.txt"\nk = 5\n', "similar.query_ids: 1 ids are not in the pool"),
    ('strategy = "margin"\ncandidates = "nearby:5"\n', "candidates: candidates must be neighbours:K"),
])
def test_campaign_config_errors_exit_2_and_change_nothing(camp, text, match):
    c, tmp, *_ = camp
    (tmp / "q.txt").write_text("id\ns00001\nnope\n")
    (tmp / "bad.toml").write_text(text)
    before = (c.path / "campaign.db").read_bytes()
    r = _invoke("campaign", "select", c.path, "-k", 10, "--predictions", tmp / "pred.parquet", "--config",
                tmp / "bad.toml", "--out", tmp / "b.csv")
    line = _one_error(r)
    import re

    assert re.search(match, line) and str(tmp / "bad.toml") in line, line
    assert not (tmp / "b.csv").exists() and c.status()["rounds"] == []
    assert (c.path / "campaign.db").read_bytes() == before or c.check() == []


def test_new_campaign_commands_refuse_bad_input(camp):
    c, tmp, *_ = camp
    for args in (["campaign", "dedup", c.path, "--threshold", -1],
                 ["campaign", "dedup", c.path, "--threshold", 0.1, "--out", tmp / "g.csv"],
                 ["campaign", "dedup", tmp / "nope", "--threshold", 0.1],
                 ["campaign", "undo", c.path],
                 ["campaign", "label", c.path, "--propagate"],
                 ["simulate", "--dataset", "digits", "--propagate", -0.1, "--out", tmp / "sim"],
                 ["simulate", "--dataset", "digits", "--config", tmp / "nope.toml", "--out", tmp / "sim"]):
        _one_error(_invoke(*args))
    assert not (tmp / "g.csv").exists() and not (tmp / "sim").exists() and not (tmp / "nope").exists()
    (tmp / "sim.toml").write_text('strategy = "margin"\nmax_margin = 0.3\n')
    line = _one_error(_invoke("simulate", "--dataset", "digits", "--config", tmp / "sim.toml", "--out", tmp / "sim"))
    assert "max_margin: simulate does not apply it" in line and not (tmp / "sim").exists()


def _brute_neighbourhood(E, labeled, K):
    D = cdist(E, E, "cosine")
    unl = np.setdiff1d(np.arange(E.shape[0]), labeled)
    mask = np.zeros(E.shape[0], dtype=bool)
    for i in labeled:
        order = unl[np.lexsort((unl, D[i, unl]))]
        mask[order[:K]] = True
    return mask


@pytest.mark.parametrize("spec", ["margin", "random", "cluster-margin:order=margin", "entropy:balance=uniform"])
def test_candidates_neighbours_equals_brute_force_restriction(spec):
    r = np.random.default_rng(3)
    E = r.normal(size=(400, 6))
    P = r.dirichlet(np.ones(4), 400)
    clusters = r.integers(0, 40, 400)
    labeled = r.choice(400, 25, replace=False)
    mask = _brute_neighbourhood(E, labeled, 6)
    ref_labeled = np.zeros(400, dtype=bool)
    ref_labeled[labeled] = True
    ref = batchal.select(spec, 30, probs=P, clusters=clusters, labeled=ref_labeled | ~mask, seed=1)
    got = batchal.select(f"{spec}:candidates=neighbours:6", 30, probs=P, embeddings=E, clusters=clusters,
                         labeled=labeled, seed=1)
    np.testing.assert_array_equal(got, ref)
    assert mask[got].all()
    with pytest.raises(BatchalInputError, match="neighbourhood holds .* fewer than the batch"):
        batchal.select("margin:candidates=neighbours:1", 30, probs=P, embeddings=E, labeled=labeled[:3])
    with pytest.raises(BatchalInputError, match="needs labeled rows"):
        batchal.select("margin:candidates=neighbours:5", 3, probs=P, embeddings=E)
    with pytest.raises(BatchalInputError, match="candidates must be neighbours:K"):
        batchal.select("margin:candidates=neighbours:x", 3, probs=P, embeddings=E)


def test_simulator_propagation_against_a_plain_reference():
    from batchal.simulate.propagate import Propagation

    r = np.random.default_rng(0)
    group = r.integers(0, 40, 300)
    y = r.integers(0, 3, 300)
    p = Propagation(group, y)
    labeled = r.choice(300, 10, replace=False)
    batch = np.setdiff1d(r.choice(300, 20, replace=False), labeled)
    rec = p.add(batch, np.concatenate([labeled, batch]))
    # reference: each batch item in order gives its label to its group's rows not yet labeled or given one
    taken = set(labeled.tolist()) | set(batch.tolist())
    ref_rows, ref_lab = [], []
    for b in batch:
        for j in range(300):
            if group[j] == group[b] and j not in taken:
                taken.add(j)
                ref_rows.append(j)
                ref_lab.append(y[b])
    assert sorted(zip(p.rows.tolist(), p.labels.tolist())) == sorted(zip(ref_rows, ref_lab))
    assert rec["n_propagated"] == len(ref_rows)
    assert rec["propagated_error_rate"] == pytest.approx(np.mean(np.array(ref_lab) != y[ref_rows]))
    X = np.arange(300)[:, None]
    Xt, yt = p.training_set(X, y, np.concatenate([labeled, batch]))
    assert Xt.shape[0] == 10 + batch.shape[0] + len(ref_rows) and set(p.excluded(labeled).tolist()) >= set(ref_rows)
