"""Top-k predictions (issue 21): exact scores and selections against the dense matrix, files, validation."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchal
from batchal import BatchalInputError, TopK, read_topk, topk_predictions, topk_table
from batchal.scores import uncertainty
from batchal.selectors import Pool
from topk_util import random_pool, redundant_pool

SPECS = ["margin", "cluster-margin", "cluster-margin:order=margin", "cluster-margin:margin_factor=3:max_candidate_share=1",
         "cluster-margin:order=margin:tol=0.1", "cluster-margin:order=margin:tol=0.05", "random"]


def tk(P, k, multilabel=False):
    c, p = topk_predictions(P, k, multilabel=multilabel)
    return TopK(c, p, P.shape[1])


# ------------------------------------------------------------------ the helper
@pytest.mark.parametrize("multilabel", [False, True])
def test_topk_predictions_are_the_sorted_head_of_a_full_sort(multilabel):
    P, _ = random_pool(500, 40, multilabel)
    for k in (1, 2, 7, 40):
        c, p = topk_predictions(P, k, multilabel=multilabel)
        key = np.abs(2.0 * P.astype(np.float64) - 1.0) if multilabel else -P.astype(np.float64)
        full = np.lexsort((np.broadcast_to(np.arange(40), P.shape), key), axis=1)[:, :k]
        np.testing.assert_array_equal(c, full)
        np.testing.assert_array_equal(p, np.take_along_axis(P, full, axis=1))
        assert c.dtype == np.int32 and p.dtype == np.float32


def test_topk_predictions_from_logits_match_softmax_and_sigmoid(rng):
    Z = rng.normal(size=(300, 9)) * 3
    c, p = topk_predictions(Z, 3, logits=True)
    np.testing.assert_array_equal((c, p), topk_predictions(batchal.softmax(Z), 3))
    c, p = topk_predictions(Z, 3, logits=True, multilabel=True)
    S = (1 / (1 + np.exp(-Z))).astype(np.float32)
    np.testing.assert_array_equal((c, p), topk_predictions(S, 3, multilabel=True))
    with pytest.raises(BatchalInputError, match="k must be"):
        topk_predictions(Z, 10)


# ------------------------------------------------------------------ scores
@pytest.mark.parametrize("k", [2, 3, 12])
def test_multiclass_margin_and_least_confidence_are_exactly_dense(k):
    P, _ = random_pool(3000, 12)
    T = tk(P, k)
    for kind in ("margin", "least-confidence"):
        np.testing.assert_array_equal(T.uncertainty(kind), uncertainty(kind, P))


@pytest.mark.parametrize("k", [1, 4, 12])
def test_multilabel_min_margin_is_exactly_dense(k):
    P, _ = random_pool(3000, 12, multilabel=True)
    np.testing.assert_array_equal(tk(P, k, True).uncertainty("margin", multilabel=True),
                                  uncertainty("margin", P, multilabel=True))


def test_entropy_and_mean_aggregate_are_refused():
    P, _ = random_pool(100, 6)
    with pytest.raises(BatchalInputError, match="entropy needs every class"):
        tk(P, 3).uncertainty("entropy")
    with pytest.raises(BatchalInputError, match="'mean' aggregate"):
        tk(P, 3, True).uncertainty("margin", multilabel=True, aggregate="mean")
    with pytest.raises(BatchalInputError, match="entropy needs every class"):
        batchal.select("entropy", 5, probs=tk(P, 3))
    with pytest.raises(BatchalInputError, match="k >= 2"):
        batchal.select("margin", 5, probs=tk(P, 1))


# ------------------------------------------------------------------ selections
@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("spec", SPECS + ["least-confidence"])
def test_selection_from_topk_equals_dense_on_a_redundant_pool(spec, multilabel):
    if multilabel and spec == "least-confidence":
        pytest.skip("least confidence is multi-class only (dense too)")
    P, cl = redundant_pool(multilabel=multilabel)
    labeled = np.random.default_rng(1).choice(P.shape[0], 200, replace=False)
    kw = dict(clusters=cl, labeled=labeled, multilabel=multilabel, seed=3)
    dense = batchal.select(spec, 300, probs=P, **kw)
    for k in (4, 6):
        np.testing.assert_array_equal(batchal.select(spec, 300, probs=tk(P, k, multilabel), **kw), dense)


@pytest.mark.parametrize("multilabel", [False, True])
def test_the_near_duplicate_test_groups_copies_on_this_pool(multilabel):
    # the pool above is a meaningful check of tol: most candidates are near-duplicates
    P, cl = redundant_pool(multilabel=multilabel)
    sel = batchal.get_selector("cluster-margin:order=margin:tol=0.1", random_state=0)
    sel.select(Pool(probs=tk(P, 4, multilabel), clusters=cl, multilabel=multilabel), 300)
    assert sel.diagnostics_["candidate_near_duplicate_share"] > 0.3


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("spec", SPECS)
def test_selection_with_every_class_listed_equals_dense_on_any_pool(spec, multilabel):
    P, cl = random_pool(2000, 12, multilabel)
    kw = dict(clusters=cl, multilabel=multilabel, seed=5)
    np.testing.assert_array_equal(batchal.select(spec, 150, probs=tk(P, 12, multilabel), **kw),
                                  batchal.select(spec, 150, probs=P, **kw))


@pytest.mark.parametrize("multilabel", [False, True])
def test_topk_near_duplicate_test_is_the_dense_one_or_more_lenient(multilabel):
    """On any pool: every dense near-duplicate pair is one from top-k (missing classes count with the
    value nearest the other row's), and with every class listed the two tests agree pair by pair."""
    from batchal.selectors._round_robin import topk_close

    P, _ = random_pool(400, 8, multilabel, seed=4)
    P[200:] = np.clip(P[:200] + np.random.default_rng(0).normal(scale=0.03, size=(200, 8)), 0, 1)
    if not multilabel:
        P /= P.sum(axis=1, keepdims=True)
    for k, tol in ((3, 0.1), (5, 0.2), (8, 0.1)):
        T = tk(P, k, multilabel)
        b = T.missing_bounds(multilabel)
        cls = T.classes.astype(np.int64)
        agree = 0
        for i in range(0, 400, 3):
            for j in range(i + 1, 400, 7):
                dense = bool(np.abs(P[i] - P[j]).max() <= tol)
                top = topk_close(cls[i], T.probs[i], b[i], cls[j], T.probs[j], b[j], tol, multilabel)
                assert top or not dense
                agree += top == dense
                if k == 8:
                    assert top == dense
        assert agree > 0


def test_multiclass_missing_bound_is_the_kth_probability_or_the_residual():
    T = TopK(np.array([[0, 1, 2], [3, 4, 5]]), np.array([[0.5, 0.3, 0.1], [0.4, 0.3, 0.25]], dtype=np.float32), 10)
    np.testing.assert_allclose(T.missing_bounds(False), [0.1, 0.051], atol=1e-6)
    T = TopK(np.array([[0, 1], [2, 3]]), np.array([[0.45, 0.9], [0.5, 0.02]], dtype=np.float32), 10)
    np.testing.assert_allclose(T.missing_bounds(True), [0.4, 0.48], atol=1e-6)


# ------------------------------------------------------------------ precomputed scores
@pytest.mark.parametrize("spec", ["margin", "cluster-margin", "cluster-margin:order=margin"])
def test_precomputed_scores_select_as_the_dense_margin(spec):
    P, cl = random_pool(2000, 10)
    kw = dict(clusters=cl, labeled=np.arange(50), seed=2)
    np.testing.assert_array_equal(batchal.select(spec, 100, scores=batchal.margin(P), **kw),
                                  batchal.select(spec, 100, probs=P, **kw))


def test_precomputed_scores_are_refused_where_probabilities_are_needed():
    P, cl = random_pool(300, 5)
    s = batchal.margin(P)
    with pytest.raises(BatchalInputError, match="near-duplicate test"):
        batchal.select("cluster-margin:order=margin:tol=0.1", 10, scores=s, clusters=cl)
    with pytest.raises(BatchalInputError, match="'entropy' score needs"):
        batchal.select("entropy", 10, scores=s)
    with pytest.raises(BatchalInputError, match="badge"):
        batchal.select("badge", 10, scores=s, embeddings=np.ones((300, 2)))
    with pytest.raises(BatchalInputError, match="NaN"):
        batchal.select("margin", 10, scores=np.r_[s[:-1], np.nan])
    with pytest.raises(BatchalInputError, match="one kind of predictions"):
        batchal.select("margin", 10, scores=s, probs=P)


def test_badge_refuses_topk():
    P, _ = random_pool(300, 5)
    with pytest.raises(BatchalInputError, match="badge.*dense probabilities"):
        batchal.select("badge", 10, probs=tk(P, 3), embeddings=np.ones((300, 2)))


# ------------------------------------------------------------------ files
def _write_shards(d, P, k, multilabel=False, rows_per_file=700, row_group=300, ids=None):
    d.mkdir(parents=True, exist_ok=True)
    c, p = topk_predictions(P, k, multilabel=multilabel)
    for i, a in enumerate(range(0, P.shape[0], rows_per_file)):
        b = min(P.shape[0], a + rows_per_file)
        pq.write_table(topk_table(None if ids is None else ids[a:b], c[a:b], p[a:b], n_classes=P.shape[1]),
                       d / f"part-{i:03d}.parquet", row_group_size=row_group)
    return d


def test_parquet_shards_and_npz_read_back_identically(tmp_path):
    P, _ = random_pool(2000, 12, multilabel=True)
    d = _write_shards(tmp_path / "preds", P, 4, multilabel=True)
    T = read_topk(d, multilabel=True)
    ref = tk(P, 4, True)
    np.testing.assert_array_equal(T.classes, ref.classes)
    np.testing.assert_array_equal(T.probs, ref.probs)
    assert T.n_classes == 12
    np.savez(tmp_path / "p.npz", top_classes=ref.classes, top_probs=ref.probs)
    from batchal.io import load_predictions

    T2 = load_predictions(tmp_path / "p.npz", multilabel=True)
    np.testing.assert_array_equal(T2.probs, ref.probs)
    assert isinstance(load_predictions(d, multilabel=True), TopK)


def _bad(tmp_path, name, classes, probs, n_classes=10):
    k = len(classes[0])
    ragged = len({len(r) for r in classes}) > 1
    cls = pa.array(classes, type=pa.list_(pa.int32())) if ragged else pa.FixedSizeListArray.from_arrays(
        pa.array(np.ravel(classes), pa.int32()), k)
    prb = pa.array(probs, type=pa.list_(pa.float32())) if ragged else pa.FixedSizeListArray.from_arrays(
        pa.array(np.ravel(probs), pa.float32()), k)
    path = tmp_path / f"{name}.parquet"
    pq.write_table(pa.table({"top_classes": cls, "top_probs": prb}, metadata={"n_classes": str(n_classes)}), path)
    return path


GOOD_C = [[0, 1, 2]] * 4
GOOD_P = [[0.5, 0.3, 0.1]] * 4


@pytest.mark.parametrize("case, classes, probs, match", [
    ("vocab", [[0, 1, 2], [0, 1, 2], [3, 12, 1], [0, 1, 2]], GOOD_P, r"class id 12 outside the vocabulary of 10 .*row 2"),
    ("negative", [[0, 1, 2], [0, -1, 2], [0, 1, 2], [0, 1, 2]], GOOD_P, r"class id -1 .*row 1"),
    ("ragged", [[0, 1, 2], [0, 1, 2], [0, 1], [0, 1, 2]], [[0.5, 0.3, 0.1]] * 2 + [[0.5, 0.3]] + [[0.5, 0.3, 0.1]],
     r"k varies between rows.*row 2"),
    ("duplicate", [[0, 1, 2], [0, 1, 2], [0, 1, 2], [4, 5, 4]], GOOD_P, r"repeats a class id.*row 3"),
    ("range", GOOD_C, [[0.5, 0.3, 0.1], [1.5, 0.3, 0.1], [0.5, 0.3, 0.1], [0.5, 0.3, 0.1]], r"outside \[0, 1\].*row 1"),
    ("negative-prob", GOOD_C, [[0.5, 0.3, 0.1]] * 3 + [[0.5, 0.3, -0.2]], r"outside \[0, 1\].*row 3"),
    ("unsorted", GOOD_C, [[0.5, 0.3, 0.1], [0.3, 0.5, 0.1], [0.5, 0.3, 0.1], [0.5, 0.3, 0.1]], r"not sorted.*row 1"),
    ("nan", GOOD_C, [[0.5, 0.3, 0.1]] * 2 + [[0.5, float("nan"), 0.1]] + [[0.5, 0.3, 0.1]], r"NaN.*row 2"),
    ("sum", GOOD_C, [[0.5, 0.3, 0.1], [0.5, 0.3, 0.1], [0.5, 0.45, 0.3], [0.5, 0.3, 0.1]], r"row 2 sum to 1.25"),
])
def test_every_bad_input_names_the_file_and_the_first_offending_row(tmp_path, case, classes, probs, match):
    path = _bad(tmp_path, case, classes, probs)
    with pytest.raises(BatchalInputError, match=match) as e:
        read_topk(path)
    assert path.name in str(e.value)
    # the same rows handed over in memory are refused by the pool, naming the row
    if case != "ragged":
        with pytest.raises(BatchalInputError, match=match.split(".*")[-1]):
            batchal.select("margin", 1, probs=TopK(np.array(classes), np.array(probs, dtype=np.float32), 10))


def test_multilabel_order_is_nearest_half_first(tmp_path):
    ok = _bad(tmp_path, "ml", [[0, 1]] * 2, [[0.45, 0.9], [0.6, 0.05]])
    read_topk(ok, multilabel=True)
    with pytest.raises(BatchalInputError, match="not sorted most probable first"):
        read_topk(ok)
    bad = _bad(tmp_path, "mlbad", [[0, 1]] * 2, [[0.45, 0.9], [0.05, 0.6]])
    with pytest.raises(BatchalInputError, match=r"nearest 0.5 first .*row 1"):
        read_topk(bad, multilabel=True)


# ------------------------------------------------------------------ the command line
def test_cli_select_from_topk_files_and_scores_equals_dense(tmp_path):
    from typer.testing import CliRunner

    from batchal.cli import app

    P, cl = redundant_pool(n=1500)
    np.save(tmp_path / "P.npy", P)
    np.save(tmp_path / "C.npy", cl)
    np.save(tmp_path / "S.npy", batchal.margin(P))
    _write_shards(tmp_path / "preds", P, 5)
    c, p = topk_predictions(P, 5)
    np.savez(tmp_path / "T.npz", top_classes=c, top_probs=p)
    run = CliRunner().invoke
    for spec in ("margin", "cluster-margin:order=margin:tol=0.1", "cluster-margin"):
        base = ["select", "-s", spec, "-k", "120", "--clusters", str(tmp_path / "C.npy"), "--seed", "4", "-q"]
        outs = {}
        for tag, src in (("dense", ["--probs", "P.npy"]), ("parquet", ["--probs", "preds"]),
                         ("npz", ["--probs", "T.npz"]), ("scores", ["--scores", "S.npy"])):
            if tag == "scores" and "tol" in spec:
                continue
            src = [src[0], str(tmp_path / src[1])]
            r = run(app, base + src + ["--out", str(tmp_path / f"{tag}.npy")])
            assert r.exit_code == 0, r.output
            outs[tag] = np.load(tmp_path / f"{tag}.npy")
        for tag, got in outs.items():
            np.testing.assert_array_equal(got, outs["dense"], err_msg=f"{spec} {tag}")
