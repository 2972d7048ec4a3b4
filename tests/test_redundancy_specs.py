"""Strategy specs, the margin-ordered round-robin, the redundancy diagnostic and redundant pools."""
import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from batchal import BatchalInputError, select
from batchal.cli import app
from batchal.selectors import RECOMMENDED, parse_spec, split_specs
from batchal.selectors.cluster_margin import margin_round_robin, redundancy_diagnostics
from batchal.simulate import SimulationConfig, load_dataset, make_redundant, parse_redundancy, simulate
from conftest import make_pool


# --- specs -----------------------------------------------------------------------------------

def test_spec_parses_name_and_typed_values():
    s = parse_spec("cluster-margin:margin_factor=2:order=margin:max_candidate_share=none")
    assert s.name == "cluster-margin"
    assert s.params == {"margin_factor": 2, "order": "margin", "max_candidate_share": None}
    assert s.text == "cluster-margin:margin_factor=2:order=margin:max_candidate_share=none"
    assert parse_spec(" margin ").text == "margin" and parse_spec("margin").params == {}


@pytest.mark.parametrize("bad, match", [
    ("nope", "unknown strategy 'nope'"),
    ("cluster-margin:factor=2", "has no parameter 'factor'.*margin_factor"),
    ("cluster-margin:margin_factor", "expected key=value"),
    ("cluster-margin:margin_factor=2:margin_factor=3", "given twice"),
    ("margin:random_state=3", "no parameter 'random_state'"),
    ("", "non-empty"),
    ("cluster-margin:margin_factor=abc", "'margin_factor' must be a number"),
    ("cluster-margin:order=3", "'order' must be a word"),
    ("cluster-margin:tol=x", "'tol' must be a number"),
])
def test_bad_specs_named(bad, match):
    with pytest.raises(BatchalInputError, match=match):
        parse_spec(bad)


def test_split_specs_refuses_duplicates():
    assert [s.text for s in split_specs("margin, cluster-margin:order=margin")] == ["margin", "cluster-margin:order=margin"]
    with pytest.raises(BatchalInputError, match="listed twice"):
        split_specs("margin,margin")


def test_spec_values_override_keyword_params():
    arrays = make_pool()
    a = select("cluster-margin:margin_factor=2", 30, seed=0, **arrays, margin_factor=10)
    b = select("cluster-margin", 30, seed=0, **arrays, margin_factor=2)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(BatchalInputError, match="no parameter 'margin_factor'"):
        select("margin", 5, **arrays, margin_factor=2)


# --- margin-ordered round-robin against a plain Python reference ------------------------------

def reference_margin_round_robin(cand, cids, k):
    """Passes over clusters ordered by their most uncertain candidate; members in margin order."""
    clusters = {}
    for c, cid in zip(cand, cids):  # cand is most uncertain first
        clusters.setdefault(cid, []).append(c)
    order = list(clusters)  # insertion order = order of each cluster's first (most uncertain) member
    out = []
    r = 0
    while len(out) < k:
        for cid in order:
            if r < len(clusters[cid]) and len(out) < k:
                out.append(clusters[cid][r])
        r += 1
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
def test_margin_round_robin_matches_reference(seed):
    r = np.random.default_rng(seed)
    m = int(r.integers(1, 400))
    cand = r.permutation(10_000)[:m]
    cids = r.integers(0, int(r.integers(1, 60)), m) * 7 + 3  # sparse, non-dense ids
    for k in {1, m // 3 + 1, m}:
        np.testing.assert_array_equal(margin_round_robin(cand, cids, k), reference_margin_round_robin(cand, cids, k))


def test_order_margin_is_margin_when_clusters_are_singletons():
    arrays = make_pool(n=500, n_labeled=30)
    arrays["clusters"] = np.arange(500)
    a = select("cluster-margin:order=margin", 40, **arrays)
    b = select("margin", 40, **{k: v for k, v in arrays.items() if k != "clusters"})
    np.testing.assert_array_equal(a, b)


def test_order_margin_takes_one_copy_per_cluster_first():
    # 10 clusters of 10 copies with near-identical margins: margin takes one cluster's copies,
    # the margin-ordered round-robin takes the head of every cluster first
    n = 100
    cl = np.repeat(np.arange(10), 10)
    m = 0.01 * cl + 1e-4 * np.tile(np.arange(10), 10)
    P = np.stack([0.5 + m / 2, 0.5 - m / 2], 1)
    idx = select("cluster-margin:order=margin:margin_factor=10:max_candidate_share=1", 10, probs=P, clusters=cl)
    assert sorted(cl[idx].tolist()) == list(range(10))
    assert sorted(cl[select("margin", 10, probs=P)].tolist()) == [0] * 10


def test_redundancy_diagnostics():
    d = redundancy_diagnostics(np.array([5, 5, 2, 5, 7, 2]), k=3)
    assert d == {"k_m": 6, "candidate_clusters": 3, "candidate_repeat_share": 0.5,
                 "margin_batch_clusters": 2, "margin_batch_repeat_share": pytest.approx(1 / 3)}


# --- redundant pools -------------------------------------------------------------------------

def test_make_redundant_repeats_and_perturbs_rows_test_untouched():
    ds = load_dataset("digits")
    red = make_redundant(ds, "zipf:a=2,cap=20,noise=0.05", seed=1)
    mult = np.bincount(red.source, minlength=ds.X.shape[0])
    assert mult.min() >= 1 and mult.max() <= 20 and red.X.shape[0] == mult.sum()
    assert red.redundancy["pool_rows"] == red.X.shape[0] and red.redundancy["max_multiplicity"] == mult.max()
    np.testing.assert_array_equal(red.y, ds.y[red.source])
    assert red.X_test is ds.X_test and red.y_test is ds.y_test
    # exactly one exact copy of each original; the other copies differ, but only a little
    exact = np.all(red.X == ds.X[red.source], axis=1)
    assert np.bincount(red.source[exact], minlength=ds.X.shape[0]).tolist() == [1] * ds.X.shape[0]
    diff = np.abs(red.X[~exact] - ds.X[red.source[~exact]]).mean()
    assert 0 < diff < 0.1
    again = make_redundant(ds, "zipf:a=2,cap=20,noise=0.05", seed=1)
    np.testing.assert_array_equal(again.X, red.X)


def test_make_redundant_shifts_large_images():
    from batchal.simulate.datasets import Dataset

    r = np.random.default_rng(0)
    X = np.zeros((50, 256), dtype=np.float32)
    X[:, 7 * 16 + 7] = 1.0  # one bright pixel in the middle of a 16 x 16 image
    ds = Dataset("dots", X, r.integers(0, 2, 50), X[:5], np.array([0, 1, 0, 1, 0]), image_shape=(16, 16))
    red = make_redundant(ds, "zipf:noise=0", seed=0)
    moved = (red.X.argmax(1) != 7 * 16 + 7).sum()
    assert moved > 0 and red.redundancy["spec"].endswith("shift=1")
    assert np.allclose(red.X.sum(1), 1.0)  # shifted, not smeared


@pytest.mark.parametrize("bad", ["pareto", "zipf:a=1", "zipf:cap=0", "zipf:noise=-1", "zipf:b=2", "zipf:a=x"])
def test_bad_redundancy_named(bad):
    with pytest.raises(BatchalInputError, match="redundancy"):
        parse_redundancy(bad)


def test_simulate_specs_side_by_side_with_redundancy(tmp_path):
    ds = make_redundant(load_dataset("digits"), "zipf", seed=0)
    specs = ["margin", "cluster-margin:order=margin", "cluster-margin:margin_factor=2", "random"]
    cfg = SimulationConfig(strategies=specs, seed_size=40, batch_size=40, rounds=2, trials=1, n_jobs=1,
                           progress=False)
    res = simulate(ds, cfg, out_dir=tmp_path)
    assert {r["strategy"] for r in res.rows} == set(specs)
    # every strategy that reads clusters clustered the pool, and reports candidate redundancy
    assert sorted(d["strategy"] for d in res.diagnostics if "n_clusters" in d) == sorted(specs[1:3])
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    cm = [r for r in rows if r["strategy"] == "cluster-margin:margin_factor=2" and r["round"] == "1"]
    assert int(cm[0]["diag_k_m"]) == 80  # k_m = 2 x 40, the spec's value
    assert all(r["batch_copy_share"] != "" for r in rows if r["round"] != "0")
    text = (tmp_path / "summary.md").read_text()
    assert "Redundant pool" in text and "labels / margin's" in text and "repeating a cluster" in text
    assert "cluster-margin:order=margin" in text


def test_recommended_spec_is_accepted_as_printed(tmp_path):
    printed = CliRunner().invoke(app, ["strategies", "--recommended"]).output.strip()
    assert printed == RECOMMENDED and parse_spec(printed).name in ("cluster-margin", "margin")
    arrays = make_pool()
    for k, v in arrays.items():
        np.save(tmp_path / f"{k}.npy", v)
    res = CliRunner().invoke(app, ["select", "--strategy", printed, "-k", "20", "--probs", str(tmp_path / "probs.npy"),
                                   "--clusters", str(tmp_path / "clusters.npy"), "--labeled",
                                   str(tmp_path / "labeled.npy"), "--out", str(tmp_path / "b.npy"), "--seed", "0"])
    # the near-duplicate test reads the embeddings: without them, one error line that names them
    assert res.exit_code == 2 and "needs --embeddings" in res.output and "dup=" in res.output
    assert not (tmp_path / "b.npy").exists()
    res = CliRunner().invoke(app, ["select", "--strategy", printed, "-k", "20", "--probs", str(tmp_path / "probs.npy"),
                                   "--embeddings", str(tmp_path / "embeddings.npy"),
                                   "--clusters", str(tmp_path / "clusters.npy"), "--labeled",
                                   str(tmp_path / "labeled.npy"), "--out", str(tmp_path / "b.npy"), "--seed", "0"])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "b.npy").shape == (20,)
    res = CliRunner().invoke(app, ["simulate", "--dataset", "digits", "--strategies", f"{printed},margin",
                                   "--seed-size", "20", "--batch-size", "20", "--rounds", "1", "--trials", "1",
                                   "--jobs", "1", "--out", str(tmp_path / "sim"), "--quiet"])
    assert res.exit_code == 0, res.output


def test_cli_simulate_redundancy_option(tmp_path):
    res = CliRunner().invoke(app, ["simulate", "--dataset", "digits", "--redundancy", "zipf:cap=5",
                                   "--strategies", "margin,random", "--seed-size", "20", "--batch-size", "20",
                                   "--rounds", "1", "--trials", "1", "--jobs", "1", "--out", str(tmp_path / "s"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "zipf:a=2,cap=5" in (tmp_path / "s" / "summary.md").read_text()
    res = CliRunner().invoke(app, ["simulate", "--dataset", "digits", "--redundancy", "zipf:a=0.5",
                                   "--out", str(tmp_path / "t"), "--quiet"])
    assert res.exit_code == 2 and "a must be > 1" in res.output


# --- near-duplicate passes against a plain Python reference -----------------------------------

def reference_walk(cand, cids, close, k):
    """Walk candidates in margin order; a candidate ``close(i, j)`` to an earlier representative ``j`` of
    its cluster is that representative's next copy, else a new representative."""
    reps = {}  # cluster -> list of [row position, copies so far], most recent first
    passes = []
    for i, c in enumerate(cids):
        group = reps.setdefault(c, [])
        for rep in group:
            if close(i, rep[0]):
                rep[1] += 1
                passes.append(rep[1])
                break
        else:
            group.insert(0, [i, 0])
            passes.append(0)
    order = sorted(range(len(cand)), key=lambda i: (passes[i], i))
    return np.asarray(cand)[order[:k]], np.asarray(passes)


def reference_near_duplicate(cand, cids, P, k, tol):
    """The walk with near-duplicates judged on the predictions: every class within ``tol``."""
    return reference_walk(cand, cids, lambda i, j: np.max(np.abs(P[i] - P[j])) <= tol, k)


@pytest.mark.parametrize("seed", range(5))
def test_near_duplicate_round_robin_matches_reference(seed):
    from batchal.selectors.cluster_margin import near_duplicate_round_robin

    r = np.random.default_rng(seed)
    m, C = int(r.integers(5, 300)), int(r.integers(2, 6))
    base = r.dirichlet(np.ones(C), size=m // 3 + 1)
    P = base[r.integers(0, base.shape[0], m)] + r.normal(scale=0.02, size=(m, C))  # groups of near-copies
    cand = r.permutation(5000)[:m]
    cids = r.integers(0, 8, m) * 3
    for tol in (0.0, 0.05, 0.3):
        for k in {1, m // 2 + 1, m}:
            got, passes = near_duplicate_round_robin(cand, cids, P, k, tol)
            want, wpasses = reference_near_duplicate(cand, cids, P.astype(np.float32), k, tol)
            np.testing.assert_array_equal(passes, wpasses)
            np.testing.assert_array_equal(got, want)


def test_tol_variant_is_margin_without_near_duplicates_and_skips_copies():
    arrays = make_pool(n=500, n_labeled=0)
    plain = select("cluster-margin:order=margin:tol=0.001", 40, probs=arrays["probs"], clusters=arrays["clusters"])
    np.testing.assert_array_equal(plain, select("margin", 40, probs=arrays["probs"]))
    # every row copied 5 times with tiny noise, copies share a cluster: the batch takes one copy of each
    P = np.repeat(arrays["probs"], 5, axis=0) + np.random.default_rng(0).normal(scale=1e-4, size=(2500, 5))
    P = np.clip(P, 1e-6, None)
    P /= P.sum(1, keepdims=True)
    cl = np.repeat(arrays["clusters"], 5)
    src = np.repeat(np.arange(500), 5)
    idx = select("cluster-margin:order=margin:tol=0.01:max_candidate_share=1", 40, probs=P, clusters=cl)
    assert np.unique(src[idx]).shape[0] == 40
    assert np.unique(src[select("margin", 40, probs=P)]).shape[0] <= 10
    with pytest.raises(BatchalInputError, match="order=margin or order=auto only"):
        select("cluster-margin:tol=0.1", 5, **arrays)
    with pytest.raises(BatchalInputError, match=r"tol must be a number in \[0, 1\]"):
        select("cluster-margin:order=margin:tol=2", 5, **arrays)


def test_tol_variant_reads_logits_like_probs(rng):
    Z = rng.normal(size=(300, 4))
    P = np.exp(Z) / np.exp(Z).sum(1, keepdims=True)
    cl = rng.integers(0, 30, 300)
    np.testing.assert_array_equal(select("cluster-margin:order=margin:tol=0.05", 30, logits=Z, clusters=cl),
                                  select("cluster-margin:order=margin:tol=0.05", 30, probs=P, clusters=cl))


def test_select_cli_prints_the_redundancy_of_the_candidates(tmp_path):
    arrays = make_pool()
    for k, v in arrays.items():
        np.save(tmp_path / f"{k}.npy", v)
    res = CliRunner().invoke(app, ["select", "--strategy", "cluster-margin:order=margin:tol=0.05", "-k", "30",
                                   "--probs", str(tmp_path / "probs.npy"), "--clusters", str(tmp_path / "clusters.npy"),
                                   "--labeled", str(tmp_path / "labeled.npy"), "--out", str(tmp_path / "b.npy")])
    assert res.exit_code == 0, res.output
    assert "redundancy: margin's own batch" in res.output and "near-duplicates" in res.output


# --- the near-duplicate test on embeddings (dup=) ---------------------------------------------

def reference_embedding_duplicates(cand, cids, E, k, dup):
    """The walk with near-duplicates judged on the embeddings: cosine distance at most ``dup``."""
    U = E / np.linalg.norm(E, axis=1, keepdims=True)
    return reference_walk(cand, cids, lambda i, j: 1.0 - float(U[i] @ U[j]) <= dup, k)


@pytest.mark.parametrize("seed", range(5))
def test_embedding_near_duplicates_match_reference(seed):
    from batchal.selectors.cluster_margin import near_duplicate_round_robin

    r = np.random.default_rng(seed)
    m, d = int(r.integers(5, 300)), int(r.integers(2, 12))
    base = r.normal(size=(m // 3 + 1, d))
    E = (base[r.integers(0, base.shape[0], m)] + r.normal(scale=0.05, size=(m, d))).astype(np.float32)
    cand = r.permutation(5000)[:m]
    cids = r.integers(0, 8, m) * 3
    for dup in (0.0, 0.005, 0.05, 0.5):
        for k in {1, m // 2 + 1, m}:
            got, passes = near_duplicate_round_robin(cand, cids, None, k, dup, embeddings=E)
            want, wpasses = reference_embedding_duplicates(cand, cids, E.astype(np.float64), k, dup)
            # float32 dot products against float64: a pair within 1e-6 of the threshold may differ
            np.testing.assert_array_equal(passes, wpasses)
            np.testing.assert_array_equal(got, want)


def test_dup_variant_is_margin_without_copies_and_takes_one_copy_of_each():
    arrays = make_pool(n=500, n_labeled=0, d=16)
    kw = dict(probs=arrays["probs"], clusters=arrays["clusters"], embeddings=arrays["embeddings"])
    # distinct random 16-d rows: none within cosine distance 0.01, so the batch is margin's, in margin's order
    np.testing.assert_array_equal(select("cluster-margin:order=margin:dup=0.01", 40, **kw),
                                  select("margin", 40, probs=arrays["probs"]))
    # every row copied 5 times (embedding noise 1e-3, predictions unchanged): one copy of each item first
    r = np.random.default_rng(1)
    E = np.repeat(arrays["embeddings"], 5, axis=0) + r.normal(scale=1e-3, size=(2500, 16)).astype(np.float32)
    P = np.repeat(arrays["probs"], 5, axis=0)
    cl, src = np.repeat(arrays["clusters"], 5), np.repeat(np.arange(500), 5)
    idx = select("cluster-margin:order=margin:dup=0.01:max_candidate_share=1", 40, probs=P, clusters=cl, embeddings=E)
    assert np.unique(src[idx]).shape[0] == 40
    assert np.unique(src[select("margin", 40, probs=P)]).shape[0] <= 10
    # the items are margin's 40 most uncertain distinct items
    want = select("margin", 40, probs=arrays["probs"])
    assert sorted(src[idx].tolist()) == sorted(want.tolist())


def test_dup_variant_errors_named():
    arrays = make_pool()
    with pytest.raises(BatchalInputError, match="order=margin or order=auto only"):
        select("cluster-margin:dup=0.01", 5, **arrays)
    with pytest.raises(BatchalInputError, match=r"dup must be a number in \[0, 2\]"):
        select("cluster-margin:order=margin:dup=3", 5, **arrays)
    with pytest.raises(BatchalInputError, match="one near-duplicate test"):
        select("cluster-margin:order=margin:dup=0.01:tol=0.1", 5, **arrays)
    with pytest.raises(BatchalInputError, match="needs embeddings"):
        select("cluster-margin:order=margin:dup=0.01", 5, probs=arrays["probs"], clusters=arrays["clusters"])
    assert parse_spec("cluster-margin:order=margin:dup=0.01").requires == ("predictions", "clusters", "embeddings")
    assert "embeddings" not in parse_spec("cluster-margin:order=margin:tol=0.1").requires


@pytest.mark.parametrize("copies", [1, 2, 3, 1000])
def test_copies_takes_that_many_per_group_per_pass_against_reference(copies):
    from batchal.selectors.cluster_margin import near_duplicate_round_robin

    r = np.random.default_rng(copies)
    m, d = 240, 6
    base = r.normal(size=(40, d))
    E = (base[r.integers(0, 40, m)] + r.normal(scale=0.01, size=(m, d))).astype(np.float32)
    cand, cids = r.permutation(5000)[:m], r.integers(0, 5, m)
    for k in (1, 50, m):
        got, ranks = near_duplicate_round_robin(cand, cids, None, k, 0.05, embeddings=E, copies=copies)
        _, wranks = reference_embedding_duplicates(cand, cids, E.astype(np.float64), m, 0.05)
        np.testing.assert_array_equal(ranks, wranks)  # the copy ranks do not depend on copies
        order = sorted(range(m), key=lambda i: (wranks[i] // copies, i))
        np.testing.assert_array_equal(got, cand[order[:k]])
    if copies == 1000:  # more than any group holds: margin's order
        np.testing.assert_array_equal(got, cand)


def test_copies_moves_the_dup_batch_toward_margin_and_errors_named():
    arrays = make_pool(n=300, n_labeled=0, d=16)
    r = np.random.default_rng(2)
    E = np.repeat(arrays["embeddings"], 5, axis=0) + r.normal(scale=1e-3, size=(1500, 16)).astype(np.float32)
    P, cl, src = np.repeat(arrays["probs"], 5, axis=0), np.repeat(arrays["clusters"], 5), np.repeat(np.arange(300), 5)
    kw = dict(probs=P, clusters=cl, embeddings=E)
    for c in (1, 2, 5):
        idx = select(f"cluster-margin:order=margin:dup=0.01:max_candidate_share=1:copies={c}", 40, **kw)
        assert np.bincount(src[idx]).max() == c and np.unique(src[idx]).shape[0] == -(-40 // c)
    np.testing.assert_array_equal(select("cluster-margin:order=margin:dup=0.01:max_candidate_share=1:copies=5", 40, **kw),
                                  select("margin", 40, probs=P))
    for bad in ("0", "1.5", "-2"):
        with pytest.raises(BatchalInputError, match="copies must be an integer >= 1"):
            select(f"cluster-margin:order=margin:dup=0.01:copies={bad}", 5, **kw)
    with pytest.raises(BatchalInputError, match="copies counts near-duplicates"):
        select("cluster-margin:order=margin:copies=2", 5, **arrays)


# --- order=auto: the paper's round-robin on a redundant pool, the near-duplicate walk elsewhere ---------

def _copied_pool(n=300, reps=5, d=16, seed=2):
    arrays = make_pool(n=n, n_labeled=0, d=d)
    r = np.random.default_rng(seed)
    E = np.repeat(arrays["embeddings"], reps, axis=0) + r.normal(scale=1e-3, size=(n * reps, d)).astype(np.float32)
    return dict(probs=np.repeat(arrays["probs"], reps, axis=0), clusters=np.repeat(arrays["clusters"], reps),
                embeddings=E), arrays


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_order_is_the_paper_on_a_redundant_pool_and_the_dup_walk_elsewhere(seed):
    from batchal.selectors.cluster_margin import ClusterMarginSelector, round_robin
    from batchal.selectors import Pool

    copied, plain = _copied_pool(seed=seed)
    # every item copied 5 times: margin's batch is mostly near-duplicates, so the paper's round-robin,
    # with the same random draws as the paper's spec given the same random_state
    for k in (1, 40, 200):
        auto = ClusterMarginSelector(order="auto", dup=0.01, random_state=seed)
        got = auto.select(Pool(**copied), k)
        redundant = auto.diagnostics_["margin_batch_near_duplicate_share"] >= 0.05
        assert auto.diagnostics_["redundant_pool"] == redundant
        # a batch of one is never a near-duplicate of a more uncertain row of the batch: the walk
        assert redundant == (k > 1)
        want = (ClusterMarginSelector(random_state=seed).select(Pool(probs=copied["probs"], clusters=copied["clusters"]), k)
                if redundant else
                ClusterMarginSelector(order="margin", dup=0.01, random_state=seed).select(Pool(**copied), k))
        np.testing.assert_array_equal(got, want)
    assert auto.diagnostics_["margin_batch_near_duplicate_share"] > 0.5
    # the same, written out: the paper's round-robin over the candidates M, here every unlabeled row's top 10%
    sel = ClusterMarginSelector(order="auto", dup=0.01, random_state=seed)
    got = sel.select(Pool(**copied), 40)
    cand = sel.candidates_
    want = round_robin(cand, copied["clusters"][cand], 40, np.random.default_rng(seed))
    np.testing.assert_array_equal(got, want)
    # distinct rows: no near-duplicates, so the near-duplicate walk, which is margin's batch here
    kw = dict(probs=plain["probs"], clusters=plain["clusters"], embeddings=plain["embeddings"])
    sel = ClusterMarginSelector(order="auto", dup=0.01, random_state=seed)
    np.testing.assert_array_equal(sel.select(Pool(**kw), 40), select("margin", 40, probs=plain["probs"]))
    assert not sel.diagnostics_["redundant_pool"] and sel.diagnostics_["margin_batch_near_duplicate_share"] == 0


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_auto_order_shares_the_visits_by_power_on_a_redundant_pool(power):
    from batchal.selectors.cluster_margin import ClusterMarginSelector, round_robin
    from batchal.selectors import Pool

    copied, plain = _copied_pool(seed=3)
    sel = ClusterMarginSelector(order="auto", dup=0.01, power=power, random_state=3)
    got = sel.select(Pool(**copied), 40)
    assert sel.diagnostics_["redundant_pool"]
    cand = sel.candidates_
    np.testing.assert_array_equal(got, round_robin(cand, copied["clusters"][cand], 40, np.random.default_rng(3),
                                                   power=power))
    assert not np.array_equal(got, select("cluster-margin:order=auto:dup=0.01", 40, seed=3, **copied))
    # no copies: the walk, margin's batch, whatever the power
    kw = dict(probs=plain["probs"], clusters=plain["clusters"], embeddings=plain["embeddings"])
    np.testing.assert_array_equal(select(f"cluster-margin:order=auto:dup=0.01:power={power}", 40, seed=3, **kw),
                                  select("margin", 40, probs=plain["probs"]))


def test_auto_order_threshold_and_errors_named():
    copied, _ = _copied_pool()
    from batchal.selectors import Pool

    walk = parse_spec("cluster-margin:order=margin:dup=0.01").make(random_state=0)
    walk.select(Pool(**copied), 40)
    s = walk.diagnostics_["margin_batch_near_duplicate_share"]
    # just above the measured share: the walk (margin order, copies deferred); at it: the paper's
    above = select(f"cluster-margin:order=auto:dup=0.01:redundant={min(1.0, s + 1e-6)}", 40, seed=0, **copied)
    np.testing.assert_array_equal(above, select("cluster-margin:order=margin:dup=0.01", 40, seed=0, **copied))
    at = select(f"cluster-margin:order=auto:dup=0.01:redundant={s}", 40, seed=0, **copied)
    np.testing.assert_array_equal(at, select("cluster-margin", 40, seed=0, probs=copied["probs"],
                                             clusters=copied["clusters"]))
    with pytest.raises(BatchalInputError, match="order=auto chooses"):
        select("cluster-margin:order=auto", 5, **copied)
    for bad in ("-0.1", "1.5", "nan"):
        with pytest.raises(BatchalInputError, match=r"redundant must be a number in \[0, 1\]"):
            select(f"cluster-margin:order=auto:dup=0.01:redundant={bad}", 5, **copied)
    with pytest.raises(BatchalInputError, match="'size' \\(the paper\\), 'margin' or 'auto'"):
        select("cluster-margin:order=sideways", 5, **copied)


def test_select_cli_prints_the_choice_of_order_auto(tmp_path):
    copied, _ = _copied_pool()
    for k, v in copied.items():
        np.save(tmp_path / f"{k}.npy", v)
    base = ["select", "-k", "40", "--probs", str(tmp_path / "probs.npy"), "--clusters", str(tmp_path / "clusters.npy"),
            "--embeddings", str(tmp_path / "embeddings.npy")]
    res = CliRunner().invoke(app, base + ["--strategy", RECOMMENDED, "--out", str(tmp_path / "b.npy")])
    assert res.exit_code == 0, res.output
    assert "order=auto: a redundant pool, so the paper's round-robin" in " ".join(res.output.split())
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"),
                                  select("cluster-margin", 40, probs=copied["probs"], clusters=copied["clusters"], seed=0))
    res = CliRunner().invoke(app, base + ["--strategy", RECOMMENDED + ":redundant=1", "--out", str(tmp_path / "c.npy")])
    assert res.exit_code == 0, res.output
    assert "order=auto: not redundant" in " ".join(res.output.split())


# --- the unit of dup: the median distance of random rows, capped at orthogonal ----------------------

def _cone_pool(n=600, d=32, seed=0):
    """Distinct rows packed in a cone, as ReLU features are: random pairs within cosine distance ~0.003."""
    r = np.random.default_rng(seed)
    E = (4.0 + np.abs(r.normal(scale=0.3, size=(n, d)))).astype(np.float32)
    arrays = make_pool(n=n, n_labeled=0, d=d, seed=seed)
    return dict(probs=arrays["probs"], clusters=np.zeros(n, dtype=np.int64), embeddings=E)


def test_cosine_distance_scale_is_the_median_of_its_pairs_capped_at_one():
    from batchal.selectors import Pool
    from batchal.selectors.cluster_margin import cosine_distance_scale

    cone = _cone_pool()
    E = cone["embeddings"].astype(np.float64)
    # a plain reference: the same fixed-seed pairs of distinct rows, distances written out
    r = np.random.default_rng(0)
    a = r.integers(0, 600, 10_000)
    b = r.integers(0, 599, 10_000)
    b = np.where(b >= a, b + 1, b)
    assert (a != b).all()
    ref = np.median([1 - E[i] @ E[j] / np.linalg.norm(E[i]) / np.linalg.norm(E[j]) for i, j in zip(a, b)])
    got = cosine_distance_scale(Pool(**cone))
    assert 0 < got < 0.01 and got == pytest.approx(ref, rel=1e-4)
    assert cosine_distance_scale(Pool(**cone)) == got  # a property of the embedding: the same every call
    # a centred embedding: random rows about orthogonal, so dup is read as given
    plain = make_pool(n=600, n_labeled=0, d=32)
    assert cosine_distance_scale(Pool(probs=plain["probs"], embeddings=plain["embeddings"])) == pytest.approx(1, abs=0.02)


def test_dup_scales_with_the_embedding_so_crowded_distinct_rows_are_not_copies():
    from batchal.selectors import Pool
    from batchal.selectors.cluster_margin import ClusterMarginSelector, cosine_distance_scale

    cone = _cone_pool()
    E = cone["embeddings"]
    d = 1 - (E[:50] / np.linalg.norm(E[:50], axis=1, keepdims=True)) @ (E / np.linalg.norm(E, axis=1, keepdims=True)).T
    np.fill_diagonal(d[:, :50], 1)
    assert (d.min(1) < 0.01).all()  # every row has a distinct neighbour within the absolute cut
    sel = ClusterMarginSelector(order="auto", dup=0.01, random_state=0)
    batch = sel.select(Pool(**cone), 40)
    # distinct rows: no near-duplicates in the embedding's own unit, so margin's batch, not the round-robin
    assert not sel.diagnostics_["redundant_pool"] and sel.diagnostics_["margin_batch_near_duplicate_share"] == 0
    assert 0 < sel.diagnostics_["dup_unit"] < 0.01
    np.testing.assert_array_equal(batch, select("margin", 40, probs=cone["probs"]))
    # read as an absolute cosine distance (the earlier rule), the same rows count as copies
    sel = ClusterMarginSelector(order="auto", dup=0.01, dup_scale="absolute", random_state=0)
    sel.select(Pool(**cone), 40)
    assert sel.diagnostics_["redundant_pool"] and sel.diagnostics_["dup_unit"] == 1.0
    with pytest.raises(BatchalInputError, match="dup_scale must be 'pool'"):
        select("cluster-margin:order=auto:dup=0.01:dup_scale=median", 5, **cone)
    with pytest.raises(BatchalInputError, match="dup_scale sets the unit of dup"):
        select("cluster-margin:order=margin:tol=0.1:dup_scale=absolute", 5, **cone)
    # a non-finite embedding row is named, whether the unit's sample or a candidate reads it
    for row in (0, 599):
        bad = dict(cone, embeddings=cone["embeddings"].copy())
        bad["embeddings"][row, 3] = np.nan
        with pytest.raises(BatchalInputError, match=rf"embeddings contains NaN \(at row {row}\)"):
            ClusterMarginSelector(order="auto", dup=0.01, max_candidate_share=1, margin_factor=1000,
                                  random_state=0).select(Pool(**bad), 40)
        with pytest.raises(BatchalInputError, match=rf"embeddings contains NaN \(at row {row}\)"):
            cosine_distance_scale(Pool(**bad))  # 20,000 draws of 600 rows: every row is in the sample
    # the same rows copied (copies within 1e-4 of the cone's own spread): redundant, the paper's round-robin
    r = np.random.default_rng(1)
    rep = np.repeat(np.arange(600), 3)
    Ec = E[rep] * (1 + r.normal(scale=1e-6, size=(1800, 32))).astype(np.float32)
    copied = dict(probs=cone["probs"][rep], clusters=np.repeat(np.arange(200), 9), embeddings=Ec)
    sel = ClusterMarginSelector(order="auto", dup=0.01, random_state=0)
    got = sel.select(Pool(**copied), 40)
    assert sel.diagnostics_["redundant_pool"] and sel.diagnostics_["margin_batch_near_duplicate_share"] > 0.5
    np.testing.assert_array_equal(got, select("cluster-margin", 40, seed=0, probs=copied["probs"],
                                              clusters=copied["clusters"]))


def test_select_cli_says_when_dup_was_scaled(tmp_path):
    cone = _cone_pool()
    for k, v in cone.items():
        np.save(tmp_path / f"{k}.npy", v)
    base = ["select", "-k", "40", "--probs", str(tmp_path / "probs.npy"), "--clusters", str(tmp_path / "clusters.npy"),
            "--embeddings", str(tmp_path / "embeddings.npy"), "--out", str(tmp_path / "b.npy")]
    res = CliRunner().invoke(app, base + ["--strategy", RECOMMENDED])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "so dup was scaled by it" in out and "order=auto: not redundant" in out
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), select("margin", 40, probs=cone["probs"]))
    res = CliRunner().invoke(app, base + ["--strategy", RECOMMENDED + ":dup_scale=absolute"])
    assert res.exit_code == 0, res.output
    assert "scaled" not in res.output and "order=auto: a redundant pool" in " ".join(res.output.split())
