"""Benchmark of the monosemanticity metrics at CheXpert scale: N images x m latents x k labels, synthetic sparse codes.

Prints the wall time of each step and the peak resident memory of the process (goal: <= 60 s and <= 4 GiB for
224k x 8192 x 14 at L0 64 on 2 CPU cores). Usage: python scripts/bench_metrics.py [--n 224316] [--m 8192] [--l0 64]
"""
import argparse, resource, time

import numpy as np
import scipy.sparse as sp

from medsae.evaluation import paired_bootstrap
from medsae.metrics import correlations, detection, monosemanticity, monosemanticity_score

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--n", type=int, default=224_316, help="images (CheXpert's training set: 224,316)")
ap.add_argument("--m", type=int, default=8192, help="latents")
ap.add_argument("--k", type=int, default=14, help="labels")
ap.add_argument("--l0", type=int, default=64, help="active latents per image")
ap.add_argument("--d", type=int, default=512, help="embedding dimension (Monosemanticity Score)")
ap.add_argument("--ms-sample", type=int, default=2000, help="images of the Monosemanticity Score sample")
ap.add_argument("--bootstrap", type=int, default=20, help="bootstrap resamples to time")
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()

peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # GiB (ru_maxrss is KiB on Linux)
rng = np.random.default_rng(a.seed)
t = time.time()
y = (rng.random((a.n, a.k)) < 0.15).astype(np.float32)
cols = rng.integers(0, a.m, size=(a.n, a.l0)).astype(np.int32)
# latents 0..k-1 track the labels, so that some units pass the threshold as real ones would
cols[:, :a.k] = np.where(y > 0, np.arange(a.k)[None, :], cols[:, :a.k])
vals = rng.exponential(1.0, size=(a.n, a.l0)).astype(np.float32)
A = sp.csr_matrix((vals.ravel(), cols.ravel(), np.arange(0, a.n * a.l0 + 1, a.l0)), shape=(a.n, a.m))
A.sum_duplicates()
del cols, vals
print(f"synthetic codes: {a.n} x {a.m}, nnz {A.nnz:,} ({A.data.nbytes / 2**20:.0f} MiB of values), {a.k} labels; "
      f"built in {time.time() - t:.1f} s; peak RSS so far {peak():.2f} GiB")
labels = tuple(f"label{i}" for i in range(a.k))

t0 = time.time(); c = correlations(A, y, labels); t1 = time.time()
mo = monosemanticity(c, 0.2); t2 = time.time()
det = detection(A, y, top=0.30); t3 = time.time()
print(f"Pearson r (streaming, sparse)  {t1 - t0:6.1f} s   units with max|r| > 0.2: {len(mo.entering)}")
print(f"entropy + best unit per class  {t2 - t1:6.1f} s   mean best-unit entropy {mo.mean_best_entropy:.3f}")
print(f"detector P/R/F1 (top 30%)      {t3 - t2:6.1f} s")
rs = np.sort(rng.choice(a.n, size=a.ms_sample, replace=False))
emb = rng.normal(size=(a.ms_sample, a.d)).astype(np.float32)
t4 = time.time(); ms = monosemanticity_score(A[rs], emb); t5 = time.time()
print(f"Monosemanticity Score ({a.ms_sample} images) {t5 - t4:5.1f} s")
print(f"TOTAL point metrics            {t3 - t0 + t5 - t4:6.1f} s   peak RSS {peak():.2f} GiB")
if a.bootstrap:
    t6 = time.time(); b = paired_bootstrap({"sae": A}, y, labels, n_boot=a.bootstrap, seed=a.seed, block=5); t7 = time.time()
    print(f"bootstrap: {(t7 - t6) / a.bootstrap:.2f} s per resample ({a.bootstrap} timed, units fixed: "
          f"{len(mo.entering)})   peak RSS {peak():.2f} GiB")
