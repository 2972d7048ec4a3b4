import time, numpy as np, faiss
from batchal.similar import SimilarIndex, _prep, _search_ivf, _search_ivf_one
X = np.load("/tmp/batchal_bench/dupblobs_1000000_64_0_0.03_2000.npy", mmap_mode="r")
idx = SimilarIndex(X)
rng = np.random.default_rng(0); n, d = X.shape; c = n // 200
centers = (rng.standard_normal((c, d)) * 2).astype(np.float32); sd = rng.uniform(0.5, 1.5, c).astype(np.float32)
qr = np.random.default_rng(7)
allowed = np.ones(n, bool)
print("| nprobe | per-query scan CPU s (median of 10 sets) | cell by cell CPU s | same rows |")
print("|---:|---:|---:|---|")
for p in (16, 64):
    a, b, same = [], [], True
    for j in qr.choice(c, 10, replace=False):
        Qp = _prep(centers[j] + qr.standard_normal((100, d)).astype(np.float32) * sd[j], "cosine", "q")
        t = time.process_time(); D1, I1 = _search_ivf(idx, Qp, allowed, 100, p); b.append(time.process_time() - t)
        t = time.process_time()
        _, cells = faiss.knn(Qp, idx._C, idx._C.shape[0], metric=faiss.METRIC_INNER_PRODUCT)
        D0, I0 = _search_ivf_one(idx, Qp, cells, allowed[idx._order], 100, p); a.append(time.process_time() - t)
        same &= all(set(x) == set(y) for x, y in zip(I0, I1))
    print(f"| {p} | {np.median(a):.2f} | {np.median(b):.2f} | {same} |", flush=True)
