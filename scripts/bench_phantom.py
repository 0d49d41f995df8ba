"""Benchmark of PhantomCXR generation: the one-off precomputation and the rendering rate (images written to disk,
with reports), on this machine's cores. Prints both figures; asserts nothing.

    python scripts/bench_phantom.py [--n 2000] [--workers 2] [--size 224]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

from medsae.config import PhantomConfig
from medsae.data import read_chexpert_csv
from medsae.assets import asset_path
from medsae.phantom import Anatomy
from medsae.phantomcxr import generate_phantom

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--n", type=int, default=2000, help="images to generate (default 2000)")
ap.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
ap.add_argument("--size", type=int, default=224, help="image side (default 224)")
args = ap.parse_args()

t = time.time()
an = Anatomy.build(args.size)
pre = time.time() - t
table = read_chexpert_csv(asset_path("chexpert_train"))
cfg = PhantomConfig(n_train=args.n - 2, n_valid=1, n_test=1, size=args.size, workers=args.workers)
with tempfile.TemporaryDirectory() as d:
    t = time.time()
    man = generate_phantom(Path(d) / "set", cfg, seed=0, table=table, anatomy=an, progress=False)
    total = time.time() - t
print(f"cores: {os.cpu_count()}, workers: {args.workers}, size: {args.size}")
print(f"precomputation (CT read, projections, landmarks): {pre:.1f} s")
print(f"rendering + writing {args.n} images with reports: {man['timing']['render_s']:.1f} s "
      f"= {args.n / man['timing']['render_s']:.0f} images/s")
print(f"whole call including tables and manifest: {total:.1f} s")
