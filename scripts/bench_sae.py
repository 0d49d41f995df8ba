"""Benchmark of SAE training in the paper's setting (d = 512, 8192 latents, batch 1024, ReLU + L1) on this CPU.

Measures, in one run on the same synthetic data: (1) our trainer (`medsae.sae_training.train_sae`, with its
constraint steps, dead-latent counters and logging); (2) a bare-torch loop of the same model (autograd, Adam,
decoder constraint, nothing else); (3) the matmul bound: the five GEMMs of a step (10 B d m FLOPs) timed with
torch.mm on the same shapes; (4) with --peer-python, peers in a throwaway venv (`sae_lens`, `dictionary_learning`)
on the same data. Prints samples/s, GFLOP/s and, for ours, FVE and L0:
fast and wrong is worthless. Asserts nothing.

    python scripts/bench_sae.py [--steps 60] [--repeats 3] [--threads 2]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--steps", type=int, default=60)
ap.add_argument("--repeats", type=int, default=3, help="runs of each; the median is printed")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--d", type=int, default=512)
ap.add_argument("--m", type=int, default=8192)
ap.add_argument("--batch", type=int, default=1024)
ap.add_argument("--device", default="cpu", help="cpu or cuda (peers run on the CPU only)")
ap.add_argument("--peer-python", help="a throwaway venv's python with sae-lens / dictionary-learning, run on the same data")
args = ap.parse_args()
torch.set_num_threads(args.threads)
d, m, B, S = args.d, args.m, args.batch, args.steps
torch.manual_seed(0)
X = (torch.randn(B * 16, 64) @ torch.randn(64, d)).relu() + 0.1 * torch.randn(B * 16, d)   # low-rank-ish, sparse-ish
X = X / X.norm(dim=1, keepdim=True)                                                       # like CLIP embeddings
flops = 10 * B * d * m

dev = torch.device(args.device)
def sync():
    if dev.type == "cuda": torch.cuda.synchronize()

def median_rate(fn):
    rates = []
    for _ in range(args.repeats):
        sync(); t = time.perf_counter(); fn(); sync(); rates.append(S * B / (time.perf_counter() - t))
    return statistics.median(rates)

results = {}
# (1) ours (same normalised data as the bare loop and the peers: centred, E||x||^2 = d)
from medsae.config import SAEConfig
from medsae.sae_training import evaluate_sae, train_sae
cfg = SAEConfig(arch="relu", expansion=m // d, l1=3.0, batch_size=B, max_steps=S, log_every=S, threads=args.threads,
                device=args.device)
ours = {}
def run_ours():
    s, _ = train_sae(X, cfg, progress=False); ours["sae"] = s
results["medsae trainer"] = median_rate(run_ours)
q = evaluate_sae(ours["sae"], X)

# (2) bare torch loop: same model, autograd, Adam, unit-norm decoder, no metrics
def run_bare():
    torch.manual_seed(0)
    W_enc = torch.nn.Parameter(torch.nn.init.kaiming_uniform_(torch.empty(d, m)).to(dev))
    W_dec = torch.nn.Parameter(F.normalize(torch.randn(m, d), dim=1).to(dev))
    b_enc = torch.nn.Parameter(torch.zeros(m, device=dev)); b_dec = torch.nn.Parameter(torch.zeros(d, device=dev))
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=3e-4)
    x_all = ((X - X.mean(0)) * (d / ((X - X.mean(0)) ** 2).sum(1).mean()) ** 0.5).to(dev)
    for i in range(S):
        xb = x_all[(i * B) % len(x_all):][:B]
        f = F.relu((xb - b_dec) @ W_enc + b_enc)
        loss = ((xb - (f @ W_dec + b_dec)) ** 2).sum(-1).mean() + 3.0 * f.sum(-1).mean()
        opt.zero_grad(); loss.backward()
        with torch.no_grad(): W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad(): W_dec.data = F.normalize(W_dec.data, dim=1)
results["bare torch loop"] = median_rate(run_bare)

# (3) the matmul bound: the five GEMMs of one step
A, We, Wd, G, Fm = (torch.randn(*s, device=dev) for s in [(B, d), (d, m), (m, d), (B, d), (B, m)])
def gemms():
    for _ in range(S):
        torch.mm(A, We); torch.mm(Fm, Wd); torch.mm(G, Wd.t()); torch.mm(Fm.t(), G); torch.mm(A.t(), Fm)
results["matmul bound (5 GEMMs)"] = median_rate(gemms)

# (4) peers, in a throwaway venv's interpreter (they are not in the project's lock), same data and shapes
if args.peer_python and dev.type == "cpu":
    import subprocess
    from pathlib import Path
    r = subprocess.run([args.peer_python, str(Path(__file__).with_name("sae_peers.py")), "--steps", str(S),
                        "--repeats", str(args.repeats), "--threads", str(args.threads), "--d", str(d), "--m", str(m),
                        "--batch", str(B)], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("#"): print(line); continue
        name, v = line.rsplit(" ", 1); results[name] = float(v)
    if r.returncode: print(r.stderr[-500:])

print(f"d={d} m={m} batch={B} steps={S} device={dev} threads={torch.get_num_threads()} (median of {args.repeats})")
bound = results["matmul bound (5 GEMMs)"]
for k, v in results.items():
    print(f"{k:28s} {v:9.0f} samples/s  {v * flops / B / 1e9:7.1f} GFLOP/s  {100 * v / bound:5.1f}% of the matmul bound")
print(f"ours after {S} steps on the synthetic data: FVE {q['fve']:.3f}, L0 {q['l0']:.1f}, dead {q['dead']:.3f}")
