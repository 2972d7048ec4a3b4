"""The engine interface and the total order of the top-k that makes distributed selection exact."""
from __future__ import annotations

import numpy as np
import pytest

import batchal
from batchal import BatchalInputError
from batchal.engines import get_engine
from batchal.selectors.base import merge_top_k, top_k


def _reference(score, exclude, k):
    rows = np.flatnonzero(~exclude)
    s = np.asarray(score, dtype=np.float32)[rows]
    return rows[np.lexsort((rows, -s))][:k]


@pytest.mark.parametrize("seed", range(5))
def test_top_k_is_a_total_order_even_at_the_cut(seed):
    r = np.random.default_rng(seed)
    s = r.integers(0, 6, 2000).astype(np.float32)  # heavy ties everywhere
    ex = r.random(2000) < 0.1
    for k in (1, 7, 300, int((~ex).sum())):
        np.testing.assert_array_equal(top_k(s, ex, k), _reference(s, ex, k))


def test_merge_of_block_top_k_equals_top_k():
    r = np.random.default_rng(0)
    s = r.integers(0, 20, 5000).astype(np.float32)
    ex = np.zeros(5000, bool)
    k = 333
    parts_s, parts_r = [], []
    for a in range(0, 5000, 700):
        loc = top_k(s[a:a + 700], ex[a:a + 700], min(k, 700))
        parts_s.append(s[a:a + 700][loc])
        parts_r.append(loc + a)
    order = r.permutation(sum(p.shape[0] for p in parts_s))  # arrival order does not matter
    _, rows = merge_top_k(np.concatenate(parts_s)[order], np.concatenate(parts_r)[order], k)
    np.testing.assert_array_equal(rows, top_k(s, ex, k))


def test_local_engine_is_the_api(pool_arrays):
    eng = get_engine("local")
    a = eng.select("cluster-margin", 20, probs=pool_arrays["probs"], clusters=pool_arrays["clusters"],
                   labeled=pool_arrays["labeled"], seed=1)
    b = batchal.select("cluster-margin", 20, probs=pool_arrays["probs"], clusters=pool_arrays["clusters"],
                       labeled=pool_arrays["labeled"], seed=1)
    np.testing.assert_array_equal(a, b)
    model = eng.cluster(pool_arrays["embeddings"], mean_cluster_size=5)
    np.testing.assert_array_equal(model.labels_, batchal.cluster(pool_arrays["embeddings"], mean_cluster_size=5))


def test_get_engine_errors():
    with pytest.raises(BatchalInputError, match="unknown engine"):
        get_engine("spark")
    with pytest.raises(BatchalInputError, match="only for --engine ray"):
        get_engine("local", address="auto")


def test_core_does_not_import_ray():
    """The core (API, CLI, engines registry) runs without ray: importing it never imports ray."""
    import subprocess
    import sys

    code = "import sys, batchal, batchal.cli, batchal.engines; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
