#!/usr/bin/env python
"""Class balance on long-tailed pools: the recommended spec with and without ``balance``, per round.

Each configuration replays the same seed sets for random, margin, the recommended
spec and the recommended spec with ``balance=uniform`` and ``balance=input``, and
prints per round the mean over trials of accuracy, balanced accuracy and the
recall of the five rarest classes (``batchal.simulate.evaluate``), with each
balanced spec's difference to the unbalanced one in standard errors of the
paired trials. A balanced pool is included: balance may become the default only
if it costs at most 0.5 points of accuracy there too.

Usage::

    python benchmarks/bench_balance.py --configs manyclass-lt-mlp-b01 manyclass-lt-mlp-b03
    python benchmarks/bench_balance.py --configs manyclass-lt-mlp-b03 --training early-stop --tag early-stop
    python benchmarks/bench_balance.py --table      # markdown from benchmarks/results/balance/

``--training`` is the simulator's MLP training rule (default: the simulator's own);
``--tag`` keeps a run under another rule beside the recorded one.

Pools are generated locally and cached (``$BATCHAL_CACHE``), never committed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "balance"


def specs() -> list[str]:
    from batchal.selectors import RECOMMENDED

    return ["random", "margin", RECOMMENDED, f"{RECOMMENDED}:balance=uniform", f"{RECOMMENDED}:balance=input"]


#: name -> (dataset, size before the tail, tail exponent or None, model, batch share, trials)
CONFIGS = {
    "manyclass-lt-mlp-b01": ("manyclass", 400_000, 1.0, "mlp", 0.01, 3),
    "manyclass-lt-mlp-b03": ("manyclass", 400_000, 1.0, "mlp", 0.03, 3),
    "manyclass-lt-logreg-b03": ("manyclass", 400_000, 1.0, "logreg", 0.03, 3),
    "manyclass-mlp-b03": ("manyclass", 50_000, None, "mlp", 0.03, 3),
    "mnist1d-lt-mlp-b03": ("mnist1d", 100_000, 1.0, "mlp", 0.03, 3),
}


def _dataset(name: str, size: int, tail: float | None):
    from batchal.simulate import load_dataset
    from batchal.simulate.pools import long_tail

    ds = load_dataset(name, size=size)
    return long_tail(ds, a=tail, seed=0) if tail else ds


def run(name: str, jobs: int | None, training: str | None = None, tag: str | None = None) -> dict:
    from batchal.simulate import SimulationConfig, simulate
    from batchal.simulate.report import _sem

    dname, size, tail, model, share, trials = CONFIGS[name]
    ds = _dataset(dname, size, tail)
    n = ds.X.shape[0]
    b = max(10, round(share * n))
    S = specs()
    cfg = SimulationConfig(strategies=S, seed_size=b, batch_size=b, rounds=6, trials=trials, model=model,
                           progress=False, n_jobs=jobs, **({} if training is None else {"training": training}))
    t0 = time.perf_counter()
    res = simulate(ds, cfg)
    wall = time.perf_counter() - t0
    counts = np.bincount(np.asarray(ds.y), minlength=ds.n_classes)
    metrics = ("accuracy", "balanced_accuracy", "rare_recall")
    per = {}
    for s in S:
        rs = [r for r in res.rows if r["strategy"] == s]
        rounds = sorted({r["round"] for r in rs})
        per[s] = {m: [[r[m] for r in sorted((x for x in rs if x["round"] == k), key=lambda x: x["trial"])]
                      for k in rounds] for m in metrics}
        per[s]["labels"] = [next(r["n_labeled"] for r in rs if r["round"] == k) for k in rounds]
    out = {"config": name + (f"-{tag}" if tag else ""), "training": cfg.training if model == "mlp" else None, "rows": n, "classes": ds.n_classes, "largest_class": int(counts.max()),
           "smallest_class": int(counts[counts > 0].min()), "model": model, "batch": b, "trials": trials,
           "full_metric": res.full_score, "curves": per, "wall_s": wall}
    base = S[2]
    out["vs_unbalanced"] = {}
    for s in S[3:]:
        d = {}
        for m in metrics:
            diff = np.asarray(per[s][m], float) - np.asarray(per[base][m], float)
            d[m] = [[float(x.mean()), float(_sem(x))] for x in diff]
        out["vs_unbalanced"][s] = d
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out['config']}.json").write_text(json.dumps(out, indent=1))
    return out


def table() -> str:
    lines = []
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        S = list(r["curves"])
        lines.append(f"\n**{r['config']}**: {r['rows']:,} rows, {r['classes']} classes (largest {r['largest_class']:,}, "
                     f"smallest {r['smallest_class']:,}), {r['model']}"
                     f"{'' if not r.get('training') else ' (' + r['training'] + ' training)'}, batches of {r['batch']:,}, {r['trials']} trials; "
                     f"whole pool {r['full_metric']:.3f}; {r['wall_s'] / 60:.1f} min\n")
        lines.append("| labels | " + " | ".join(f"`{s}` acc / bal. acc / rare recall" for s in S) + " |")
        lines.append("|---:|" + "---|" * len(S))
        for i, L in enumerate(r["curves"][S[0]]["labels"]):
            cells = []
            for s in S:
                c = r["curves"][s]
                cells.append(" / ".join(f"{np.mean(c[m][i]):.3f}" for m in ("accuracy", "balanced_accuracy", "rare_recall")))
            lines.append(f"| {L:,} | " + " | ".join(cells) + " |")
        for s, d in r["vs_unbalanced"].items():
            worst = min(x[0] for x in d["accuracy"][1:])
            gain = np.mean([x[0] for x in d["balanced_accuracy"][1:]])
            rare = np.mean([x[0] for x in d["rare_recall"][1:]])
            lines.append(f"\n`{s}` minus unbalanced, rounds 1-6: accuracy worst {100 * worst:+.1f} points, balanced "
                         f"accuracy mean {100 * gain:+.1f}, rare recall mean {100 * rare:+.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="*", default=[])
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--table", action="store_true")
    from batchal.simulate.models import TRAINING

    ap.add_argument("--training", choices=TRAINING, default=None,
                    help="the MLP's training rule (default: the simulator's)")
    ap.add_argument("--tag", default=None, help="suffix of the result's name (e.g. the training rule)")
    a = ap.parse_args(argv)
    for name in a.configs:
        if name not in CONFIGS:
            print(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}", file=sys.stderr)
            return 2
        r = run(name, a.jobs, a.training, a.tag)
        print(f"{name}: done in {r['wall_s']:.0f} s", flush=True)
    if a.table or not a.configs:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
