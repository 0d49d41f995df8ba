"""Peer SAE trainers on the data and shapes of scripts/bench_sae.py; run with a throwaway venv's python that has
`sae-lens`, `dictionary-learning` and/or `overcomplete` (they are not in the project's lock). Prints one JSON row per
peer and architecture (samples/s over the training steps; FVE and L0 after them, on the same data), `#` lines for
peers that are missing.

    /path/to/peer-venv/bin/python scripts/sae_peers.py --steps 20 --threads 2 --archs relu batchtopk --k 64
"""
import argparse
import json
import statistics
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=20); ap.add_argument("--repeats", type=int, default=1)
ap.add_argument("--threads", type=int, default=2); ap.add_argument("--d", type=int, default=512)
ap.add_argument("--m", type=int, default=8192); ap.add_argument("--batch", type=int, default=1024)
ap.add_argument("--archs", nargs="+", default=["relu", "batchtopk"]); ap.add_argument("--k", type=int, default=64)
args = ap.parse_args()
torch.set_num_threads(args.threads)
d, m, B, S, K = args.d, args.m, args.batch, args.steps, args.k
torch.manual_seed(0)
X = (torch.randn(B * 16, 64) @ torch.randn(64, d)).relu() + 0.1 * torch.randn(B * 16, d)
X = X / X.norm(dim=1, keepdim=True)
X = (X - X.mean(0)) * (d / ((X - X.mean(0)) ** 2).sum(1).mean()) ** 0.5

def batch(i): return X[(i * B) % len(X):][:B]

@torch.no_grad()
def quality(encode_decode):
    "FVE and L0 on all of X with a (x -> x_hat, f) function."
    x_hat, f = encode_decode(X)
    mse = ((X - x_hat) ** 2).sum(-1).mean(); var = ((X - X.mean(0)) ** 2).sum(-1).mean()
    return dict(fve=float(1 - mse / var), l0=float((f > 0).float().sum(-1).mean()))

def report(name, arch, make, train_steps, encode_decode):
    rates, q = [], {}
    for _ in range(args.repeats):
        obj = make()
        t = time.perf_counter(); train_steps(obj); rates.append(S * B / (time.perf_counter() - t))
        q = quality(lambda x: encode_decode(obj, x))
    print(json.dumps(dict(arch=arch, l0_target=K if arch == "batchtopk" else None, method=name,
                          samples_per_s=statistics.median(rates), **q)), flush=True)

try:
    import sae_lens
    from sae_lens import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, StandardTrainingSAE,
                          StandardTrainingSAEConfig)
    from sae_lens.saes.sae import TrainStepInput
    def sl_train(kind):
        def run(sae):
            opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
            for i in range(S):
                out = sae.training_forward_pass(TrainStepInput(sae_in=batch(i), coefficients={"l1": 0.3},
                                                               dead_neuron_mask=None, n_training_steps=i,
                                                               is_logging_step=False))
                opt.zero_grad(); out.loss.backward(); opt.step()
        return run
    def sl_eval(sae, x):
        sae.eval(); f = sae.encode(x); return sae.decode(f), f
    for arch in args.archs:
        if arch == "relu":
            make = lambda: StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=m, l1_coefficient=0.3))
        else:
            make = lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d, d_sae=m, k=K))
        report(f"SAELens {sae_lens.__version__}", arch, make, sl_train(arch), sl_eval)
except ImportError as e: print(f"# sae_lens unavailable: {e}")

try:
    from dictionary_learning.dictionary import AutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE, BatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainer
    for arch in args.archs:
        if arch == "relu":
            make = lambda: StandardTrainer(steps=S, dict_class=AutoEncoder, activation_dim=d, dict_size=m, lr=3e-4,
                                           l1_penalty=0.3, warmup_steps=1, sparsity_warmup_steps=1, resample_steps=None,
                                           device="cpu", layer=0, lm_name="bench")
        else:
            make = lambda: BatchTopKTrainer(steps=S, activation_dim=d, dict_size=m, k=K, layer=0, lm_name="bench",
                                            lr=3e-4, warmup_steps=1, device="cpu")
        def run(tr):
            for i in range(S): tr.update(i, batch(i))
        def ev(tr, x):
            tr.ae.eval(); f = tr.ae.encode(x); return tr.ae.decode(f), f
        report("dictionary_learning", arch, make, run, ev)
except Exception as e: print(f"# dictionary_learning unavailable: {type(e).__name__}: {str(e)[:200]}")

try:
    from overcomplete.sae import SAE as OcSAE
    from overcomplete.sae import BatchTopKSAE as OcBatchTopK
    for arch in args.archs:
        make = (lambda: OcSAE(d, nb_concepts=m, device="cpu")) if arch == "relu" else \
               (lambda: OcBatchTopK(d, nb_concepts=m, top_k=K * B, device="cpu"))
        def run(sae, arch=arch):
            opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
            for i in range(S):
                xb = batch(i)
                _, z, x_hat = sae(xb)
                loss = ((xb - x_hat) ** 2).sum(-1).mean() + (0.3 * z.sum(-1).mean() if arch == "relu" else 0)
                opt.zero_grad(); loss.backward(); opt.step()
        def ev(sae, x):
            sae.eval(); _, z, x_hat = sae(x); return x_hat, z
        report("overcomplete", arch, make, run, ev)
except Exception as e: print(f"# overcomplete unavailable: {type(e).__name__}: {str(e)[:200]}")
