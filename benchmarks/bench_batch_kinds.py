"""What each spec's first batch is made of on the web-like pools: originals, near-exact copies, augmented copies.

The web-like pools (``batchal.simulate.pools.load_fmnist_web``) record for every
row its source image (``source.npy``) and its kind (``kind.npy``: 0 the
original, 1 a near-exact re-encode, 2 an augmented copy: shift, rotation,
scale, noise). This replays the simulator's first round of one trial exactly
(same seed set, seed model, clustering and selector seeds as ``batchal
simulate`` with logistic regression) and prints, per spec, the share of each
kind in the batch, the distinct source images it covers and its class mix
next to the test split's.

Usage::

    python benchmarks/bench_batch_kinds.py --pool fmnist-web-lt --batch 30000 --whiten
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="fmnist-web-lt", choices=["fmnist-web", "fmnist-web-lt"])
    ap.add_argument("--batch", type=int, default=30_000)
    ap.add_argument("--seed-size", type=int, default=10_000)
    ap.add_argument("--trial", type=int, default=0)
    ap.add_argument("--whiten", action="store_true")
    ap.add_argument("--specs", default="random,margin,cluster-margin,recommended")
    args = ap.parse_args(argv)

    from batchal.selectors import RECOMMENDED, Pool
    from batchal.selectors.spec import parse_spec
    from batchal.simulate import SimulationConfig, load_dataset
    from batchal.simulate import runner as R
    from batchal.simulate.datasets import cache_dir
    from batchal.simulate.pools import WEB_KEY

    ds = load_dataset(args.pool)
    want = "t1" if args.pool.endswith("-lt") else "tnone"
    path = next(p for p in sorted(Path(cache_dir()).glob(f"{WEB_KEY}_*")) if f"_{want}_" in p.name)
    kind, source = np.load(path / "kind.npy"), np.load(path / "source.npy")
    specs = [RECOMMENDED if s == "recommended" else s for s in args.specs.split(",")]
    cfg = SimulationConfig(model="logreg", seed_size=args.seed_size, batch_size=args.batch, rounds=1, trials=1,
                           strategies=specs, whiten=args.whiten, progress=False)
    ts = R.trial_seed(cfg.seed, args.trial)
    # the clustering (17 min on these pools when not cached) only for the specs that read it
    reads = any("clusters" in parse_spec(s).requires for s in specs)  # as the simulator's own plan decides
    clusters = R.trial_clusters(ds, cfg, args.trial)[0] if reads else None
    model = R._new_model(ds, cfg, ts, None)
    model.set_pool(ds.X)
    labeled = R.seed_set(ds.X.shape[0], cfg, args.trial)
    model.fit(ds.X[labeled], ds.y[labeled])
    P = model.predict_proba(ds.X)
    E = R.clustered_embedding(model, ds.X, cfg)
    C = int(ds.y.max()) + 1
    print(f"{args.pool}: {ds.X.shape[0]:,} rows from {json.loads((path / 'meta.json').read_text())['original_rows']:,} "
          f"images; seed set {args.seed_size:,}, batch {args.batch:,}, trial {args.trial}\n")
    print("| spec | originals | near-exact copies | augmented copies | distinct images | rows per image | "
          "mean margin | total variation from the test's class mix |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    test_mix = np.bincount(ds.y_test, minlength=C) / len(ds.y_test)
    margin = -np.asarray(Pool(probs=P).uncertainty("margin"))
    for s in ["(pool)"] + specs:
        if s == "(pool)":
            b = np.arange(ds.X.shape[0])
        else:
            sel = parse_spec(s).make(random_state=ts * 100 + 1, defaults=R.selector_defaults(cfg))
            b = sel.select(Pool(probs=P, embeddings=E, clusters=clusters, labeled=labeled), args.batch)
        k = np.bincount(kind[b], minlength=3) / len(b)
        n_src = len(np.unique(source[b]))
        tv = 0.5 * np.abs(np.bincount(ds.y[b], minlength=C) / len(b) - test_mix).sum()
        print(f"| {s} | {k[0]:.1%} | {k[1]:.1%} | {k[2]:.1%} | {n_src:,} | {len(b) / n_src:.1f} | "
              f"{margin[b].mean():.3f} | {tv:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
