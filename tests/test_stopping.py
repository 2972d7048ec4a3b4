"""The stopping signals (batchal.stopping) against their definitions and scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from batchal.stopping import (StopTracker, compare, draw_stop_set, stop_advice, stop_predictions, stop_set_size)
from batchal.topk import TopK, topk_predictions


def test_stop_set_size_and_draw():
    assert [stop_set_size(n) for n in (10, 999, 1000, 30_000, 100_000, 10**7)] == [10, 999, 1000, 1500, 5000, 10_000]
    a, b = draw_stop_set(50_000, 7), draw_stop_set(50_000, 7)
    assert np.array_equal(a, b) and a.size == 2500 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, draw_stop_set(50_000, 8))


def test_multiclass_kappa_and_changed_match_sklearn():
    r = np.random.default_rng(0)
    P = r.dirichlet(np.full(6, 0.4), size=3000)
    Q = P.copy()
    Q[:400] = r.dirichlet(np.ones(6), size=400)
    a, b = stop_predictions(P), stop_predictions(np.log(Q), kind="logits")
    s = compare(a, b)
    assert s["kappa"] == pytest.approx(cohen_kappa_score(P.argmax(1), Q.argmax(1)), abs=1e-12)
    assert s["changed"] == pytest.approx(np.mean(P.argmax(1) != Q.argmax(1)))
    H = -(Q * np.log(Q)).sum(1) / np.log(6)
    assert s["uncertainty"] == pytest.approx(H.mean()) and s["uncertainty_kind"] == "entropy"
    first = compare(None, a)
    assert first["kappa"] is None and first["changed"] is None and first["uncertainty"] is not None
    # the mask leaves rows out (labeled ones in a campaign)
    mask = np.arange(3000) >= 400
    assert compare(a, b, mask)["kappa"] == pytest.approx(1.0) and compare(a, b, mask)["n"] == 2600


def test_multilabel_per_class_kappa_and_changed_rows():
    r = np.random.default_rng(1)
    M = r.random((2000, 9))
    M[:, 8] = 0.01  # a class nobody predicts: left out of the average
    N = M.copy()
    N[:300, :8] = r.random((300, 8))
    s = compare(stop_predictions(M, multilabel=True), stop_predictions(N, multilabel=True))
    A, B = M >= 0.5, N >= 0.5
    assert s["kappa"] == pytest.approx(np.mean([cohen_kappa_score(A[:, j], B[:, j]) for j in range(8)]))
    assert s["changed"] == pytest.approx((A != B).any(1).mean())


def test_topk_gives_the_dense_labels_and_margin_uncertainty():
    r = np.random.default_rng(2)
    P = r.dirichlet(np.ones(5), size=500)
    cl, pr = topk_predictions(P, 2)
    t = stop_predictions(TopK(cl, pr, 5), kind="topk")
    assert np.array_equal(t.top, P.argmax(1)) and t.uncertainty_kind == "margin"
    s = np.sort(P, 1)
    assert np.allclose(t.uncertainty, 1 - (s[:, -1] - s[:, -2]), atol=1e-6)
    M = r.random((500, 6))
    cl, pr = topk_predictions(M, 6, multilabel=True)  # k = C: every class listed, the sets are exact
    s = compare(stop_predictions(M, multilabel=True), stop_predictions(TopK(cl, pr, 6), kind="topk", multilabel=True))
    assert s["kappa"] == 1.0 and s["changed"] == 0.0


def test_advice_needs_three_successive_rounds_at_the_threshold():
    assert stop_advice([None, 0.995, 0.991, 0.999]).startswith("predictions stable for 3 rounds (rounds 2, 3, 4)")
    assert stop_advice([None, 0.995, 0.98, 0.999, 0.999]) is None
    assert stop_advice([0.999, 0.999]) is None
    assert stop_advice([0.999, None, 0.999, 0.999]) is None
    assert "rounds 5, 6, 7" in stop_advice([0.99, 0.99, 0.99], labels=[5, 6, 7])


def test_tracker_runs_a_loop():
    r = np.random.default_rng(3)
    P = r.dirichlet(np.ones(3), size=5000)
    t = StopTracker(5000, seed=0)
    out = [t.update(P, labeled=np.zeros(5000, bool)) for _ in range(4)]
    assert out[0]["kappa"] is None and [o["kappa"] for o in out[1:]] == [1.0, 1.0, 1.0]
    assert out[-1]["advice"] is not None and out[2]["advice"] is None
