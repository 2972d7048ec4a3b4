"""[weights] in a selection config (issue 26, item 4): several terms, each a rank percentile over the
candidates, summed into one priority that replaces the strategy's score."""
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import batchal
from batchal import BatchalInputError, Pool
from batchal.cli import app
from batchal.selection_config import apply_config, load_config, simulation_settings
from batchal.similar import nearest_query_similarity
from conftest import make_pool


def _write(tmp_path, text, name="selection.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _tied_pool(n=500, seed=0):
    """make_pool with every fifth row a copy of the one before: equal scores, so ties at every cut."""
    arrays = make_pool(n=n, n_clusters=40, seed=seed)
    P = arrays["probs"]
    P[1::5] = P[0::5][: P[1::5].shape[0]]
    return arrays


def _meta(tmp_path, n, seed=4):
    """quality: a small integer range (many ties); score: floats with a NaN-free spread; source: strings."""
    r = np.random.default_rng(seed)
    cols = {"quality": r.integers(0, 7, n), "score": r.normal(size=n),
            "source": np.array(["web", "camera"])[r.integers(0, 2, n)]}
    pq.write_table(pa.table(cols), tmp_path / "meta.parquet")
    return cols


# ---- the plain-Python reference ------------------------------------------------------------------

def ref_percentiles(values):
    """Mean 0-based rank among the values over (m - 1): the smallest 0, the largest 1, ties share."""
    vals = [float(v) for v in values]
    s = sorted(vals)
    m = len(vals)
    out = []
    for v in vals:
        pos = [i for i, x in enumerate(s) if x == v]
        out.append(sum(pos) / len(pos) / (m - 1) if m > 1 else 0.5)
    return out


def ref_top(rows, terms, k):
    """Top ``k`` of ``rows`` by the weighted percentile sum (terms: [(weight, values over rows)]),
    ties to the smaller row."""
    prio = [0.0] * len(rows)
    for w, values in terms:
        for j, p in enumerate(ref_percentiles(values)):
            prio[j] += w * p
    order = sorted(range(len(rows)), key=lambda j: (-prio[j], rows[j]))
    return [int(rows[j]) for j in order[:k]], dict(zip((int(r) for r in rows), prio))


def _run(cfg, arrays, strategy=None, k=30, seed=0, embeddings=None, **pool_kw):
    pool = Pool(**{key: v for key, v in arrays.items() if key != "embeddings"}, **pool_kw)
    spec, excluded = apply_config(cfg, pool, embeddings, strategy=strategy)
    pool.labeled_mask = excluded
    return spec.make(random_state=seed).select(pool, k), pool, excluded


# ---- uncertainty alone is the plain strategy -----------------------------------------------------

@pytest.mark.parametrize("strategy", ["margin", "entropy", "least-confidence", "margin:balance=uniform",
                                      "cluster-margin", "cluster-margin:order=margin",
                                      "cluster-margin:order=margin:tol=0.05:balance=input"])
@pytest.mark.parametrize("w", [1.0, 0.25, 7])
def test_uncertainty_alone_gives_the_plain_strategys_batch(tmp_path, strategy, w):
    arrays = _tied_pool()
    rules = 'max_confidence = 0.9\n'
    plain = load_config(_write(tmp_path, f'strategy = "{strategy}"\n{rules}', "plain.toml"))
    weighted = load_config(_write(tmp_path, f'strategy = "{strategy}"\n{rules}[weights]\nuncertainty = {w}\n'))
    b0, pool0, ex0 = _run(plain, arrays, k=40)
    b1, pool1, ex1 = _run(weighted, arrays, k=40)
    assert pool0.priority is None and pool1.priority is not None
    np.testing.assert_array_equal(ex0, ex1)
    np.testing.assert_array_equal(b1, b0)
    # the real scores stay readable (thresholds, a campaign's scores file): the priority only ranks
    np.testing.assert_array_equal(pool1.uncertainty("margin"), pool0.uncertainty("margin"))


def test_uncertainty_alone_with_precomputed_scores(tmp_path):
    arrays = make_pool(n=400)
    scores = np.round(batchal.margin(arrays["probs"]), 2)  # rounded: many ties
    base = {"clusters": arrays["clusters"], "labeled": arrays["labeled"]}
    cfg = load_config(_write(tmp_path, 'strategy = "cluster-margin:order=margin"\n[weights]\nuncertainty = 3\n'))
    b, _, _ = _run(cfg, base, k=25, scores=scores)
    ref = batchal.select("cluster-margin:order=margin", 25, scores=scores, seed=0, **base)
    np.testing.assert_array_equal(b, ref)


# ---- the combined ranking against the reference --------------------------------------------------

@pytest.mark.parametrize("wu, wq", [(1.0, 0.5), (1.0, -0.5), (0.3, 2.0), (0, 1.0)])
def test_margin_with_a_metadata_weight_is_the_reference_top_k(tmp_path, wu, wq):
    n = 400
    arrays = _tied_pool(n)
    meta = _meta(tmp_path, n)
    cfg = load_config(_write(tmp_path, f'''strategy = "margin"
max_margin = 0.6
metadata = "meta.parquet"
[filters]
source = "web"
[weights]
uncertainty = {wu}
"metadata.quality" = {wq}
'''))
    b, pool, excluded = _run(cfg, arrays, k=30)
    u = Pool(probs=arrays["probs"]).uncertainty("margin")
    lab = np.isin(np.arange(n), arrays["labeled"])
    rows = [i for i in range(n) if not lab[i] and -u[i] <= 0.6 and meta["source"][i] == "web"]
    np.testing.assert_array_equal(np.flatnonzero(~excluded), rows)
    terms = [(wu, [u[i] for i in rows]), (wq, [meta["quality"][i] for i in rows])]
    top, prio = ref_top(rows, terms, 30)
    assert b.tolist() == top
    for r in rows[:50]:
        assert pool.priority[r] == pytest.approx(prio[r], abs=1e-12)
    assert np.isneginf(pool.priority[excluded]).all()


def test_weights_table_forms_and_the_resolved_record(tmp_path):
    n = 300
    arrays = make_pool(n=n)
    meta = _meta(tmp_path, n)
    # a dotted key (a [weights.metadata] table) names the same term as the quoted one
    cfg = load_config(_write(tmp_path, 'strategy = "entropy"\nmetadata = "meta.parquet"\n[weights]\n'
                                       'uncertainty = 1\nmetadata.score = -0.7\n'))
    assert cfg.weights == {"uncertainty": 1.0, "metadata.score": -0.7}
    rec = cfg.resolved()
    assert rec["weights"] == {"uncertainty": 1.0, "metadata.score": -0.7} and rec["metadata"]["sha256"]
    json.dumps(rec)
    b, _, _ = _run(cfg, arrays, k=20)
    u = Pool(probs=arrays["probs"]).uncertainty("entropy")
    rows = [i for i in range(n) if i not in set(arrays["labeled"].tolist())]
    top, _ = ref_top(rows, [(1.0, [u[i] for i in rows]), (-0.7, [meta["score"][i] for i in rows])], 20)
    assert b.tolist() == top


def test_cluster_margin_takes_its_candidates_and_order_from_the_priority(tmp_path):
    n = 500
    arrays = _tied_pool(n)
    meta = _meta(tmp_path, n)
    cfg = load_config(_write(tmp_path, 'strategy = "cluster-margin:order=margin:margin_factor=3:'
                                       'max_candidate_share=1"\n'
                                       'metadata = "meta.parquet"\n[weights]\nuncertainty = 1\n"metadata.score" = 1\n'))
    pool = Pool(**{k: v for k, v in arrays.items() if k != "embeddings"})
    spec, excluded = apply_config(cfg, pool)
    pool.labeled_mask = excluded
    sel = spec.make(random_state=0)
    b = sel.select(pool, 20)
    u = Pool(probs=arrays["probs"]).uncertainty("margin")
    rows = np.flatnonzero(~excluded).tolist()
    order, _ = ref_top(rows, [(1.0, [u[i] for i in rows]), (1.0, [meta["score"][i] for i in rows])], len(rows))
    assert sel.candidates_.tolist() == order[:60]
    # order=margin: pass r takes each cluster's r-th candidate, clusters in their best candidate's order
    cl = arrays["clusters"]
    seen, first, ref = {}, {}, []
    for pos, r in enumerate(order[:60]):
        first.setdefault(cl[r], pos)
        seen[cl[r]] = seen.get(cl[r], 0) + 1
        ref.append((seen[cl[r]] - 1, first[cl[r]], r))
    assert b.tolist() == [r for *_, r in sorted(ref)[:20]]


# ---- similarity ------------------------------------------------------------------------------------

def _brute_cos(E, rows, Q):
    out = []
    for i in rows:
        x = E[i].astype(np.float64)
        x /= np.sqrt((x * x).sum())
        best = -2.0
        for q in Q.astype(np.float64):
            best = max(best, float(x @ (q / np.sqrt((q * q).sum()))))
        out.append(best)
    return np.array(out)


@pytest.mark.parametrize("budget", [1 << 22, 7, 1])
def test_nearest_query_similarity_is_brute_force(budget):
    r = np.random.default_rng(5)
    E = r.normal(size=(300, 6)).astype(np.float32)
    Q = r.normal(size=(13, 6)).astype(np.float32)
    rows = r.permutation(300)[:120]  # any order: read in row order, returned in the caller's
    got = nearest_query_similarity(E, rows, Q, budget=budget)
    np.testing.assert_allclose(got, _brute_cos(E, rows, Q), atol=1e-6)
    with pytest.raises(BatchalInputError, match="query has dimension 5"):
        nearest_query_similarity(E, rows, Q[:, :5])
    E[rows[3]] = 0
    with pytest.raises(BatchalInputError, match=f"embeddings row {rows[3]} is all zeros"):
        nearest_query_similarity(E, rows, Q)


@pytest.mark.parametrize("query", ["query", "query_rows"])
def test_similarity_term_ranks_by_brute_force_nearest_query_cosine(tmp_path, query):
    n = 600
    arrays = make_pool(n=n)
    E = arrays["embeddings"]
    qrows = np.array([5, 77, 300])
    np.save(tmp_path / "q.npy", E[qrows] if query == "query" else qrows)
    cfg = load_config(_write(tmp_path, f'strategy = "margin"\n[similar]\n{query} = "q.npy"\nk = 200\n'
                                       '[weights]\nsimilarity = 1.0\nuncertainty = 0.25\n'))
    b, pool, excluded = _run(cfg, arrays, k=25, embeddings=E)
    rows = np.flatnonzero(~excluded).tolist()
    # query rows are never candidates; query embeddings (here copies of those rows) are not rows
    assert len(rows) == 200 and bool(set(qrows.tolist()) & set(rows)) == (query == "query")
    u = Pool(probs=arrays["probs"]).uncertainty("margin")
    cos = _brute_cos(E, rows, E[qrows])
    top, _ = ref_top(rows, [(1.0, cos.tolist()), (0.25, [u[i] for i in rows])], 25)
    assert b.tolist() == top


# ---- errors: each names the file and the key ----------------------------------------------------

@pytest.mark.parametrize("text, match", [
    ('[weights]\ndiversity = 1\n', "weights.diversity: unknown term"),
    ('[weights]\nuncertainty = "high"\n', "weights.uncertainty: must be a finite number"),
    ('[weights]\nuncertainty = true\n', "weights.uncertainty: must be a finite number"),
    ('[weights]\nuncertainty = nan\n', "weights.uncertainty: must be a finite number"),
    ('metadata = "m.parquet"\n[weights]\nuncertainty = 0\n"metadata.quality" = 0.0\n', "weights: every weight is 0"),
    ('[weights]\n', "weights: empty"),
    ('[weights]\nsimilarity = 1\n', r"weights.similarity: needs a \[similar\] table"),
    ('[weights]\n"metadata.quality" = 1\n', "weights.metadata.quality: needs metadata"),
    ('[weights]\n"metadata." = 1\n', "weights.metadata.: unknown term"),
    ('metadata = "m.parquet"\n[weights]\n"metadata.q" = 1\nmetadata.q = 2\n', "weights.metadata.q: given twice"),
    ('weights = 3\n', "weights: must be a table"),
])
def test_weight_errors_name_the_file_and_the_key(tmp_path, text, match):
    p = _write(tmp_path, 'strategy = "margin"\n' + text)
    with pytest.raises(BatchalInputError, match=match) as e:
        load_config(p)
    assert str(e.value).startswith(f"--config {p}: ")


@pytest.mark.parametrize("strategy", ["random", "badge", "coreset"])
def test_strategies_that_rank_by_no_score_refuse_weights(tmp_path, strategy):
    arrays = make_pool(n=200)
    cfg = load_config(_write(tmp_path, f'strategy = "{strategy}"\n[weights]\nuncertainty = 1\n'))
    pool = Pool(**arrays)
    with pytest.raises(BatchalInputError, match=f"--config .*: weights: {strategy} ranks by no score"):
        apply_config(cfg, pool, arrays["embeddings"])
    assert pool.priority is None
    # given outside the config (--strategy) it is refused alike
    cfg = load_config(_write(tmp_path, '[weights]\nuncertainty = 1\n', "w.toml"))
    with pytest.raises(BatchalInputError, match=f"weights: {strategy} ranks by no score"):
        apply_config(cfg, pool, arrays["embeddings"], strategy=strategy)


def test_apply_errors_name_the_key(tmp_path):
    n = 300
    arrays = make_pool(n=n)
    _meta(tmp_path, n)
    pool = Pool(**{k: v for k, v in arrays.items() if k != "embeddings"})

    def err(text, match, embeddings=None, p=pool):
        path = _write(tmp_path, 'strategy = "margin"\nmetadata = "meta.parquet"\n' + text)
        with pytest.raises(BatchalInputError, match=match) as e:
            apply_config(load_config(path), p, embeddings)
        assert str(e.value).startswith(f"--config {path}: ")

    err('[weights]\n"metadata.qualty" = 1\n', "weights.metadata.qualty: the metadata .* has no column 'qualty'")
    # a zero weight does not read its column, but a typo in its name is still an error
    err('[weights]\nuncertainty = 1\n"metadata.qualty" = 0\n', "weights.metadata.qualty: .* no column")
    err('[weights]\n"metadata.source" = 1\n', "weights.metadata.source: a weight needs a numeric column; 'source'")
    np.save(tmp_path / "Q.npy", arrays["embeddings"][:2])
    err('[similar]\nquery = "Q.npy"\nk = 50\n[weights]\nsimilarity = 1\n',
        r"similar: needs the pool's embeddings")
    np.save(tmp_path / "Q3.npy", np.ones((2, 3), np.float32))
    err('[similar]\nquery = "Q3.npy"\nk = 50\n[weights]\nsimilarity = 1\n', "similar: query has dimension 3",
        embeddings=arrays["embeddings"])
    # a missing value among the candidates
    q = np.arange(n, dtype=np.float64)
    q[arrays["labeled"][0]] = np.nan  # a labeled row's missing value is never read
    q[[i for i in range(n) if i not in set(arrays["labeled"].tolist())][7]] = np.nan
    pq.write_table(pa.table({"q": q}), tmp_path / "meta.parquet")
    err('[weights]\n"metadata.q" = 1\n', "weights.metadata.q: 'q' is missing .* at 1 candidate rows")
    # the pool's own columns (a campaign's) serve alike, named as the pool's
    pool2 = Pool(probs=arrays["probs"], metadata={"q": np.arange(n)})
    path = _write(tmp_path, 'strategy = "margin"\n[weights]\n"metadata.z" = 1\n', "own.toml")
    with pytest.raises(BatchalInputError, match="weights.metadata.z: the pool has no column 'z'"):
        apply_config(load_config(path, pool_columns=True), pool2)

    class Distributed(Pool):
        distributed = True

    err('[weights]\nuncertainty = 1\n', "weights: the ray engine", p=Distributed(probs=arrays["probs"]))


def test_pool_priority_is_checked():
    P = make_pool(n=50)["probs"]
    with pytest.raises(BatchalInputError, match="one value per pool row"):
        Pool(probs=P, priority=np.zeros(49))
    with pytest.raises(BatchalInputError, match="priority row 3 is nan"):
        Pool(probs=P, priority=np.where(np.arange(50) == 3, np.nan, 0.0))
    pool = Pool(probs=P, priority=-np.arange(50.0))
    # the priority ranks whatever score a strategy asks for
    np.testing.assert_array_equal(pool.top_uncertain("entropy", 3), [0, 1, 2])


# ---- simulate ------------------------------------------------------------------------------------

def test_simulate_takes_uncertainty_alone(tmp_path):
    s = simulation_settings(load_config(_write(tmp_path, 'strategy = "margin"\n[weights]\nuncertainty = 2\n')))
    assert s["strategy"] == "margin"
    for text, match in [
        ('strategy = "margin"\n[similar]\nquery = "q.npy"\nk = 5\n[weights]\nsimilarity = 1\n', "similar: simulate"),
        ('strategy = "margin"\nmetadata = "m.parquet"\n[weights]\n"metadata.q" = 1\n', "metadata: simulate"),
        ('strategy = "margin"\n[weights]\nuncertainty = 1\n"metadata.q" = 1\n', None),
        ('strategy = "margin"\n[weights]\nuncertainty = -1\n', "weights.uncertainty: simulate runs the strategy's own"),
        ('[weights]\nuncertainty = 1\n', "weights: applies to the config's strategy"),
        ('strategy = "random"\n[weights]\nuncertainty = 1\n', "weights: random ranks by no score"),
    ]:
        p = _write(tmp_path, text, "sim.toml")
        try:
            cfg = load_config(p, pool_columns=True)
        except BatchalInputError as exc:
            raise AssertionError(text) from exc
        with pytest.raises(BatchalInputError, match=match or "weights.metadata.q: simulate does not apply it"):
            simulation_settings(cfg)
    # the command refuses it before loading any data, and writes nothing
    r = _invoke("simulate", "--dataset", "digits", "--config", tmp_path / "sim.toml", "--out", tmp_path / "sim")
    assert r.exit_code == 2 and "weights: random ranks by no score" in r.output and not (tmp_path / "sim").exists()


# ---- the command line ----------------------------------------------------------------------------

def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_select_with_weights_writes_the_reference_batch(tmp_path):
    n = 500
    arrays = _tied_pool(n)
    meta = _meta(tmp_path, n)
    for k in ("probs", "labeled", "embeddings"):
        np.save(tmp_path / f"{k}.npy", arrays[k])
    np.save(tmp_path / "q.npy", arrays["embeddings"][[1, 2]])
    cfg = _write(tmp_path, 'strategy = "least-confidence"\nmetadata = "meta.parquet"\n[similar]\nquery = "q.npy"\n'
                           'k = 300\n[weights]\nuncertainty = 1\n"metadata.quality" = -0.4\nsimilarity = 0.6\n')
    r = _invoke("select", "--config", cfg, "-k", 30, "--probs", tmp_path / "probs.npy", "--labeled",
                tmp_path / "labeled.npy", "--embeddings", tmp_path / "embeddings.npy", "--out", tmp_path / "b.npy",
                "--quiet")
    assert r.exit_code == 0, r.output
    b = np.load(tmp_path / "b.npy")
    E = arrays["embeddings"]
    near = batchal.similar(E, E[[1, 2]], 300, labeled=arrays["labeled"])
    rows = np.sort(near).tolist()
    u = Pool(probs=arrays["probs"]).uncertainty("least-confidence")
    top, _ = ref_top(rows, [(1.0, [u[i] for i in rows]), (-0.4, [meta["quality"][i] for i in rows]),
                            (0.6, _brute_cos(E, rows, E[[1, 2]]).tolist())], 30)
    assert b.tolist() == top


@pytest.mark.parametrize("text, match", [
    ('strategy = "random"\n[weights]\nuncertainty = 1\n', "weights: random ranks by no score"),
    ('strategy = "margin"\nmetadata = "meta.parquet"\n[weights]\n"metadata.nope" = 1\n',
     "weights.metadata.nope: the metadata .* has no column 'nope'"),
    ('strategy = "margin"\nmetadata = "meta.parquet"\n[weights]\n"metadata.source" = 1\n',
     "weights.metadata.source: a weight needs a numeric column"),
    ('strategy = "margin"\n[weights]\nsimilarity = 1\n', r"weights.similarity: needs a \[similar\]"),
    ('strategy = "margin"\n[weights]\nuncertainty = 0\n', "weights: every weight is 0"),
])
def test_cli_weight_errors_exit_2_and_write_nothing(tmp_path, text, match):
    arrays = make_pool(n=200)
    _meta(tmp_path, 200)
    np.save(tmp_path / "probs.npy", arrays["probs"])
    cfg = _write(tmp_path, text)
    r = _invoke("select", "--config", cfg, "-k", 10, "--probs", tmp_path / "probs.npy", "--out", tmp_path / "b.npy")
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert re.search(match, lines[0]) and str(cfg) in lines[0], lines[0]
    assert not (tmp_path / "b.npy").exists()


# ---- a campaign round stores its weights -----------------------------------------------------------

def test_campaign_select_weighs_a_pool_column_and_stores_the_weights(tmp_path):
    from batchal.campaign import Campaign
    from campaign_util import fsl, make_predictions

    n = 400
    r = np.random.default_rng(2)
    E = r.normal(size=(n, 8)).astype(np.float32)
    ids = [f"s{i:05d}" for i in range(n)]
    quality = r.integers(0, 5, n)
    pq.write_table(pa.table({"id": ids, "embedding": fsl(E), "quality": quality}), tmp_path / "pool.parquet")
    P = make_predictions(tmp_path / "pred.parquet", ids)
    c = Campaign.init(tmp_path / "c", tmp_path / "pool.parquet", classes="cat,dog,fox")
    _write(tmp_path, 'strategy = "margin"\n[weights]\nuncertainty = 1\n"metadata.quality" = 0.5\n', "w.toml")
    b = c.select(20, tmp_path / "pred.parquet", seed=0, config=tmp_path / "w.toml")
    u = Pool(probs=P).uncertainty("margin")
    rows = list(range(n))
    top, _ = ref_top(rows, [(1.0, [u[i] for i in rows]), (0.5, quality.tolist())], 20)
    assert b.ids == [ids[i] for i in top]
    # the round's scores are still the items' margins, not the priority
    np.testing.assert_allclose(b.scores, -u[top], rtol=1e-6)
    rec = c.status()["rounds"][0]["config"]
    assert rec["weights"] == {"uncertainty": 1.0, "metadata.quality": 0.5}
    # the open round with other weights is another config: refused
    _write(tmp_path, 'strategy = "margin"\n[weights]\nuncertainty = 1\n"metadata.quality" = 0.6\n', "w2.toml")
    with pytest.raises(BatchalInputError, match="another --config"):
        c.select(20, tmp_path / "pred.parquet", seed=0, config=tmp_path / "w2.toml")
