"""Ground-truth recovery of a PhantomCXR run's embeddings by SAEs of other architectures: each SAE is trained on the
run's training embeddings with the run's SAE settings and only `sae.arch` (and `sae.k`) changed, then scored as the
evaluate stage scores the run's SAE (dedicated latents on the test split, the probe ceiling trained on valid), with
the probe on each SAE's reconstruction. Prints one line per architecture; asserts nothing.

    python scripts/recovery_by_arch.py --run runs/default [--archs relu,topk,batchtopk,matryoshka] [--k 64] [--steps N]
"""
import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medsae.config import load_config
from medsae.evaluation import ground_truth_table, phantom_concepts, probe_ceiling
from medsae.extract import EmbeddingStore
from medsae.layout import DatasetFolder, RunLayout
from medsae.sae_training import evaluate_sae, train_sae
from medsae.stages import data_root

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--run", type=Path, default=Path("runs/default"), help="a finished PhantomCXR run folder")
ap.add_argument("--archs", default="relu,topk,batchtopk,matryoshka", help="comma-separated SAE architectures")
ap.add_argument("--k", type=int, default=64, help="k of the TopK family (default 64, the default run's L0 target)")
ap.add_argument("--steps", type=int, default=None, help="stop each SAE after this many steps (a quick check)")
args = ap.parse_args()

run = RunLayout(args.run)
cfg = load_config(run.sae / "config.yaml")                     # the settings that trained the run's SAE
store = EmbeddingStore(run.extract.store)
(xtr, _), (xva, iva), (xte, ite) = (store.split(s) for s in ("train", "valid", "test"))
xtr, xva, xte = (np.asarray(x, dtype=np.float32) for x in (xtr, xva, xte))
gt = pd.read_csv(DatasetFolder(data_root(cfg) if cfg.data.root else run.phantom).ground_truth,
                 low_memory=False).set_index("Path")
con = phantom_concepts(gt.loc[ite["Path"]].reset_index())
cs = phantom_concepts(gt.loc[iva["Path"]].reset_index(), min_pos=0)
ys = np.column_stack([cs.y[:, cs.names.index(n)] for n in con.names])
probe = probe_ceiling(xva, ys, xte, con.y)
mt = cfg.metrics
print(f"{args.run}: {len(xtr)} training embeddings; {int((probe >= mt.recovery_auroc).sum())} of {len(con.names)} "
      f"concepts encodable (probe AUROC >= {mt.recovery_auroc})")
for arch in args.archs.split(","):
    t0 = time.time()
    scfg = cfg.sae.model_copy(update=dict(arch=arch, k=args.k, sweep=False, checkpoint_every=0, max_steps=args.steps))
    sae, _ = train_sae(torch.from_numpy(xtr), scfg, seed=cfg.run.seed, progress=False)
    ev = evaluate_sae(sae, torch.from_numpy(xva))
    with torch.no_grad():
        codes = {n: sae.encode_raw(torch.from_numpy(x)) for n, x in (("valid", xva), ("test", xte))}
        hat = {n: (sae.decode(f) / sae.norm_scale + sae.norm_mean).numpy() for n, f in codes.items()}
    p_rec = probe_ceiling(hat["valid"], ys, hat["test"], con.y)
    t, g = ground_truth_table(codes["test"].numpy(), xte, con, mt.recovery_auroc, mt.recovery_margin, probe, p_rec)
    e = t[t.encodable]
    miss = [r.concept for r in e.itertuples() if not (r.sae_recovered or r.sae_recovered_by_parts)]
    print(f"{arch:>10}: FVE {ev['fve']:.3f}, L0 {ev['l0']:.1f}, dead {ev['dead']:.2f} | recovered {g['sae_recovered_encodable']} "
          f"whole, {g['sae_recovered_or_split_encodable']} with parts, of {g['encodable']} encodable | reconstructed "
          f"{g['reconstructed_encodable']}, of which recovered {g['sae_recovered_or_split_reconstructed']} | "
          f"{time.time() - t0:.0f} s | not recovered: {', '.join(miss) or 'none'}", flush=True)
