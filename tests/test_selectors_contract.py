"""The contract every registered selector must keep (one shared test class, one subclass per strategy)."""
import numpy as np
import pytest

from batchal import BatchalInputError, Pool, available_strategies, get_selector, select
from conftest import make_pool


class SelectorContract:
    strategy: str = ""
    params: dict = {}

    def pick(self, k=50, seed=0, **over):
        arrays = make_pool()
        arrays.update(over)
        return select(self.strategy, k, seed=seed, **arrays, **self.params), arrays

    def test_exact_batch_size_unique_int64(self):
        for k in (1, 7, 50, 200):
            idx, _ = self.pick(k)
            assert idx.dtype == np.int64
            assert idx.shape == (k,)
            assert np.unique(idx).shape[0] == k

    def test_never_selects_labeled(self):
        idx, arrays = self.pick(200)
        assert not np.isin(idx, arrays["labeled"]).any()

    def test_indices_in_range(self):
        idx, arrays = self.pick(100)
        assert idx.min() >= 0 and idx.max() < arrays["probs"].shape[0]

    def test_deterministic_under_seed(self):
        a, _ = self.pick(60, seed=3)
        b, _ = self.pick(60, seed=3)
        np.testing.assert_array_equal(a, b)

    def test_whole_unlabeled_pool(self):
        arrays = make_pool(n=120, n_labeled=20)
        idx = select(self.strategy, 100, seed=0, **arrays, **self.params)
        assert set(idx.tolist()) == set(range(120)) - set(arrays["labeled"].tolist())

    def test_no_labeled_rows_given(self):
        idx, _ = self.pick(30, labeled=None)
        assert np.unique(idx).shape[0] == 30

    def test_batch_larger_than_unlabeled_pool_rejected(self):
        arrays = make_pool(n=100, n_labeled=10)
        with pytest.raises(BatchalInputError, match="larger than the unlabeled pool"):
            select(self.strategy, 91, **arrays, **self.params)

    @pytest.mark.parametrize("k", [0, -3, 2.5])
    def test_bad_batch_size_rejected(self, k):
        with pytest.raises(BatchalInputError, match="batch_size"):
            self.pick(k)

    def test_mismatched_rows_rejected(self):
        arrays = make_pool()
        arrays["embeddings"] = arrays["embeddings"][:-1]
        with pytest.raises(BatchalInputError, match="disagree on the number of rows"):
            select(self.strategy, 5, **arrays, **self.params)

    def test_labeled_out_of_range_or_repeated_rejected(self):
        arrays = make_pool()
        with pytest.raises(BatchalInputError, match="out of range"):
            select(self.strategy, 5, **{**arrays, "labeled": np.array([1, 600])}, **self.params)
        with pytest.raises(BatchalInputError, match="repeated"):
            select(self.strategy, 5, **{**arrays, "labeled": np.array([1, 2, 1])}, **self.params)

    def test_missing_input_named(self):
        sel = get_selector(self.strategy, **self.params)
        for req in sel.requires:
            arrays = make_pool()
            if req == "predictions":
                arrays.pop("probs")
                match = "probabilities or logits"
            else:
                arrays.pop(req)
                match = req
            with pytest.raises(BatchalInputError, match=match):
                select(self.strategy, 5, **arrays, **self.params)

    def test_nan_inputs_rejected(self):
        sel = get_selector(self.strategy, **self.params)
        if "predictions" in sel.requires:
            arrays = make_pool()
            arrays["probs"][5, 0] = np.nan
            with pytest.raises(BatchalInputError, match="NaN"):
                select(self.strategy, 5, **arrays, **self.params)
        if "embeddings" in sel.requires:
            arrays = make_pool()
            arrays["embeddings"][7, 1] = np.inf
            with pytest.raises(BatchalInputError, match="infinite"):
                select(self.strategy, 5, **arrays, **self.params)

    def test_memmapped_inputs(self, tmp_path):
        arrays = make_pool()
        mm = {}
        for k, v in arrays.items():
            np.save(tmp_path / f"{k}.npy", v)
            mm[k] = np.load(tmp_path / f"{k}.npy", mmap_mode="r")
        a = select(self.strategy, 40, seed=1, **arrays, **self.params)
        b = select(self.strategy, 40, seed=1, **mm, **self.params)
        np.testing.assert_array_equal(a, b)

    def test_estimator_style(self):
        sel = get_selector(self.strategy, random_state=0, **self.params)
        assert f"{type(sel).__name__}(" in repr(sel)
        idx = sel.select(Pool(**make_pool()), 10)
        np.testing.assert_array_equal(sel.selected_, idx)


class TestRandom(SelectorContract):
    strategy = "random"


class TestMargin(SelectorContract):
    strategy = "margin"


class TestEntropy(SelectorContract):
    strategy = "entropy"


class TestLeastConfidence(SelectorContract):
    strategy = "least-confidence"


class TestCoreset(SelectorContract):
    strategy = "coreset"


class TestBadge(SelectorContract):
    strategy = "badge"


class TestBadgePartitioned(SelectorContract):
    strategy = "badge"
    params = {"partitions": 3}

    @pytest.mark.parametrize("k", [0, -3, 2.5])
    def test_bad_batch_size_rejected(self, k):
        with pytest.raises(BatchalInputError):
            self.pick(k)

    def test_exact_batch_size_unique_int64(self):
        for k in (3, 7, 50, 200):
            idx, _ = self.pick(k)
            assert idx.shape == (k,) and np.unique(idx).shape[0] == k


class TestClusterMargin(SelectorContract):
    strategy = "cluster-margin"


class TestClusterMarginPower(SelectorContract):
    strategy = "cluster-margin:power=0.5"


class TestClusterMarginFactor2(SelectorContract):
    strategy = "cluster-margin"
    params = {"margin_factor": 2.0}


class TestMarginBalanced(SelectorContract):
    strategy = "margin:balance=uniform"


class TestEntropyBalanced(SelectorContract):
    strategy = "entropy:balance=input"


class TestLeastConfidenceBalanced(SelectorContract):
    strategy = "least-confidence:balance=uniform"


class TestTypiclust(SelectorContract):
    strategy = "typiclust"

    def test_nan_inputs_rejected(self):
        """typiclust reads only the visited clusters' rows: NaN there is refused (tests/test_typiclust.py
        also checks that a bad row it never reads cannot change the batch)."""
        arrays = make_pool()
        first = select(self.strategy, 1, seed=0, **arrays)[0]
        arrays["embeddings"][first, 1] = np.inf
        with pytest.raises(BatchalInputError, match="infinite"):
            select(self.strategy, 5, seed=0, **arrays)


class TestTypiclustSampled(SelectorContract):
    """Every cluster larger than max_sample: typicality against seeded samples."""

    strategy = "typiclust:knn=3:max_sample=5"

    test_nan_inputs_rejected = TestTypiclust.test_nan_inputs_rejected


class TestClusterMarginBalanced(SelectorContract):
    strategy = "cluster-margin:balance=uniform"


class TestClusterMarginRecommendedBalanced(SelectorContract):
    strategy = "cluster-margin:order=margin:tol=0.1:balance=input"


class TestClusterMarginMarginOrderShares(SelectorContract):
    strategy = "cluster-margin:order=margin"
    params = {"balance": {"0": 0.1, "1": 0.2, "2": 0.3, "3": 0.4}}


def test_every_registered_strategy_has_a_contract_test():
    tested = {cls.strategy for cls in SelectorContract.__subclasses__()}
    assert set(available_strategies()) <= tested


def test_unknown_strategy_lists_choices():
    with pytest.raises(BatchalInputError, match="unknown strategy 'nope'.*cluster-margin"):
        select("nope", 3, **make_pool())


def test_uncertainty_selectors_pick_the_extremes(rng):
    arrays = make_pool(n=300, n_labeled=0)
    P = arrays["probs"]
    s = np.sort(P, 1)
    m = s[:, -1] - s[:, -2]
    idx = select("margin", 20, probs=P)
    np.testing.assert_array_equal(np.sort(idx), np.sort(np.argsort(m, kind="stable")[:20]))
    assert np.all(np.diff(m[idx]) >= 0)  # ordered most uncertain first
    ent = -(P * np.log(P)).sum(1)
    idx = select("entropy", 20, probs=P)
    np.testing.assert_array_equal(np.sort(idx), np.sort(np.argsort(-ent)[:20]))
    idx = select("least-confidence", 20, probs=P)
    np.testing.assert_array_equal(np.sort(idx), np.sort(np.argsort(P.max(1))[:20]))


def test_margin_with_logits_equals_softmax_probs(rng):
    Z = rng.normal(size=(200, 4))
    P = np.exp(Z) / np.exp(Z).sum(1, keepdims=True)
    np.testing.assert_array_equal(select("margin", 15, logits=Z), select("margin", 15, probs=P))


def test_multilabel_margin_selection(rng):
    P = rng.random((300, 5))
    idx = select("margin", 10, probs=P, multilabel=True)
    ref = np.argsort(np.abs(2 * P - 1).min(1))[:10]
    np.testing.assert_array_equal(np.sort(idx), np.sort(ref))
    # multi-label probabilities do not need to sum to 1, multi-class ones do
    with pytest.raises(BatchalInputError, match="sum to 1"):
        select("margin", 10, probs=P)


class TestClusterMarginOrderMargin(SelectorContract):
    strategy = "cluster-margin"
    params = {"order": "margin"}


class TestRecommendedSpec(SelectorContract):
    """The spec `batchal strategies --recommended` prints keeps the contract as written."""

    from batchal.selectors import RECOMMENDED as strategy


class TestClusterMarginNearDuplicates(SelectorContract):
    strategy = "cluster-margin"
    params = {"order": "margin", "tol": 0.05}


class TestClusterMarginEmbeddingDuplicates(SelectorContract):
    """The near-duplicate test on embeddings (a loose distance, so that it defers often here)."""

    strategy = "cluster-margin"
    params = {"order": "margin", "dup": 0.3}


class TestRecommendedTypicalFirst(SelectorContract):
    """The low-budget way out: typiclust's picks up to 100 labeled rows (make_pool labels 40), then the spec."""

    from batchal.selectors import RECOMMENDED

    strategy = RECOMMENDED + ":typical=100"


class TestClusterMarginAutoOrder(SelectorContract):
    """order=auto with a loose distance (it takes the paper's round-robin on this pool) and a strict one (the walk)."""

    strategy = "cluster-margin"
    params = {"order": "auto", "dup": 0.3}


class TestClusterMarginAutoOrderWalk(SelectorContract):
    strategy = "cluster-margin:order=auto:dup=0.0001:balance=uniform"
