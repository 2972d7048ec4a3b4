#!/usr/bin/env python
"""One full coreset batch on the cached inputs of ``bench_select.py`` (no truncation, no projection).

Usage::

    python benchmarks/bench_select.py --sizes 1000000:100000 --strategies random   # writes the inputs once
    python benchmarks/bench_coreset_full.py --n 1000000 --k 100000

Prints the wall time of each ``batchal.select("coreset", ...)`` call (numba
compile excluded by a warm-up on 1,000 rows).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from batchal import select


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/batchal-bench-cache"))
    args = ap.parse_args()
    d = args.cache_dir / f"n{args.n}_d128_C10_seed0"
    E = np.load(d / "embeddings.npy", mmap_mode="r")
    L = np.load(d / "labeled.npy")
    select("coreset", 10, embeddings=np.asarray(E[:1000]), seed=0)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        idx = select("coreset", args.k, embeddings=E, labeled=L, seed=0)
        print(f"coreset n={args.n:,} k={args.k:,}: {time.perf_counter() - t0:.1f} s "
              f"({len(np.unique(idx)):,} distinct rows)", flush=True)


if __name__ == "__main__":
    main()
