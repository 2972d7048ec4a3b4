"""How much a label-savings verdict depends on the test split drawn: a bootstrap over test rows.

Every ratio in the scale table is measured on one test split. The trials' spread
(seed sets, selector seeds) says nothing about the test sample: a verdict read on a
plateau can hinge on a few test images. This replays one configuration of
``bench_scale.py`` exactly (the simulator's own ``run_one``, same seeds, so the
accuracies equal the recorded ones, which it checks), keeps which test rows each
(strategy, trial, round) model gets right, and resamples the test rows with
replacement: each replicate recomputes every curve (the same resampled rows for
every strategy and trial, so the comparison stays paired), random's final metric
(the target) and each spec's labels to reach it as a ratio to margin's, exactly as
the scale table does (:func:`batchal.simulate.report.ratio_to_margin`).

Usage::

    python benchmarks/bench_test_bootstrap.py --pool fmnist-web-lt --batch 30000 --whiten \\
        --specs random,margin,recommended
    python benchmarks/bench_test_bootstrap.py --pool fmnist-web-lt --batch 10000 --whiten --propagate 0.01
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale as BS  # noqa: E402  (the recorded results, their names and reader)


def replay(pool: str, batch: int, specs: list[str], trials: int, rounds: int, seed_size: int, whiten: bool,
           threads: int | None = 1, propagate: float | None = None):
    """Per (strategy, trial, round): the boolean vector of test rows predicted right, and the labels."""
    from batchal.selectors.spec import parse_spec
    from batchal.simulate import SimulationConfig, load_dataset
    from batchal.simulate import runner as R

    ds = load_dataset(pool)
    cfg = SimulationConfig(model="logreg", seed_size=seed_size, batch_size=batch, rounds=rounds, trials=trials,
                           strategies=specs, whiten=whiten, propagate=propagate, progress=False)
    hits, rows = {}, []
    evaluate = R.evaluate
    current = {}

    def keep(dataset, P, rare=None):  # the simulator's evaluate (always of the test split), plus the per-row hits
        current.setdefault("hits", []).append(P.argmax(1) == dataset.y_test)
        return evaluate(dataset, P, rare)

    R.evaluate = keep
    try:
        for s in specs:
            for t in range(trials):
                current.clear()
                t0 = time.perf_counter()
                clusters = R.trial_clusters(ds, cfg, t, threads) if "clusters" in parse_spec(s).requires else None
                rs, _ = R.run_one(ds, cfg, t, s, threads=threads, clusters=clusters)
                for r, h in zip(rs, current["hits"]):
                    hits[(s, t, r["round"])] = h
                    rows.append(dict(strategy=s, trial=t, round=r["round"], n_labeled=r["n_labeled"],
                                     accuracy=r["accuracy"]))
                print(f"  {s} trial {t}: {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        R.evaluate = evaluate
    return rows, hits


def check_recorded(name: str, rows: list[dict]) -> tuple[int, int, float]:
    """(rows in both, rows equal to 1e-9, largest difference) against the recorded run's accuracies."""
    path = BS.RESULTS / f"{name}_results.csv"
    if not path.exists():
        return 0, 0, float("nan")
    rec = {(r["strategy"], int(r["trial"]), int(r["round"])): float(r["accuracy"]) for r in BS._read_csv(path)[1]}
    d = [abs(rec[k] - r["accuracy"]) for r in rows for k in [(r["strategy"], r["trial"], r["round"])] if k in rec]
    return len(d), int(np.sum(np.asarray(d) <= 1e-9)), float(max(d, default=float("nan")))


def bootstrap(rows: list[dict], hits: dict, specs: list[str], reps: int, seed: int = 0) -> dict:
    """Each spec's ratio to margin (labels to random's final metric) over test-row resamples."""
    from batchal.simulate.report import _by, ratio_to_margin

    keys = list(hits)
    H = np.stack([hits[k] for k in keys]).astype(np.float32)  # (curves x test rows)
    m = H.shape[1]
    rng = np.random.default_rng(seed)
    pos = {k: i for i, k in enumerate(keys)}
    out = {s: [] for s in specs}
    gaps = {s: [] for s in specs}
    for _ in range(reps):
        w = np.bincount(rng.integers(0, m, m), minlength=m).astype(np.float32) / m
        acc = H @ w
        rr = [dict(r, accuracy=float(acc[pos[(r["strategy"], r["trial"], r["round"])]])) for r in rows]
        target = float(np.nanmean(_by(rr, "random")[1][-1]))
        ratios = ratio_to_margin(rr, specs, target)
        mg = np.nanmean(_by(rr, "margin")[1], axis=1)
        for s in specs:
            out[s].append(ratios[s])
            gaps[s].append(np.nanmean(_by(rr, s)[1], axis=1)[-1] - mg[-1])
    return {"ratios": out, "final_gap": gaps, "test_rows": m}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seed-size", type=int, default=10_000)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--whiten", action="store_true")
    ap.add_argument("--propagate", type=float, default=None, help="copy batch labels to near-duplicates at this "
                    "distance, as batchal simulate --propagate (checked against the recorded -whiten-prop run)")
    ap.add_argument("--specs", default="random,margin,recommended")
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads per fit: 1 is what the simulator's "
                    "workers use with --jobs > 1 (the recorded runs); other counts round differently")
    ap.add_argument("--name", default=None, help="the recorded configuration to check against "
                    "(default: logreg-POOL-bNNN[-whiten] as bench_scale.py names it)")
    args = ap.parse_args(argv)

    from batchal.selectors import RECOMMENDED

    specs = [RECOMMENDED if s == "recommended" else s for s in args.specs.split(",")]
    if "random" not in specs or "margin" not in specs:
        raise SystemExit("--specs needs random (the target) and margin (the reference)")
    share = args.batch / BS.POOLS[args.pool][1]
    suffix = "-".join(x for x in ("whiten" if args.whiten else "", "prop" if args.propagate is not None else "") if x)
    name = args.name or BS.tag(args.pool, "logreg", share, suffix)
    t0 = time.perf_counter()
    rows, hits = replay(args.pool, args.batch, specs, args.trials, args.rounds, args.seed_size, args.whiten,
                        args.threads, args.propagate)
    both, equal, dmax = check_recorded(name, rows)
    B = bootstrap(rows, hits, specs, args.reps)
    print(f"\n{args.pool}, batch {args.batch:,}: {B['test_rows']:,} test rows, {args.reps} resamples; "
          f"{args.threads} BLAS thread(s); {equal} of {both} accuracies equal {name}'s recorded ones (largest "
          f"difference {100 * dmax:.2f} points); {time.perf_counter() - t0:.0f} s\n")
    print("| spec | ratio to margin on the test split | resampled: median (5%-95%) | share of resamples "
          "above 1.1x (or never) | at most 0.8x | final accuracy - margin's, points: measured, resampled 5%-95% |")
    print("|---|---:|---|---:|---:|---|")
    from batchal.simulate.report import _by, ratio_to_margin

    target = float(np.nanmean(_by(rows, "random")[1][-1]))
    measured = ratio_to_margin(rows, specs, target)
    mg = np.nanmean(_by(rows, "margin")[1], axis=1)[-1]
    for s in specs:
        if s == "margin":
            continue
        rs = B["ratios"][s]
        v = np.array([r for r, note in rs if note not in ("never", "margin never")])
        never = sum(note == "never" for _, note in rs)
        mnever = sum(note == "margin never" for _, note in rs)
        over = (np.sum(v > 1.1) + never) / len(rs)
        under = np.sum(v <= 0.8) / len(rs)
        q = np.percentile(v, [50, 5, 95]) if v.size else [np.nan] * 3
        r0, n0 = measured[s]
        mtxt = n0 if n0 in ("never", "margin never") else f"{n0 + ' ' if n0 else ''}{r0:.2f}x"
        g = 100 * np.asarray(B["final_gap"][s])
        extra = f" (never: {never}, margin never: {mnever})" if never or mnever else ""
        print(f"| {s} | {mtxt} | {q[0]:.2f}x ({q[1]:.2f}x-{q[2]:.2f}x){extra} | {over:.0%} | {under:.0%} | "
              f"{100 * (np.nanmean(_by(rows, s)[1], axis=1)[-1] - mg):+.2f}, {np.percentile(g, 5):+.2f} .. "
              f"{np.percentile(g, 95):+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
