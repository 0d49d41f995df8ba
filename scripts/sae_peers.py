"""Peer SAE trainers on the data and shapes of scripts/bench_sae.py; run with a throwaway venv's python that has
`sae-lens` and/or `dictionary-learning` (they are not in the project's lock). Prints `name samples/s` lines.

    /path/to/peer-venv/bin/python scripts/sae_peers.py --steps 60 --repeats 3 --threads 2
"""
import argparse
import statistics
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=60); ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--threads", type=int, default=2); ap.add_argument("--d", type=int, default=512)
ap.add_argument("--m", type=int, default=8192); ap.add_argument("--batch", type=int, default=1024)
args = ap.parse_args()
torch.set_num_threads(args.threads)
d, m, B, S = args.d, args.m, args.batch, args.steps
torch.manual_seed(0)
X = (torch.randn(B * 16, 64) @ torch.randn(64, d)).relu() + 0.1 * torch.randn(B * 16, d)
X = X / X.norm(dim=1, keepdim=True)
X = (X - X.mean(0)) * (d / ((X - X.mean(0)) ** 2).sum(1).mean()) ** 0.5

def rate(fn):
    r = []
    for _ in range(args.repeats):
        t = time.perf_counter(); fn(); r.append(S * B / (time.perf_counter() - t))
    return statistics.median(r)

try:
    import sae_lens
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    def run():
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=m, l1_coefficient=3.0))
        opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
        for i in range(S):
            xb = X[(i * B) % len(X):][:B]
            out = sae.training_forward_pass(TrainStepInput(sae_in=xb, coefficients={"l1": 3.0}, dead_neuron_mask=None,
                                                           n_training_steps=i, is_logging_step=False))
            opt.zero_grad(); out.loss.backward(); opt.step()
    print(f"sae_lens {sae_lens.__version__} StandardTrainingSAE {rate(run):.1f}")
except ImportError as e: print(f"# sae_lens unavailable: {e}")

try:
    from dictionary_learning.trainers.standard import StandardTrainer
    from dictionary_learning.dictionary import AutoEncoder
    def run():
        tr = StandardTrainer(steps=S, dict_class=AutoEncoder, activation_dim=d, dict_size=m, lr=3e-4, l1_penalty=3.0,
                             warmup_steps=1, sparsity_warmup_steps=1, resample_steps=None, device="cpu", layer=0,
                             lm_name="bench")
        for i in range(S): tr.update(i, X[(i * B) % len(X):][:B])
    print(f"dictionary_learning StandardTrainer {rate(run):.1f}")
except Exception as e: print(f"# dictionary_learning unavailable: {type(e).__name__}: {str(e)[:200]}")
