import numpy as np
import pytest

from batchal import BatchalInputError, entropy, least_confidence, margin, multilabel_margin, softmax, uncertainty


def ref_margin(P):
    s = np.sort(P, axis=1)
    return s[:, -1] - s[:, -2]


def test_margin_matches_sort_reference(rng):
    P = rng.dirichlet(np.ones(7), size=500)
    np.testing.assert_allclose(margin(P), ref_margin(P), atol=1e-6)


def test_scores_stream_in_chunks_identically(rng):
    P = rng.dirichlet(np.ones(4), size=1000)
    for fn in (margin, entropy, least_confidence):
        np.testing.assert_allclose(fn(P, chunk_rows=7), fn(P), atol=1e-7)


def test_scores_on_memmap(tmp_path, rng):
    P = rng.dirichlet(np.ones(3), size=300).astype(np.float32)
    np.save(tmp_path / "p.npy", P)
    mm = np.load(tmp_path / "p.npy", mmap_mode="r")
    np.testing.assert_allclose(margin(mm, chunk_rows=64), ref_margin(P), atol=1e-6)


def test_entropy_and_least_confidence_reference(rng):
    P = rng.dirichlet(np.ones(5), size=200)
    np.testing.assert_allclose(entropy(P), -(P * np.log(P)).sum(1), rtol=1e-5)
    np.testing.assert_allclose(least_confidence(P), 1 - P.max(1), atol=1e-6)
    onehot = np.eye(5)[rng.integers(0, 5, 10)]
    np.testing.assert_allclose(entropy(onehot), 0, atol=1e-7)  # 0 log 0 = 0, no NaN


def test_logits_softmax_is_stable(rng):
    Z = rng.normal(size=(50, 6)) * 1000  # would overflow a naive exp
    P = softmax(Z)
    assert np.isfinite(P).all()
    np.testing.assert_allclose(P.sum(1), 1, atol=1e-5)
    Zs = rng.normal(size=(50, 6))
    ref = np.exp(Zs) / np.exp(Zs).sum(1, keepdims=True)
    np.testing.assert_allclose(margin(logits=Zs), ref_margin(ref), atol=1e-6)


def test_multilabel_margin_min_and_mean(rng):
    P = rng.random((100, 6))
    m = np.abs(2 * P - 1)
    np.testing.assert_allclose(multilabel_margin(P), m.min(1), atol=1e-6)
    np.testing.assert_allclose(multilabel_margin(P, aggregate="mean"), m.mean(1), atol=1e-6)
    Z = rng.normal(size=(100, 6))
    np.testing.assert_allclose(multilabel_margin(logits=Z), np.abs(2 / (1 + np.exp(-Z)) - 1).min(1), atol=1e-6)
    with pytest.raises(BatchalInputError, match="aggregate"):
        multilabel_margin(P, aggregate="max")


def test_uncertainty_sign_convention(rng):
    P = np.array([[0.5, 0.5, 0.0], [0.98, 0.01, 0.01]])
    for kind in ("margin", "entropy", "least-confidence"):
        u = uncertainty(kind, P)
        assert u[0] > u[1], kind


@pytest.mark.parametrize(
    "P, msg",
    [
        (np.array([[0.5, np.nan], [0.5, 0.5]]), "NaN"),
        (np.array([[0.5, np.inf], [0.5, 0.5]]), "infinite"),
        (np.array([[0.7, 0.7], [0.5, 0.5]]), "sum to 1"),
        (np.array([[1.5, -0.5], [0.5, 0.5]]), r"outside \[0, 1\]"),
        (np.array([0.5, 0.5]), "2-d"),
        (np.ones((3, 1)), "at least 2 columns"),
    ],
)
def test_bad_probabilities_are_named(P, msg):
    with pytest.raises(BatchalInputError, match=msg):
        margin(P)


def test_bad_row_is_reported_with_its_index():
    P = np.full((200, 2), 0.5)
    P[150] = [0.9, 0.9]
    with pytest.raises(BatchalInputError, match="row 150"):
        margin(P, chunk_rows=64)


def test_exactly_one_source():
    with pytest.raises(BatchalInputError, match="exactly one"):
        margin()
    with pytest.raises(BatchalInputError, match="exactly one"):
        margin(np.full((2, 2), 0.5), logits=np.zeros((2, 2)))


def test_wide_inputs_stream_in_blocks_of_bounded_entries(monkeypatch):
    """Blocks of many classes hold fewer rows (BLOCK_ENTRIES): the same scores, and errors name the right row."""
    import batchal.scores as S

    rng = np.random.default_rng(5)
    P = rng.random((103, 40)).astype(np.float32)
    want = S.multilabel_margin(P)
    want_m = S.margin(P / P.sum(1, keepdims=True))
    monkeypatch.setattr(S, "BLOCK_ENTRIES", 7 * 40)  # 7 rows a block
    np.testing.assert_array_equal(S.multilabel_margin(P), want)
    np.testing.assert_array_equal(S.margin(P / P.sum(1, keepdims=True)), want_m)
    P[52, 3] = 1.5
    with pytest.raises(BatchalInputError, match="row 52"):
        S.multilabel_margin(P)
