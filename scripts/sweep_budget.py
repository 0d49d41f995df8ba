"""The sweep's plateau verdicts at other budgets: retrain the run's sweep grid on the run's embeddings with another
batch size, number of epochs or learning rate, and print each member's held-out FVE, L0, dead fraction, FVE gained
over its last quarter of steps and plateau verdict (gain < 0.005), as the sweep table of the sae stage does. Measures
whether a cheaper sweep would still bring every member to its plateau (issue 14, point 4). Asserts nothing.

    python scripts/sweep_budget.py --run runs/default --grid 128:20:0.001,128:10:0.002

Each grid entry is batch:epochs:lr; everything else is the run's SAE config (`sae/config.yaml`) and seed.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medsae.config import load_config
from medsae.extract import EmbeddingStore
from medsae.layout import RunLayout
from medsae.sae_training import sweep

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--run", type=Path, default=Path("runs/default"), help="a run folder whose extract and sae stages ran")
ap.add_argument("--grid", default="128:20:0.001", help="comma-separated batch:epochs:lr (default: the default sweep)")
args = ap.parse_args()

def fail(msg: str):
    "Bad input: one line naming the argument, exit code 2."
    print(f"sweep_budget.py: {msg}", file=sys.stderr)
    sys.exit(2)

def spec(s: str) -> tuple[int, int, float]:
    try:
        bs, ep, lr = s.split(":")
        out = int(bs), int(ep), float(lr)
    except ValueError:
        fail(f"--grid entry {s!r} is not batch:epochs:lr (e.g. 128:10:0.001)")
    if min(out) <= 0: fail(f"--grid entry {s!r}: batch, epochs and lr must be positive")
    return out

grid = [spec(s) for s in args.grid.split(",")]
run = RunLayout(args.run)
if not (run.sae / "config.yaml").exists() or not run.extract.store.exists():
    fail(f"--run {args.run} has no finished sae and extract stages (run `medsae reproduce` first)")
cfg = load_config(run.sae / "config.yaml")
store = EmbeddingStore(run.extract.store)
xtr, xva = (torch.from_numpy(np.asarray(store.split(s)[0], dtype=np.float32)) for s in ("train", "valid"))
torch.set_num_threads(cfg.sae.threads)
for bs, ep, lr in grid:
    scfg = cfg.sae.model_copy(update=dict(sweep_batch_size=bs, sweep_epochs=ep, lr=lr))
    t0 = time.time()
    tab, _ = sweep(xtr, xva, scfg, seed=cfg.run.seed, progress=False)
    print(f"== batch {bs}, {ep} epochs, lr {lr}: {time.time() - t0:.0f} s, "
          f"{int(tab.plateau.sum())} of {len(tab)} members at their plateau", flush=True)
    print(tab[["steps", "fve", "l0", "dead", "fve_gain_last_quarter", "plateau"]].round(4).to_string(), flush=True)
