"""Class balance (issue 26): quotas per predicted class filled in each strategy's own order."""
import json

import numpy as np
import pytest

from batchal import BatchalInputError, select
from batchal.selectors.balance import class_quotas, quota_fill
from batchal.topk import TopK, topk_predictions
from conftest import make_pool

BALANCED = ["margin", "entropy", "least-confidence", "cluster-margin", "cluster-margin:order=margin",
            "cluster-margin:order=margin:tol=0.1"]


def _spec(base, balance):
    return f"{base}:balance={balance}"


def _ref_quotas(k, target, avail):
    """Plain-Python water-filling and largest-remainder rounding."""
    C = len(target)
    q = [0] * C
    active = [c for c in range(C) if target[c] > 0 and avail[c] > 0]
    left = k
    ideal = {}
    while active and left > 0:
        tot = sum(target[c] for c in active)
        ideal = {c: left * target[c] / tot for c in active}
        sat = [c for c in active if avail[c] <= ideal[c]]
        if not sat:
            break
        for c in sat:
            q[c] = avail[c]
            left -= avail[c]
        active = [c for c in active if c not in sat]
    if active and left > 0:
        base = {c: min(int(ideal[c] // 1), avail[c]) for c in active}
        extra = left - sum(base.values())
        for c in active:
            q[c] += base[c]
        for c in sorted(active, key=lambda c: (-(ideal[c] - base[c]), c))[:extra]:
            q[c] += 1
    return q


def _ref_fill(order, labels, quota, k):
    """Plain-Python quota scan, then the shortfall in order."""
    count = [0] * len(quota)
    taken = []
    for j, r in enumerate(order):
        if len(taken) == k:
            break
        if any(count[c] < quota[c] for c in labels[r]):
            for c in labels[r]:
                count[c] += 1
            taken.append(j)
    if len(taken) < k:
        taken += [j for j in range(len(order)) if j not in taken][: k - len(taken)]
    return sorted(taken)


def _csr(labels):
    indptr = np.concatenate(([0], np.cumsum([len(x) for x in labels]))).astype(np.int64)
    indices = np.array([c for x in labels for c in x], dtype=np.int64)
    return indptr, indices


@pytest.mark.parametrize("multilabel", [False, True])
def test_kernel_equals_plain_python_reference(multilabel):
    rng = np.random.default_rng(0)
    for trial in range(300):
        C = int(rng.integers(1, 6))
        m = int(rng.integers(1, 40))
        if multilabel:
            labels = [sorted(rng.choice(C, int(rng.integers(0, C + 1)), replace=False).tolist()) for _ in range(m)]
        else:
            # skewed classes so that some run short of their quota
            labels = [[int(min(C - 1, rng.geometric(0.5) - 1))] for _ in range(m)]
        k = int(rng.integers(1, m + 1))
        target = rng.dirichlet(np.ones(C)) if trial % 3 else np.full(C, 1.0 / C)
        if trial % 5 == 0 and C > 1:
            target[rng.integers(0, C)] = 0
            target /= target.sum()
        avail = np.zeros(C, dtype=np.int64)
        for x in labels:
            for c in x:
                avail[c] += 1
        q = class_quotas(k, target, avail)
        assert q.tolist() == _ref_quotas(k, target.tolist(), avail.tolist())
        assert (q <= avail).all()
        if not multilabel and avail[target > 0].sum() >= k:
            assert q.sum() == k
        order = rng.permutation(m)
        indptr, indices = _csr(labels)
        pos = quota_fill(order, indptr, indices, q, k)
        assert pos.tolist() == _ref_fill(order.tolist(), labels, q.tolist(), k)


def test_quotas_within_one_item_and_redistributed():
    # plenty of every class: within one item of target * k, summing to k
    q = class_quotas(10, np.array([0.5, 0.3, 0.2 / 3, 0.2 / 3, 0.2 / 3]), np.full(5, 100))
    assert q.sum() == 10 and (np.abs(q - 10 * np.array([0.5, 0.3, 0.2 / 3, 0.2 / 3, 0.2 / 3])) <= 1).all()
    # class 0 has 2 candidates for a quota of 50: the other 98 split 3:1 as their targets (73.5 / 24.5,
    # the tie of remainders to the smaller class id)
    q = class_quotas(100, np.array([0.5, 0.375, 0.125]), np.array([2, 1000, 1000]))
    assert q.tolist() == [2, 74, 24]
    assert q.sum() == 100


def _unlabeled_classes(arrays):
    mask = np.ones(arrays["probs"].shape[0], bool)
    mask[arrays["labeled"]] = False
    return arrays["probs"][mask].argmax(1)


@pytest.mark.parametrize("base", BALANCED)
def test_balance_meets_its_target_within_one_item(base, tmp_path):
    arrays = make_pool(n=3000, n_clusters=300)
    C = arrays["probs"].shape[1]
    k = 97
    inp = np.bincount(_unlabeled_classes(arrays), minlength=C) / (3000 - 40)
    table = {"0": 0.4, "1": 0.1, "2": 0.2, "3": 0.3}
    (tmp_path / "shares.json").write_text(json.dumps(table))
    targets = {"uniform": np.full(C, 1 / C), "input": inp,
               str(tmp_path / "shares.json"): np.array([0.4, 0.1, 0.2, 0.3, 0.0])}
    for bal, target in targets.items():
        b = select(_spec(base, bal), k, seed=0, **arrays)
        assert b.shape == (k,) and np.unique(b).shape[0] == k
        counts = np.bincount(arrays["probs"][b].argmax(1), minlength=C)
        assert (np.abs(counts - target * k) <= 1).all(), (bal, counts, target * k)
    # the plain batch is far from uniform on this pool: the option does something
    plain = np.bincount(arrays["probs"][select(base, k, seed=0, **arrays)].argmax(1), minlength=C)
    assert np.abs(plain - k / C).max() > 1


def test_scarce_class_gives_all_it_has_and_the_batch_stays_full():
    arrays = make_pool(n=2000)
    P = arrays["probs"]
    P[:, 4] *= np.where(np.arange(2000) % 100 == 0, 1.0, 0.0)  # class 4 top-1 in at most 20 rows
    P /= P.sum(1, keepdims=True)
    arrays["labeled"] = np.arange(1, 41)
    n4 = int((_unlabeled_classes(arrays) == 4).sum())
    b = select("margin:balance=uniform", 200, seed=0, **arrays)
    counts = np.bincount(P[b].argmax(1), minlength=5)
    assert counts[4] == n4 < 40 and counts.sum() == 200
    assert (np.abs(counts[:4] - (200 - n4) / 4) <= 1).all()


def _aligned_pool(n=200, C=2):
    """Rows alternate classes and grow surer with the row: margin's top k holds the input shares."""
    i = np.arange(n)
    top = 0.5 + 0.45 * (i + 1) / n
    P = np.empty((n, C), np.float32)
    P[:] = ((1 - top) / (C - 1))[:, None]
    P[i, i % C] = top
    P /= P.sum(1, keepdims=True)
    return dict(probs=P, labeled=np.array([], dtype=np.int64), clusters=i // 3)


@pytest.mark.parametrize("score", ["margin", "entropy", "least-confidence"])
def test_equals_plain_strategy_when_every_class_meets_its_target(score):
    arrays = _aligned_pool()
    for k in (10, 40):
        plain = select(score, k, **arrays)
        np.testing.assert_array_equal(select(f"{score}:balance=input", k, **arrays), plain)
        np.testing.assert_array_equal(select(f"{score}:balance=uniform", k, **arrays), plain)


@pytest.mark.parametrize("base", BALANCED[3:])
def test_cluster_margin_equals_plain_when_its_own_shares_are_the_target(base, tmp_path):
    arrays = make_pool(n=2000, n_clusters=200)
    k = 60
    plain = select(base, k, seed=5, **arrays)
    counts = np.bincount(arrays["probs"][plain].argmax(1), minlength=5)
    shares = {str(c): counts[c] / k for c in range(5)}
    np.testing.assert_array_equal(select(base, k, seed=5, balance=shares, **arrays), plain)


def test_balance_acts_on_the_round_robin_not_after_it():
    # the balanced batch of cluster-margin keeps the round-robin's visiting order: its rows appear in
    # the plain (full) visiting order, and every row the plain batch shares with it comes first
    arrays = make_pool(n=2000, n_clusters=200)
    k = 50
    full = select("cluster-margin:order=margin", 400, seed=0, **arrays, margin_factor=1, max_candidate_share=1)
    bal = select("cluster-margin:order=margin:balance=uniform", k, seed=0, **arrays, margin_factor=8,
                 max_candidate_share=1)  # the same candidates M: the 400 smallest margins
    where = {r: j for j, r in enumerate(full)}
    pos = [where[r] for r in bal]
    assert pos == sorted(pos)
    assert pos[-1] >= k  # it went past the plain batch to fill the short classes


def test_topk_predictions_give_the_dense_batch():
    arrays = make_pool(n=1500)
    P = arrays["probs"]
    # k = 3 of 5 classes; the near-duplicate test of tol is the dense one only where the entries decide
    # (README), so that spec reads every class
    for base, kk in [("margin", 3), ("least-confidence", 3), ("cluster-margin", 3), ("cluster-margin:order=margin", 3),
                     ("cluster-margin:order=margin:tol=0.1", 5)]:
        c, p = topk_predictions(P, kk)
        top = TopK(c, p, n_classes=5)
        for bal in ("uniform", "input"):
            dense = select(_spec(base, bal), 80, seed=0, **arrays)
            tk = select(_spec(base, bal), 80, seed=0, **{**arrays, "probs": top})
            np.testing.assert_array_equal(tk, dense)


def test_multilabel_balance_over_positive_labels():
    rng = np.random.default_rng(1)
    n, C = 1500, 6
    P = rng.beta(0.4, 0.6, size=(n, C)).astype(np.float32)
    arrays = dict(probs=P, clusters=rng.integers(0, 150, n), labeled=np.arange(20))
    for base in BALANCED:
        if base in ("entropy", "least-confidence"):  # multi-label input has the margin score only
            continue
        b = select(_spec(base, "uniform"), 100, seed=0, multilabel=True, **arrays)
        assert b.shape == (100,) and np.unique(b).shape[0] == 100 and not np.isin(b, arrays["labeled"]).any()
    # top-k with every class listed: the dense batch
    c, p = topk_predictions(P, C, multilabel=True)
    top = TopK(c, p, n_classes=C)
    for base in ["margin", "cluster-margin:order=margin:tol=0.1"]:
        np.testing.assert_array_equal(
            select(_spec(base, "input"), 100, seed=0, multilabel=True, **{**arrays, "probs": top}),
            select(_spec(base, "input"), 100, seed=0, multilabel=True, **arrays))


@pytest.mark.parametrize("spec, match", [
    ("margin:balance=sideways", "balance must be 'uniform', 'input'"),
    ("margin:balance=3", "balance must be"),
    ("random:balance=uniform", "random takes no balance"),
    ("coreset:balance=uniform", "coreset takes no balance"),
    ("badge:balance=input", "badge takes no balance"),
    ("cluster-margin:balance=nope.json", "does not exist"),
])
def test_bad_balance_values(spec, match):
    arrays = make_pool()
    with pytest.raises(BatchalInputError, match=match):
        select(spec, 10, **arrays)


@pytest.mark.parametrize("table, match", [
    ({"0": 0.5, "1": 0.4}, "sum to 1"),
    ({"0": 0.5, "9": 0.5}, "class 9 does not exist"),
    ({"a": 1.0}, "not a class id"),
    ({"0": -0.5, "1": 1.5}, "must be a number >= 0"),
    ([0.5, 0.5], "object class -> share"),
])
def test_bad_share_tables(table, match, tmp_path):
    f = tmp_path / "shares.json"
    f.write_text(json.dumps(table))
    with pytest.raises(BatchalInputError, match=match):
        select(f"margin:balance={f}", 10, **make_pool())
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(BatchalInputError, match="not readable JSON"):
        select(f"cluster-margin:balance={tmp_path / 'broken.json'}", 10, **make_pool())


def test_balance_needs_classes_and_balance_by_is_refused_on_ray():
    from batchal.engines.ray.select import check_ray_strategy

    with pytest.raises(BatchalInputError, match="balance needs predicted probabilities"):
        select("margin:balance=uniform", 10, scores=np.random.default_rng(0).random(100))
    check_ray_strategy("cluster-margin:order=margin:tol=0.1:balance=input")  # distributed (tests/test_balance_ray.py)
    with pytest.raises(BatchalInputError, match="balance_by is not distributed"):
        check_ray_strategy("cluster-margin:order=margin:tol=0.1:balance_by=source")


def test_campaign_select_takes_a_balanced_spec(tmp_path):
    from typer.testing import CliRunner

    from batchal.cli import app
    from campaign_util import CLASSES, make_pool as make_campaign_pool, make_predictions

    ids, _ = make_campaign_pool(tmp_path / "pool.parquet")
    P = make_predictions(tmp_path / "pred.parquet", ids)
    P[:, 2] *= 0.3  # class 2 rarely the top-1 prediction, so the plain batch is unbalanced
    P /= P.sum(1, keepdims=True)
    import pyarrow as pa
    import pyarrow.parquet as pq
    from campaign_util import fsl

    pq.write_table(pa.table({"id": ids, "probs": fsl(P.astype(np.float32))}), tmp_path / "pred.parquet")
    runner = CliRunner()
    for args in (["init", tmp_path / "c", "--pool", tmp_path / "pool.parquet", "--classes", ",".join(CLASSES)],
                 ["cluster", tmp_path / "c", "--mean-cluster-size", 10, "-q"],
                 ["select", tmp_path / "c", "--predictions", tmp_path / "pred.parquet", "-k", 30, "--strategy",
                  "cluster-margin:order=margin:tol=0.1:balance=uniform", "--out", tmp_path / "r1.csv"]):
        r = runner.invoke(app, ["campaign", *map(str, args)])
        assert r.exit_code == 0, r.output
    picked = tmp_path.joinpath("r1.csv").read_text().splitlines()[1:]
    row = {i: j for j, i in enumerate(ids)}
    counts = np.bincount(P[[row[i] for i in picked]].argmax(1), minlength=3)
    assert counts.tolist() == [10, 10, 10]


def _sources(n, seed=4):
    r = np.random.default_rng(seed)
    return np.array(["web", "camera", "scan", "phone"])[np.minimum(r.geometric(0.45, n) - 1, 3)]


@pytest.mark.parametrize("base", BALANCED)
def test_balance_by_a_metadata_column(base):
    arrays = make_pool(n=3000, n_clusters=300)
    src = _sources(3000)
    k = 80
    unl = np.ones(3000, bool)
    unl[arrays["labeled"]] = False
    vals = np.array(["camera", "phone", "scan", "web"])
    inp = np.array([(src[unl] == v).mean() for v in vals])
    for bal, target in [(None, np.full(4, 0.25)), ("uniform", np.full(4, 0.25)), ("input", inp),
                        ({"web": 0.7, "phone": 0.3}, np.array([0, 0.3, 0, 0.7]))]:
        b = select(base, k, seed=0, metadata={"source": src}, balance_by="source", balance=bal, **arrays)
        assert b.shape == (k,) and np.unique(b).shape[0] == k
        counts = np.array([(src[b] == v).sum() for v in vals])
        assert (np.abs(counts - target * k) <= 1).all(), (bal, counts, target * k)
    # the spec form, and a column name that reads as a number stays a name
    b = select(f"{base}:balance_by=1", k, seed=0, metadata={"1": src}, **arrays)
    assert np.abs(np.array([(src[b] == v).sum() for v in vals]) - k / 4).max() <= 1


def test_balance_by_errors():
    arrays = make_pool()
    src = _sources(600)
    with pytest.raises(BatchalInputError, match="the pool has no metadata"):
        select("margin:balance_by=source", 10, **arrays)
    with pytest.raises(BatchalInputError, match="no column 'lang'"):
        select("margin:balance_by=lang", 10, metadata={"source": src}, **arrays)
    with pytest.raises(BatchalInputError, match="source='tv' does not occur"):
        select("margin", 10, balance_by="source", balance={"tv": 1.0}, metadata={"source": src}, **arrays)
    with pytest.raises(BatchalInputError, match="has 5 values but the pool has 600"):
        select("margin:balance_by=source", 10, metadata={"source": src[:5]}, **arrays)
    with pytest.raises(BatchalInputError, match="random takes no balance"):
        select("random:balance_by=source", 10, metadata={"source": src}, **arrays)


def test_cli_and_config_balance_by(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from batchal.cli import app

    arrays = make_pool(n=1000)
    src = _sources(1000)
    np.save(tmp_path / "P.npy", arrays["probs"])
    pq.write_table(pa.table({"source": src, "other": np.arange(1000)}), tmp_path / "meta.parquet")
    ref = select("margin:balance_by=source", 40, metadata={"source": src}, probs=arrays["probs"])
    (tmp_path / "s.toml").write_text('strategy = "margin"\nbalance_by = "source"\nmetadata = "meta.parquet"\n')
    for extra in (["-s", "margin:balance_by=source", "--metadata", str(tmp_path / "meta.parquet")],
                  ["--config", str(tmp_path / "s.toml")]):
        r = CliRunner().invoke(app, ["select", *extra, "-k", "40", "--probs", str(tmp_path / "P.npy"),
                                     "--out", str(tmp_path / "b.npy")])
        assert r.exit_code == 0, r.output
        np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), ref)


def test_balance_by_needs_no_predicted_classes():
    # precomputed scores carry no class, but a metadata column is a class of its own
    arrays = make_pool(n=1000)
    src = _sources(1000)
    s = np.random.default_rng(2).random(1000)
    for spec in ("margin:balance_by=source", "cluster-margin:balance_by=source"):
        b = select(spec, 40, seed=0, scores=s, clusters=arrays["clusters"], metadata={"source": src})
        counts = np.array([(src[b] == v).sum() for v in ("camera", "phone", "scan", "web")])
        assert counts.tolist() == [10, 10, 10, 10], (spec, counts)
