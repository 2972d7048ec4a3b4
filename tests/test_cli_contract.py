"""The command line's bad-input contract, as a table run against real processes.

Every case: exit code 2, exactly one line on stderr, starting ``error:`` and
naming the option or file at fault, no traceback, nothing on stdout and nothing
left in the case's output folder (not even a temporary). The table holds each
defect class of issue 12 and every bad input the README lists. Commands run
through ``cli_server.py`` (forked from one warm interpreter: a real process per
case at a fraction of the start-up cost); a few run the console script itself.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

HERE = Path(__file__).parent
N = 60


class Server:
    def __init__(self, root: Path):
        env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", COLUMNS="200")
        self.root = root
        self.proc = subprocess.Popen([sys.executable, str(HERE / "cli_server.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.count = 0

    def run(self, *argv, cwd=None, timeout=120):
        self.count += 1
        so, se = self.root / f"_log/{self.count}.out", self.root / f"_log/{self.count}.err"
        case = {"argv": [str(a) for a in argv], "cwd": str(cwd or self.root), "stdout": str(so),
                "stderr": str(se), "timeout": timeout}
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        return rc, so.read_text(), se.read_text()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _inputs(d: Path) -> None:
    """Small good inputs, and one bad file per defect class."""
    from batchal import AverageLinkage

    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(4), N).astype(np.float32)
    E = rng.normal(size=(N, 5)).astype(np.float32)
    np.save(d / "P.npy", P)
    np.save(d / "E.npy", E)
    np.save(d / "C.npy", rng.integers(0, 6, N))
    np.save(d / "L.npy", rng.choice(N, 5, replace=False))
    Z = AverageLinkage(mean_cluster_size=5).fit(E).linkage_
    np.save(d / "T.npy", Z)
    # README's list: NaN or inf, rows not summing to 1, wrong shapes, rows disagreeing, labeled out of range/repeated
    np.save(d / "P_nan.npy", np.where(np.arange(N)[:, None] == 2, np.nan, P))
    np.save(d / "P_inf.npy", np.where(np.arange(N)[:, None] == 2, np.inf, P))
    np.save(d / "P_sum.npy", P * 0.5)
    np.save(d / "P_1d.npy", P[:, 0])
    np.save(d / "E_short.npy", E[:10])
    np.save(d / "E_nan.npy", np.where(np.arange(N)[:, None] == 7, np.nan, E))
    np.save(d / "L_rep.npy", np.array([1, 1]))
    np.save(d / "L_oob.npy", np.array([1, 10_000]))
    # damaged files
    np.save(d / "trunc.npy", P)
    (d / "trunc.npy").write_bytes((d / "trunc.npy").read_bytes()[:300])
    (d / "text.npy").write_text("0.1,0.9\n0.5,0.5\n")
    np.save(d / "obj.npy", np.array([{"a": 1}] * N, dtype=object), allow_pickle=True)
    # silent acceptances of old: ragged Parquet rows, ids of the wrong length, trees with NaN or wild ids
    pq.write_table(pa.table({"e": pa.array([[1.0, 2.0, 3.0], [4.0]] * (N // 2))}), d / "ragged.parquet")
    np.save(d / "ids_long.npy", np.arange(N + 1))
    np.save(d / "ids_short.npy", np.arange(N - 1))
    Zn = Z.copy()
    Zn[5, 2] = np.nan
    np.save(d / "T_nan.npy", Zn)
    Zi = Z.copy()
    Zi[0, 0] = 7 * N
    np.save(d / "T_ids.npy", Zi)
    # simulate --data
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    np.savez(d / "d.npz", X=X, y=y)
    (d / "d_trunc.npz").write_bytes((d / "d.npz").read_bytes()[:500])
    (d / "d_text.npz").write_text("X,y\n1,2\n")
    np.save(d / "d_single.npy", X)
    np.savez(d / "d_objy.npz", X=X, y=np.array([object()] * 300, dtype=object))
    np.savez(d / "d_strX.npz", X=np.full((300, 4), "a"), y=y)
    np.savez(d / "d_onecls.npz", X=X, y=np.zeros(300, int))
    y1 = y.copy()
    y1[0] = 7
    np.savez(d / "d_onemember.npz", X=X, y=y1)
    np.savez(d / "d_ten.npz", X=X[:10], y=y[:10])
    np.savez(d / "d_empty.npz", X=np.zeros((0, 4)), y=np.zeros(0, int))
    np.savez(d / "d_nanX.npz", X=np.where(np.arange(300)[:, None] == 3, np.nan, X), y=y)
    np.savez(d / "d_absent.npz", X=X[:200], y=(X[:200, 0] > 0).astype(int), X_test=X[200:],
             y_test=(X[200:, 0] > 0).astype(int) + 2)
    # top-k predictions (issue 21): one file per defect of the layout, each at row 7
    from batchal import topk_predictions, topk_table

    tc, tp = topk_predictions(P, 3)
    np.savez(d / "TK.npz", top_classes=tc, top_probs=tp)
    pq.write_table(topk_table(None, tc, tp, n_classes=4), d / "TK.parquet")
    np.save(d / "S.npy", rng.uniform(size=N))
    np.save(d / "S_nan.npy", np.where(np.arange(N) == 7, np.nan, rng.uniform(size=N)))
    bad = {"vocab": (lambda c, p: c.__setitem__((7, 1), 9)), "dup": (lambda c, p: c.__setitem__((7, 1), c[7, 0])),
           "range": (lambda c, p: p.__setitem__((7, 2), -0.5)), "nan": (lambda c, p: p.__setitem__((7, 1), np.nan)),
           "unsorted": (lambda c, p: p.__setitem__(7, p[7, ::-1].copy()))}
    for tag, spoil in bad.items():
        c, p = tc.copy(), tp.copy()
        spoil(c, p)
        pq.write_table(topk_table(None, c, p, n_classes=4), d / f"TK_{tag}.parquet")
        np.savez(d / f"TK_{tag}.npz", top_classes=c, top_probs=p, n_classes=4)
    rows_c = [list(map(int, r)) for r in tc]
    rows_p = [list(map(float, r)) for r in tp]
    rows_c[7], rows_p[7] = rows_c[7][:2], rows_p[7][:2]
    pq.write_table(pa.table({"top_classes": pa.array(rows_c, pa.list_(pa.int32())),
                             "top_probs": pa.array(rows_p, pa.list_(pa.float32()))}), d / "TK_ragged.parquet")
    # balance share tables (issue 26)
    (d / "shares_sum.json").write_text('{"0": 0.5, "1": 0.4}')
    (d / "shares_unknown.json").write_text('{"0": 0.5, "9": 0.5}')
    # similar (issue 26): queries
    np.save(d / "Q.npy", E[:3] + 0.1)
    np.save(d / "Q_dim.npy", E[:3, :4])
    np.save(d / "Q_nan.npy", np.where(np.arange(3)[:, None] == 1, np.nan, E[:3]))
    # selection configs (issue 26)
    (d / "cfg_key.toml").write_text('strategy = "margin"\nbatch = 3\n')
    (d / "cfg_sum.toml").write_text('strategy = "margin"\nbalance = {"0" = 0.5, "1" = 0.4}\n')
    (d / "cfg_col.toml").write_text('strategy = "margin"\nmetadata = "meta.parquet"\n[filters]\nlang = "en"\n')
    pq.write_table(pa.table({"source": ["web"] * N}), d / "meta.parquet")
    # places that cannot take an output
    (d / "afile").write_text("not a directory")
    (d / "adir.npy").mkdir()
    (d / "adir").mkdir()


SEL = ("select", "-s", "margin", "-k", 5, "--probs", "P.npy")
CLU = ("cluster", "-e", "E.npy", "-q")
REC = ("recut", "--tree", "T.npy", "-q")
SIM = ("simulate", "--data", "d.npz", "--seed-size", 10, "--batch-size", 10, "--rounds", 2, "--trials", 1,
       "--jobs", 1, "-q")
SIMQ = ("similar", "-e", "E.npy", "--query", "Q.npy")
OUT_NPY = "{out}/b.npy"
OUT_SIM = "{out}/sim"

# (id, argv with {out} for the case's own output folder, what the error line must name)
CASES = [
    # --- the README's list of bad input (select) ---
    ("readme-nan", (*SEL[:-1], "P_nan.npy", "--out", OUT_NPY), ["--probs", "NaN"]),
    ("readme-inf", (*SEL[:-1], "P_inf.npy", "--out", OUT_NPY), ["--probs", "infinite"]),
    ("readme-sum", (*SEL[:-1], "P_sum.npy", "--out", OUT_NPY), ["--probs", "sum to 1"]),
    ("readme-shape", (*SEL[:-1], "P_1d.npy", "--out", OUT_NPY), ["--probs", "2-d"]),
    ("readme-disagree", ("select", "-s", "badge", "-k", 5, "--probs", "P.npy", "--embeddings", "E_short.npy",
                         "--out", OUT_NPY), ["--probs", "--embeddings"]),
    ("readme-labeled-oob", (*SEL, "--labeled", "L_oob.npy", "--out", OUT_NPY), ["--labeled", "out of range"]),
    ("readme-labeled-rep", (*SEL, "--labeled", "L_rep.npy", "--out", OUT_NPY), ["--labeled", "repeated"]),
    ("readme-batch-too-large", ("select", "-s", "margin", "-k", 1000, "--probs", "P.npy", "--out", OUT_NPY),
     ["--batch-size", "unlabeled pool"]),
    ("readme-unknown-strategy", ("select", "-s", "nope", "-k", 5, "--probs", "P.npy", "--out", OUT_NPY),
     ["--strategy", "nope"]),
    ("readme-missing-input", (*SEL[:-1], "missing.npy", "--out", OUT_NPY), ["--probs", "missing.npy"]),
    ("readme-missing-option", SEL, ["--out"]),
    # --- select: what a strategy needs, option values, outputs, damaged files ---
    ("needs-clusters", ("select", "-s", "cluster-margin", "-k", 5, "--probs", "P.npy", "--out", OUT_NPY),
     ["--clusters", "batchal cluster"]),
    ("needs-embeddings", ("select", "-s", "coreset", "-k", 5, "--probs", "P.npy", "--out", OUT_NPY), ["--embeddings"]),
    ("empty-pool", ("select", "-s", "random", "-k", 5, "--out", OUT_NPY), ["--probs"]),
    ("probs-and-logits", (*SEL, "--logits", "P.npy", "--out", OUT_NPY), ["--probs", "--logits"]),
    ("select-seed-negative", (*SEL, "--seed", -1, "--out", OUT_NPY), ["--seed"]),
    ("select-k-zero", ("select", "-s", "margin", "-k", 0, "--probs", "P.npy", "--out", OUT_NPY), ["--batch-size"]),
    ("margin-factor-nan", ("select", "-s", "cluster-margin", "-k", 5, "--probs", "P.npy", "--clusters", "C.npy",
                           "--margin-factor", "nan", "--out", OUT_NPY), ["--margin-factor"]),
    ("share-zero", (*SEL, "--max-candidate-share", 0, "--out", OUT_NPY), ["--max-candidate-share"]),
    ("aggregate-bad", (*SEL, "--aggregate", "max", "--out", OUT_NPY), ["--aggregate"]),
    ("unknown-option", (*SEL, "--bogus", "--out", OUT_NPY), ["--bogus"]),
    ("ids-longer", (*SEL, "--ids", "ids_long.npy", "--out", OUT_NPY), ["--ids", f"{N + 1}"]),
    ("ids-shorter", (*SEL, "--ids", "ids_short.npy", "--out", OUT_NPY), ["--ids", f"{N - 1}"]),
    ("ragged-parquet-select", ("select", "-s", "coreset", "-k", 5, "--embeddings", "ragged.parquet",
                               "--out", OUT_NPY), ["--embeddings", "ragged.parquet", "unequal"]),
    ("npy-truncated", (*SEL[:-1], "trunc.npy", "--out", OUT_NPY), ["--probs", "trunc.npy", "truncated"]),
    ("npy-text", (*SEL[:-1], "text.npy", "--out", OUT_NPY), ["--probs", "text.npy"]),
    ("npy-objects", (*SEL[:-1], "obj.npy", "--out", OUT_NPY), ["--probs", "obj.npy"]),
    ("input-is-dir", (*SEL[:-1], "adir.npy", "--out", OUT_NPY), ["--probs", "adir.npy", "directory"]),
    ("select-out-suffix", (*SEL, "--out", "{out}/b.txt"), ["--out"]),
    ("select-out-in-file", (*SEL, "--out", "afile/b.npy"), ["--out", "afile"]),
    ("select-out-is-dir", (*SEL, "--out", "adir.npy"), ["--out", "adir.npy"]),
    ("select-out-proc", (*SEL, "--out", "/proc/b.npy"), ["--out", "/proc"]),
    # --- top-k predictions and precomputed scores (issue 21): the file and the first offending row ---
    *[(f"topk-{tag}-{ext}", ("select", "-s", "cluster-margin:order=margin:tol=0.1", "-k", 5, "--probs",
                             f"TK_{tag}.{ext}", "--clusters", "C.npy", "--out", OUT_NPY),
       ["--probs", f"TK_{tag}.{ext}", "row 7", *extra])
      for tag, extra in [("vocab", ["class id 9", "vocabulary of 4"]), ("dup", ["repeats a class id"]),
                         ("range", ["outside [0, 1]"]), ("nan", ["NaN"]), ("unsorted", ["not sorted"])]
      for ext in ("parquet", "npz")],
    ("topk-ragged", ("select", "-s", "margin", "-k", 5, "--probs", "TK_ragged.parquet", "--out", OUT_NPY),
     ["--probs", "TK_ragged.parquet", "k varies", "row 7"]),
    ("topk-vocab-option", ("select", "-s", "margin", "-k", 5, "--probs", "TK.parquet", "--n-classes", 3,
                           "--out", OUT_NPY), ["--probs", "TK.parquet", "vocabulary of 3"]),
    ("topk-entropy", ("select", "-s", "entropy", "-k", 5, "--probs", "TK.npz", "--out", OUT_NPY),
     ["--probs", "TK.npz", "entropy"]),
    ("topk-badge", ("select", "-s", "badge", "-k", 5, "--probs", "TK.parquet", "--embeddings", "E.npy",
                    "--out", OUT_NPY), ["badge", "top-k"]),
    ("topk-mean", ("select", "-s", "margin", "-k", 5, "--probs", "TK.parquet", "--multilabel", "--aggregate", "mean",
                   "--out", OUT_NPY), ["--probs", "TK.parquet", "mean"]),
    ("n-classes-dense", (*SEL, "--n-classes", 4, "--out", OUT_NPY), ["--n-classes", "P.npy"]),
    ("scores-nan", ("select", "-s", "margin", "-k", 5, "--scores", "S_nan.npy", "--out", OUT_NPY),
     ["--scores", "NaN", "row 7"]),
    ("scores-and-probs", ("select", "-s", "margin", "-k", 5, "--scores", "S.npy", "--probs", "P.npy",
                          "--out", OUT_NPY), ["--scores", "--probs"]),
    ("scores-2d", ("select", "-s", "margin", "-k", 5, "--scores", "P.npy", "--out", OUT_NPY), ["--scores", "shape"]),
    ("scores-tol", ("select", "-s", "cluster-margin:order=margin:tol=0.1", "-k", 5, "--scores", "S.npy",
                    "--clusters", "C.npy", "--out", OUT_NPY), ["tol", "scores"]),
    ("scores-ray", ("select", "-s", "margin", "-k", 5, "--scores", "S.npy", "--engine", "ray", "--out", OUT_NPY),
     ["--scores", "--engine local"]),
    # --- balance (issue 26) ---
    ("balance-unknown-value", ("select", "-s", "margin:balance=sideways", "-k", 5, "--probs", "P.npy",
                               "--out", OUT_NPY), ["--strategy", "balance", "sideways"]),
    ("balance-shares-sum", ("select", "-s", "cluster-margin:balance=shares_sum.json", "-k", 5, "--probs", "P.npy",
                            "--clusters", "C.npy", "--out", OUT_NPY), ["--strategy", "shares_sum.json", "sum to 1"]),
    ("balance-unknown-class", ("select", "-s", "margin:balance=shares_unknown.json", "-k", 5, "--probs", "P.npy",
                               "--out", OUT_NPY), ["balance", "class 9", "4 classes"]),
    ("balance-missing-file", ("select", "-s", "margin:balance=nope.json", "-k", 5, "--probs", "P.npy",
                              "--out", OUT_NPY), ["--strategy", "nope.json"]),
    ("balance-random", ("select", "-s", "random:balance=uniform", "-k", 5, "--probs", "P.npy", "--out", OUT_NPY),
     ["--strategy", "random", "balance"]),
    ("balance-coreset", ("select", "-s", "coreset:balance=input", "-k", 5, "--embeddings", "E.npy",
                         "--out", OUT_NPY), ["--strategy", "coreset", "balance"]),
    ("balance-scores", ("select", "-s", "margin:balance=uniform", "-k", 5, "--scores", "S.npy", "--out", OUT_NPY),
     ["balance", "scores"]),
    ("balance-by-ray", ("select", "-s", "margin:balance_by=source", "-k", 5, "--probs", "P.npy", "--engine", "ray",
                        "--out", OUT_NPY), ["balance_by", "--engine local"]),
    # --- dedup (issue 26) ---
    ("dedup-threshold-negative", ("dedup", "-e", "E.npy", "--threshold", -1, "--out", "{out}/g.parquet"),
     ["--threshold"]),
    ("dedup-metric", ("dedup", "-e", "E.npy", "--threshold", 0.1, "--metric", "l1", "--out", "{out}/g.parquet"),
     ["--metric"]),
    ("dedup-out-suffix", ("dedup", "-e", "E.npy", "--threshold", 0.1, "--out", "{out}/g.npy"), ["--out"]),
    ("dedup-nan", ("dedup", "-e", "E_nan.npy", "--threshold", 0.1, "--out", "{out}/g.parquet"),
     ["--embeddings", "NaN"]),
    ("balance-by-column-missing", ("select", "-s", "margin:balance_by=lang", "--metadata", "meta.parquet", "-k", 5,
                                   "--probs", "P.npy", "--out", OUT_NPY), ["balance_by=lang", "no column 'lang'"]),
    ("balance-by-no-metadata", ("select", "-s", "margin:balance_by=source", "-k", 5, "--probs", "P.npy",
                                "--out", OUT_NPY), ["balance_by=source", "--metadata"]),
    ("balance-by-metadata-missing", ("select", "-s", "margin:balance_by=source", "--metadata", "nope.parquet",
                                     "-k", 5, "--probs", "P.npy", "--out", OUT_NPY), ["--metadata", "nope.parquet"]),
    # --- select --config (issue 26) ---
    ("config-unknown-key", ("select", "--config", "cfg_key.toml", "-k", 5, "--probs", "P.npy", "--out", OUT_NPY),
     ["--config", "cfg_key.toml", "batch", "unknown key"]),
    ("config-shares-sum", ("select", "--config", "cfg_sum.toml", "-k", 5, "--probs", "P.npy", "--out", OUT_NPY),
     ["--config", "cfg_sum.toml", "balance", "sum to 1"]),
    ("config-column-missing", ("select", "--config", "cfg_col.toml", "-k", 5, "--probs", "P.npy", "--out", OUT_NPY),
     ["--config", "cfg_col.toml", "filters.lang", "no column 'lang'"]),
    ("config-and-strategy", ("select", "--config", "cfg_col.toml", "-s", "entropy", "-k", 5, "--probs", "P.npy",
                             "--out", OUT_NPY), ["--strategy", "cfg_col.toml"]),
    ("config-missing", ("select", "--config", "nope.toml", "-k", 5, "--probs", "P.npy", "--out", OUT_NPY),
     ["--config", "nope.toml"]),
    ("select-no-strategy", ("select", "-k", 5, "--probs", "P.npy", "--out", OUT_NPY), ["--strategy"]),
    # --- similar (issue 26) ---
    ("similar-query-dim", (*SIMQ[:-1], "Q_dim.npy", "-k", 5, "--out", OUT_NPY), ["--query", "dimension 4", "5"]),
    ("similar-k-too-large", (*SIMQ, "-k", 56, "--labeled", "L.npy", "--out", OUT_NPY), ["-k", "55"]),
    ("similar-query-nan", (*SIMQ[:-1], "Q_nan.npy", "-k", 5, "--out", OUT_NPY), ["--query", "NaN", "row 1"]),
    ("similar-embeddings-nan", ("similar", "-e", "E_nan.npy", "--query", "Q.npy", "-k", 5, "--out", OUT_NPY),
     ["--embeddings", "NaN", "row 7"]),
    ("similar-no-query", ("similar", "-e", "E.npy", "-k", 5, "--out", OUT_NPY), ["--query", "--query-rows"]),
    ("similar-probs-rows", (*SIMQ, "-k", 5, "--probs", "P_1d.npy", "--out", OUT_NPY), ["--probs"]),
    ("similar-out-suffix", (*SIMQ, "-k", 5, "--out", "{out}/rows.txt"), ["--out"]),
    # --- cluster ---
    ("cluster-out-in-file", (*CLU, "--out", "afile/C.npy"), ["--out", "afile"]),
    ("cluster-out-is-dir", (*CLU, "--out", "adir.npy"), ["--out", "adir.npy"]),
    ("cluster-out-proc", (*CLU, "--out", "/proc/C.npy"), ["--out", "/proc"]),
    ("save-tree-is-dir", (*CLU, "--save-tree", "adir.npy", "--out", "{out}/C.npy"), ["--save-tree", "adir.npy"]),
    ("save-tree-in-file", (*CLU, "--save-tree", "afile/T.npy", "--out", "{out}/C.npy"), ["--save-tree", "afile"]),
    ("save-tree-suffix", (*CLU, "--save-tree", "{out}/T.csv", "--out", "{out}/C.npy"), ["--save-tree"]),
    ("cluster-size-nan", (*CLU, "--mean-cluster-size", "nan", "--out", "{out}/C.npy"), ["--mean-cluster-size"]),
    ("cluster-size-zero", (*CLU, "--mean-cluster-size", 0, "--out", "{out}/C.npy"), ["--mean-cluster-size"]),
    ("cluster-threshold-negative", (*CLU, "--threshold", -1, "--out", "{out}/C.npy"), ["--threshold"]),
    ("cluster-threshold-inf", (*CLU, "--threshold", "inf", "--out", "{out}/C.npy"), ["--threshold"]),
    ("cluster-two-cuts", (*CLU, "--threshold", 1, "--mean-cluster-size", 5, "--out", "{out}/C.npy"),
     ["--threshold", "--mean-cluster-size"]),
    ("cluster-knn-zero", (*CLU, "--knn", 0, "--out", "{out}/C.npy"), ["--knn"]),
    ("cluster-seed-negative", (*CLU, "--seed", -1, "--out", "{out}/C.npy"), ["--seed"]),
    ("cluster-nan", ("cluster", "-e", "E_nan.npy", "--out", "{out}/C.npy"), ["--embeddings", "NaN"]),
    ("ragged-parquet-cluster", ("cluster", "-e", "ragged.parquet", "--out", "{out}/C.npy"),
     ["--embeddings", "ragged.parquet"]),
    # --- recut ---
    ("recut-size-zero", (*REC, "--mean-cluster-size", 0, "--out", "{out}/C.npy"), ["--mean-cluster-size"]),
    ("recut-tree-is-dir", ("recut", "--tree", "adir", "--out", "{out}/C.npy"), ["--tree", "adir"]),
    ("recut-tree-nan", ("recut", "--tree", "T_nan.npy", "--mean-cluster-size", 3, "--out", "{out}/C.npy"),
     ["--tree", "T_nan.npy", "NaN"]),
    ("recut-tree-ids", ("recut", "--tree", "T_ids.npy", "--out", "{out}/C.npy"), ["--tree", "T_ids.npy"]),
    ("recut-tree-truncated", ("recut", "--tree", "trunc.npy", "--out", "{out}/C.npy"), ["--tree", "trunc.npy"]),
    ("recut-tree-text", ("recut", "--tree", "text.npy", "--out", "{out}/C.npy"), ["--tree", "text.npy"]),
    ("recut-tree-objects", ("recut", "--tree", "obj.npy", "--out", "{out}/C.npy"), ["--tree", "obj.npy"]),
    ("recut-tree-not-a-tree", ("recut", "--tree", "P.npy", "--out", "{out}/C.npy"), ["--tree", "P.npy"]),
    ("recut-tree-missing", ("recut", "--tree", "nope.npy", "--out", "{out}/C.npy"), ["--tree", "nope.npy"]),
    ("recut-out-in-file", (*REC, "--out", "afile/C.npy"), ["--out", "afile"]),
    # --- simulate ---
    ("simulate-seed-negative", (*SIM, "--seed", -1, "--out", OUT_SIM), ["--seed"]),
    ("simulate-out-in-file", (*SIM, "--out", "afile/sim"), ["--out", "afile"]),
    ("simulate-out-is-file", (*SIM, "--out", "afile"), ["--out", "afile"]),
    ("simulate-out-proc", (*SIM, "--out", "/proc/sim"), ["--out", "/proc"]),
    ("simulate-too-many-labels", (*SIM, "--rounds", 50, "--out", OUT_SIM), ["--rounds", "--batch-size"]),
    ("simulate-model", (*SIM, "--model", "svm", "--out", OUT_SIM), ["--model"]),
    ("simulate-trials-zero", (*SIM, "--trials", 0, "--out", OUT_SIM), ["--trials"]),
    ("simulate-target-nan", (*SIM, "--target", "nan", "--out", OUT_SIM), ["--target"]),
    ("simulate-data-and-dataset", (*SIM, "--dataset", "digits", "--out", OUT_SIM), ["--data", "--dataset"]),
    ("simulate-size-too-small", ("simulate", "--dataset", "blobs", "--size", 5, "--out", OUT_SIM, "-q"), ["--size"]),
    *[(f"data-{tag}", ("simulate", "--data", f, *SIM[3:], "--out", OUT_SIM), ["--data", *extra])
      for tag, f, extra in [
          ("truncated", "d_trunc.npz", ["d_trunc.npz"]), ("text", "d_text.npz", ["d_text.npz"]),
          ("npy", "d_single.npy", ["d_single.npy"]), ("object-labels", "d_objy.npz", ["d_objy.npz"]),
          ("text-X", "d_strX.npz", ["X"]), ("one-class", "d_onecls.npz", ["single class"]),
          ("class-of-one", "d_onemember.npz", ["single example"]), ("ten-rows", "d_ten.npz", []),
          ("empty", "d_empty.npz", ["empty"]), ("nan-X", "d_nanX.npz", ["NaN"]),
          ("test-classes-absent", "d_absent.npz", ["y_test"]), ("missing", "nope.npz", ["nope.npz"]),
          ("directory", "adir", ["adir"])]],
    # --- campaign --engine / --ray-address: refused before a Ray instance is started ---
    ("campaign-select-engine-bad", ("campaign", "select", "{out}/c", "-k", 5, "--engine", "spark"), ["--engine"]),
    ("campaign-cluster-engine-bad", ("campaign", "cluster", "{out}/c", "--engine", "spark"), ["--engine"]),
    ("campaign-select-ray-not-a-campaign", ("campaign", "select", "{out}/c", "-k", 5, "--engine", "ray"),
     ["not a campaign"]),
    ("campaign-cluster-ray-not-a-campaign", ("campaign", "cluster", "{out}/c", "--engine", "ray"),
     ["not a campaign"]),
    # --- campaign metric / report (issue 22): an unknown campaign directory, a report that is not .html ---
    ("campaign-metric-not-a-campaign", ("campaign", "metric", "{out}/c", "--round", 1, "--name", "val_acc",
                                        "--value", 0.5), ["not a campaign"]),
    ("campaign-metric-half-given", ("campaign", "metric", "{out}/c", "--round", 1, "--name", "val_acc"), ["--value"]),
    ("campaign-report-not-a-campaign", ("campaign", "report", "{out}/c", "--out", "{out}/r.html"), ["not a campaign"]),
    ("campaign-report-not-html", ("campaign", "report", "{out}/c", "--out", "{out}/r.png"), ["--out", "r.png"]),
    # --- demo ---
    ("demo-out-in-file", ("demo", "--out", "afile/demo", "-q"), ["--out", "afile"]),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "_log").mkdir()
    _inputs(root)
    s = Server(root)
    yield s
    s.close()


def _listing(d: Path) -> set:
    return {p.name for p in d.iterdir()}


@pytest.mark.parametrize("case_id, argv, names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_nothing_written(server, case_id, argv, names):
    root = server.root
    out = root / "out" / case_id
    out.mkdir(parents=True)
    before = _listing(root)
    rc, stdout, stderr = server.run(*[str(a).format(out=out) for a in argv])
    lines = stderr.splitlines()
    assert "Traceback" not in stderr, stderr
    assert rc == 2, (rc, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert stdout == ""
    assert list(out.iterdir()) == [], "an output was left behind"
    assert _listing(root) == before  # nothing beside the inputs either (temporaries included)
    assert (root / "afile").read_text() == "not a directory" and list((root / "adir.npy").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory(server):
    ro = server.root / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for argv in ((*SEL, "--out", ro / "b.npy"), (*CLU, "--out", ro / "C.npy"), (*SIM, "--out", ro / "sim")):
            rc, _, stderr = server.run(*argv)
            assert rc == 2 and stderr.startswith("error: --out") and "Permission denied" in stderr, stderr
    finally:
        ro.chmod(0o755)


def test_the_console_script_behaves_the_same(server, tmp_path):
    """The table runs forked children of one interpreter; the installed ``batchal`` must agree."""
    exe = shutil.which("batchal")
    if exe is None:
        pytest.skip("the batchal console script is not on PATH")
    for argv in ((*SEL, "--seed", -1, "--out", tmp_path / "b.npy"), (*CLU, "--out", "afile/C.npy")):
        p = subprocess.run([exe, *map(str, argv)], cwd=server.root, capture_output=True, text=True)
        rc, stdout, stderr = server.run(*argv)
        assert (p.returncode, p.stdout, p.stderr) == (rc, stdout, stderr)
        assert rc == 2 and len(stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_batchal_reads_its_own_csv_outputs(server):
    d = server.root / "out" / "csv-round-trip"
    d.mkdir(parents=True)
    assert server.run("cluster", "-e", "E.npy", "--out", d / "C.csv", "-q")[0] == 0
    assert (d / "C.csv").read_text().startswith("cluster\n")
    rc, _, err = server.run("select", "-s", "cluster-margin", "-k", 5, "--probs", "P.npy", "--clusters", d / "C.csv",
                            "--out", d / "b1.csv", "-q")
    assert rc == 0, err
    rc, _, err = server.run("select", "-s", "margin", "-k", 5, "--probs", "P.npy", "--labeled", d / "b1.csv",
                            "--out", d / "b2.npy", "-q")
    assert rc == 0, err
    first = [int(x.split(",")[0]) for x in (d / "b1.csv").read_text().splitlines()[1:]]
    assert not set(first) & set(np.load(d / "b2.npy").tolist())  # the first batch counted as labeled


def test_unread_nan_input_warns_but_selects(server):
    d = server.root / "out" / "unread-nan"
    d.mkdir(parents=True)
    rc, _, err = server.run("select", "-s", "random", "-k", 5, "--probs", "P_nan.npy", "--out", d / "b.npy")
    assert rc == 0, err
    assert err.startswith("warning: --probs contains NaN (first at row 2)") and "'random' does not read it" in err
    assert np.load(d / "b.npy").shape == (5,)


def test_select_reports_seed_and_k_m(server):
    d = server.root / "out" / "report-km"
    d.mkdir(parents=True)
    rc, _, err = server.run("select", "-s", "cluster-margin", "-k", 5, "--probs", "P.npy", "--clusters", "C.npy",
                            "--out", d / "b.npy")
    assert rc == 0, err
    assert "seed 0" in err and "k_m = 10 low-margin candidates in" in err


def test_string_labels_simulate(server):
    d = server.root / "out" / "string-labels"
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    y = np.array(["ant", "bee"])[(X[:, 0] > 0).astype(int)]
    np.savez(server.root / "d_str.npz", X=X, y=y)
    rc, _, err = server.run("simulate", "--data", "d_str.npz", *SIM[3:], "--strategies", "margin,random",
                            "--out", d, timeout=300)
    assert rc == 0, err
    assert json.loads((d / "run.json").read_text())["class_names"] == ["ant", "bee"]


def test_a_killed_command_leaves_no_temporary_once_the_next_has_run(server):
    d = server.root / "out" / "killed"
    d.mkdir(parents=True)
    code = ("import time, numpy as np; from batchal.io import atomic_write\n"
            "def w(t):\n    np.save(t, np.arange(10)); print('writing', flush=True); time.sleep(60)\n"
            f"atomic_write({str(d / 'b.npy')!r}, w)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(d.iterdir())) == 1  # the killed writer's temporary
    rc, _, err = server.run(*SEL, "--out", d / "b.npy", "-q")
    assert rc == 0, err
    assert _listing(d) == {"b.npy"}
    assert os.stat(d / "b.npy").st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_help_has_no_bool_placeholders_and_every_option_is_described(server):
    for cmd in ("select", "cluster", "recut", "simulate", "demo"):
        rc, out, _ = server.run(cmd, "--help")
        assert rc == 0 and "<bool>" not in out, cmd
    for cmd in ("init", "cluster", "select", "label", "export", "labels", "status", "add", "check"):
        rc, out, _ = server.run("campaign", cmd, "--help")
        assert rc == 0 and "<bool>" not in out, ("campaign", cmd)
    for cmd in (("select",), ("cluster",), ("campaign", "select"), ("campaign", "cluster")):
        rc, out, _ = server.run(*cmd, "--help")  # every engine option names the extra that brings Ray
        assert rc == 0, cmd
        for opt, words in (("--engine", 'pip install "batchal[ray]"'), ("--engine", "local: this process"),
                           ("--ray-address", "Ray cluster to join")):
            line = next(x for x in out.splitlines() if opt + " " in x)
            assert words in line, (cmd, line)
    rc, out, _ = server.run("simulate", "--help")
    for opt in ("--seed-size", "--rounds", "--trials", "--margin-factor", "--knn", "--badge-partitions", "--seed",
                "--quiet"):
        line = next(x for x in out.splitlines() if opt + " " in x)
        assert len(line.split(opt, 1)[1].strip(" │")) > 25, line  # more than a type and a default


def test_cluster_and_recut_report_once_and_say_where(server):
    d = server.root / "out" / "cluster-report"
    d.mkdir(parents=True)
    rc, out, err = server.run("cluster", "-e", "E.npy", "--method", "graph", "--knn", 10, "--save-tree", d / "T.npy",
                              "--out", d / "C.npy")
    assert rc == 0, err
    both = out + err
    assert both.count("method: graph") == 1 and "seed 0" in err
    assert f"report: {d / 'C.report.json'}" in out and f"size histogram: {d / 'C.sizes.png'}" in out
    rc, out, err = server.run("recut", "--tree", d / "T.npy", "--mean-cluster-size", 20, "--out", d / "C20.npy")
    assert rc == 0, err
    assert "metric None" not in out and "in the tree's metric" in out
    rc, _, err = server.run("recut", "--tree", d / "T.npy", "--out", d / "C30.npy", "--no-report", "-q")
    assert rc == 0 and not (d / "C30.report.json").exists() and not (d / "C30.sizes.png").exists()


def test_strategies_prints_plain_text(server):
    rc, out, _ = server.run("strategies")
    assert rc == 0 and "``" not in out and ":func:" not in out
    assert "margin: The k unlabeled rows with the smallest margin" in out


def test_campaign_metric_bad_input_is_refused_and_changes_nothing(server, tmp_path):
    """A metric for a missing round, a NaN or infinite value, a bad CSV: exit 2, one error line, nothing recorded."""
    from batchal.campaign import Campaign

    sys.path.insert(0, str(HERE))
    from campaign_util import make_pool, make_predictions

    ids, _ = make_pool(tmp_path / "pool.parquet", n=200)
    make_predictions(tmp_path / "p.parquet", ids)
    c = tmp_path / "c"
    for argv in (("campaign", "init", c, "--pool", tmp_path / "pool.parquet"),
                 ("campaign", "select", c, "-k", 10, "--predictions", tmp_path / "p.parquet", "--strategy", "margin",
                  "--seed", 0, "-q"),
                 ("campaign", "metric", c, "--round", 1, "--name", "val_acc", "--value", 0.61)):
        rc, _, stderr = server.run(*argv)
        assert rc == 0, stderr
    (tmp_path / "bad.csv").write_text("round,name,value\n1,val_acc,0.7\n2,val_acc,0.8\n")
    (tmp_path / "nan.csv").write_text("round,name,value\n1,loss,nan\n")
    (tmp_path / "text.csv").write_text("round,name,value\n1,loss,low\n")
    (tmp_path / "cols.csv").write_text("r,n,v\n1,loss,1\n")

    def state():
        with Campaign(c) as cc:
            return cc.metrics(), cc._store.conn.execute("SELECT count(*) FROM history").fetchone()[0]

    before = state()
    assert before[0] == {1: {"val_acc": 0.61}}
    for argv, names in [
        (("--round", 2, "--name", "val_acc", "--value", 0.7), ["no round 2", "rounds: 1"]),
        (("--round", 1, "--name", "val_acc", "--value", "nan"), ["finite", "nan"]),
        (("--round", 1, "--name", "val_acc", "--value", "inf"), ["finite", "inf"]),
        (("--round", 1, "--name", " ", "--value", 1), ["name"]),
        (("--csv", tmp_path / "bad.csv"), ["no round 2"]),  # the valid row 1 is not recorded either
        (("--csv", tmp_path / "nan.csv"), ["finite"]),
        (("--csv", tmp_path / "text.csv"), ["line 2", "'low'"]),
        (("--csv", tmp_path / "cols.csv"), ["round,name,value"]),
        (("--csv", tmp_path / "none.csv"), ["no such file"]),
        (("--csv", tmp_path / "bad.csv", "--round", 1), ["not both"]),
    ]:
        rc, stdout, stderr = server.run("campaign", "metric", c, *argv)
        lines = stderr.splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and stdout == "", (argv, stderr)
        for name in names:
            assert name in lines[0], (name, lines[0])
        assert state() == before, argv
    rc, stdout, _ = server.run("campaign", "status", c, "--json")
    s = json.loads(stdout)
    assert s["rounds"][0]["metrics"] == {"val_acc": 0.61} and s["stop_advice"] is None
    assert set(s["rounds"][0]["stop"]) >= {"kappa", "changed", "uncertainty"} and s["rounds"][0]["stop"]["kappa"] is None
