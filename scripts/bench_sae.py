"""Benchmark of SAE training in the paper's setting (d 512, 8192 latents, batch 1024) on this machine, in one run.

For each architecture (ReLU + L1, BatchTopK) and each target L0 (default 32, 64, 256), on the same synthetic data:

* ours dense / ours sparse: `medsae.sae_training.train_sae` with `sae.kernel` dense or sparse (constraint steps,
  dead-latent counters, logging included; setup excluded: the trainer's own samples/s over its steps);
* bare autograd loop: the same model in plain torch (autograd, default Adam, decoder constraint, nothing else);
* dense bound: the five GEMMs of a step (10 B d m FLOPs) with torch.mm on the same shapes;
* peers (with --peer-python, a throwaway venv's interpreter): SAELens, dictionary_learning, overcomplete.

The ReLU SAE's L0 is set by its training history; to measure each target L0 the ReLU rows start from the same
initial SAE with b_enc placed so that L0 = target, then train (L0 drifts; the table gives the L0 reached). BatchTopK has L0 = k. FVE and L0
are measured after training, on the training data (ReLU: inference mode; BatchTopK: batch top-k per batch of B, as
trained, since the inference threshold after a few steps is not yet settled). `--sweep N` adds the sweep:
N SAEs (`--sweep-arch`: BatchTopK, k = 32, 64, ...; or ReLU, l1 = 1, 3, 10, ...) in one `sweep` pass, members one by
one (sparse or dense kernels) or stacked (`sae.sweep_stack on`), against N sequential `train_sae` runs.
`--crossover` times one ReLU step dense vs sparse over L0 (how SPARSE_MAX_DENSITY was chosen). Asserts nothing.

    python scripts/bench_sae.py [--steps 20] [--l0 32 64 256] [--archs relu batchtopk] [--sweep 4 [--sweep-arch relu]] [--peer-python P]
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--repeats", type=int, default=1, help="runs of each; the median is printed")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--d", type=int, default=512)
ap.add_argument("--m", type=int, default=8192)
ap.add_argument("--batch", type=int, default=1024)
ap.add_argument("--l0", type=int, nargs="+", default=[32, 64, 256])
ap.add_argument("--archs", nargs="+", default=["relu", "batchtopk"])
ap.add_argument("--device", default="cpu", help="cpu or cuda (peers run on the CPU only)")
ap.add_argument("--no-bare", action="store_true", help="skip the bare autograd loop")
ap.add_argument("--sweep", type=int, default=0, help="also time a sweep of N SAEs (one pass vs N runs; stacked or not)")
ap.add_argument("--sweep-arch", default="batchtopk", choices=["relu", "batchtopk"], help="the sweep's architecture")
ap.add_argument("--crossover", action="store_true", help="also time one ReLU step dense vs sparse over L0")
ap.add_argument("--json", help="write the rows here too")
ap.add_argument("--peer-python", help="a throwaway venv's python with sae-lens / dictionary-learning / overcomplete")
args = ap.parse_args()
torch.set_num_threads(args.threads)
d, m, B, S = args.d, args.m, args.batch, args.steps
dev = torch.device(args.device)
torch.manual_seed(0)
X = (torch.randn(B * 16, 64) @ torch.randn(64, d)).relu() + 0.1 * torch.randn(B * 16, d)   # low-rank-ish, sparse-ish
X = X / X.norm(dim=1, keepdim=True)                                                       # like CLIP embeddings
flops = 10 * B * d * m

from medsae.config import SAEConfig
from medsae.sae import Normaliser, build_sae
from medsae.sae_training import batch_indices, evaluate_sae, sweep, train_sae

def sync():
    if dev.type == "cuda": torch.cuda.synchronize()

def median(fn):
    r = [fn() for _ in range(args.repeats)]
    return statistics.median(r)

# the dense bound: five GEMMs of a step
A, We, Wd, G, Fm = (torch.randn(*s, device=dev) for s in [(B, d), (d, m), (m, d), (B, d), (B, m)])
def gemms(steps=S):
    sync(); t = time.perf_counter()
    for _ in range(steps): torch.mm(A, We); torch.mm(Fm, Wd); torch.mm(G, Wd.t()); torch.mm(Fm.t(), G); torch.mm(A.t(), Fm)
    sync(); return steps * B / (time.perf_counter() - t)
bound = median(gemms)
rows = [dict(arch="-", l0_target=None, method="dense bound (5 GEMMs)", samples_per_s=bound, bound=bound)]
# a shared machine's load changes during the run: each (arch, L0) group's ratios use a bound timed just before it

def cfg_for(arch, l0, kernel):
    return SAEConfig(arch=arch, expansion=m // d, l1=0.3, k=l0, batch_size=B, max_steps=S, log_every=S,
                     threads=args.threads, device=args.device, kernel=kernel, lr=3e-4)

def initial_sae(arch, l0):
    "The same starting SAE for every method: seed 0, b_dec at the trainer's median, ReLU b_enc placed for L0 = l0."
    torch.manual_seed(0)
    s = build_sae(arch, d, m, kernel="auto", **({"l1": 0.3} if arch == "relu" else {"k": l0}))
    x = Normaliser.fit(X)(X)
    s.init_from_data(x[batch_indices(len(x), 0, cfg_for(arch, l0, "auto"), 0)][:4096])
    if arch == "relu":
        with torch.no_grad():
            pre = s.pre_acts(x[:1024])
            s.b_enc.data = -torch.quantile(pre[:256].flatten(), 1 - l0 / m) * torch.ones(m)
    return s

def run_ours(arch, l0, kernel):
    out = {}
    def one():
        s, log = train_sae(X, cfg_for(arch, l0, kernel), progress=False, sae=initial_sae(arch, l0))
        out["sae"] = s
        return float(log["samples_per_s"].iloc[-1])
    r = median(one)
    s = out["sae"]
    if arch == "relu": q = evaluate_sae(s, X)
    else:                                          # BatchTopK as trained (k x B per batch of B), as the bare loop
        x = s.normalise(X)
        with torch.no_grad():
            f = torch.cat([s.batch_activation(s.pre_acts(x[i:i + B])) for i in range(0, len(x), B)])
            q = dict(fve=float(1 - ((x - s.decode(f)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()),
                     l0=float((f > 0).float().sum(-1).mean()))
    return dict(samples_per_s=r, fve=q["fve"], l0=q["l0"])

def run_bare(arch, l0):
    "Plain torch: autograd through the dense code, default Adam, the decoder constraint."
    s0 = initial_sae(arch, l0)
    norm = Normaliser.fit(X)
    x_all = norm(X).to(dev)
    res = {}
    def one():
        W_enc, b_enc, W_dec, b_dec = (torch.nn.Parameter(p.detach().clone().to(dev)) for p in (s0.W_enc, s0.b_enc, s0.W_dec, s0.b_dec))
        opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=3e-4)
        sync(); t = time.perf_counter()
        for i in range(S):
            xb = x_all[(i * B) % len(x_all):][:B]
            pre = (xb - b_dec) @ W_enc + b_enc
            if arch == "relu":
                f = F.relu(pre)
                loss = ((xb - (f @ W_dec + b_dec)) ** 2).sum(-1).mean() + 0.3 * f.sum(-1).mean()
            else:
                flat = F.relu(pre).flatten(); v, idx = flat.topk(l0 * B)
                f = torch.zeros_like(flat).scatter(0, idx, v).view_as(pre)
                loss = ((xb - (f @ W_dec + b_dec)) ** 2).sum(-1).mean()
            opt.zero_grad(); loss.backward()
            with torch.no_grad(): W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
            opt.step()
            with torch.no_grad(): W_dec.data = F.normalize(W_dec.data, dim=1)
        sync(); r = S * B / (time.perf_counter() - t)
        with torch.no_grad():
            pre = (x_all - b_dec) @ W_enc + b_enc
            if arch == "relu": f = F.relu(pre)
            else:
                f = torch.cat([(lambda a: torch.zeros_like(a.flatten()).scatter(0, a.flatten().topk(l0 * len(a)).indices,
                                a.flatten().topk(l0 * len(a)).values).view_as(a))(F.relu(pre[i:i + B])) for i in range(0, len(pre), B)])
            mse = ((x_all - (f @ W_dec + b_dec)) ** 2).sum(-1).mean(); var = ((x_all - x_all.mean(0)) ** 2).sum(-1).mean()
            res.update(fve=float(1 - mse / var), l0=float((f > 0).float().sum(-1).mean()))
        return r
    return dict(samples_per_s=median(one), **res)

for arch in args.archs:
    for l0 in args.l0:
        b_now = gemms(max(3, S // 4))
        for kernel in ("dense", "sparse"):
            rows.append(dict(arch=arch, l0_target=l0, method=f"ours {kernel}", bound=b_now, **run_ours(arch, l0, kernel)))
            print(rows[-1], file=sys.stderr, flush=True)
        if not args.no_bare:
            rows.append(dict(arch=arch, l0_target=l0, method="bare autograd loop", bound=b_now, **run_bare(arch, l0)))
            print(rows[-1], file=sys.stderr, flush=True)

if args.peer_python and dev.type == "cpu":
    r = subprocess.run([args.peer_python, str(Path(__file__).with_name("sae_peers.py")), "--steps", str(S),
                        "--repeats", str(args.repeats), "--threads", str(args.threads), "--d", str(d), "--m", str(m),
                        "--batch", str(B), "--archs", *args.archs, "--k", str(64)], capture_output=True, text=True)
    b_now = gemms(max(3, S // 4))
    for line in r.stdout.splitlines():
        if line.startswith("{"): rows.append(dict(json.loads(line), bound=b_now))
        else: print(line)
    if r.returncode: print(r.stderr[-1500:])

print(f"\nd={d} m={m} batch={B} steps={S} device={dev} threads={torch.get_num_threads()} (median of {args.repeats}); "
      f"dense bound {bound:.0f} samples/s = {bound * flops / B / 1e9:.1f} GFLOP/s")
print("| arch | L0 target | method | samples/s | bound timed with the group | x bound | FVE | L0 reached |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    fv = f"{r['fve']:.3f}" if r.get("fve") is not None else "-"
    l0r = f"{r['l0']:.1f}" if r.get("l0") is not None else "-"
    print(f"| {r['arch']} | {r['l0_target'] or '-'} | {r['method']} | {r['samples_per_s']:.0f} | {r['bound']:.0f} | "
          f"{r['samples_per_s'] / r['bound']:.2f} | {fv} | {l0r} |")

if args.sweep:
    # N SAEs at m latents sharing the data (BatchTopK: k = 32, 64, ...; ReLU: l1 = 1, 3, 10, ...): one `sweep` pass,
    # members one by one (sparse or dense kernels) or stacked (`sae.sweep_stack`, dense products), vs N train_sae runs
    n, arch = args.sweep, args.sweep_arch
    vals = [32 * 2 ** i for i in range(n)] if arch == "batchtopk" else [(1, 3)[i % 2] * 10 ** (i // 2) for i in range(n)]
    knob = "k" if arch == "batchtopk" else "l1"
    base = SAEConfig(arch=arch, batch_size=B, sweep_epochs=1, sweep_expansion=[m // d], lr=3e-4, threads=args.threads,
                     device=args.device, **{f"sweep_{knob}": vals})
    Xs = X[: B * S]                                      # one epoch of S steps
    seq, res = {}, {}
    for kernel in ("sparse", "dense"):
        t = time.perf_counter()
        for v in vals:
            s1, _ = train_sae(Xs, base.model_copy(update={"kernel": kernel, knob: v, "max_steps": S, "log_every": S}), progress=False)
            evaluate_sae(s1, X[:2048])
        seq[kernel] = time.perf_counter() - t
    for label, kernel, stack in (("one by one, sparse kernels", "sparse", "off"), ("one by one, dense kernels", "dense", "off"),
                                 ("stacked (dense products)", "dense", "on")):
        c = base.model_copy(update=dict(kernel=kernel, sweep_stack=stack))
        t = time.perf_counter(); tab, _ = sweep(Xs, X[:2048], c, progress=False); res[label] = (time.perf_counter() - t, tab)
    best = min(seq.values())
    print(f"\nsweep of {n} {arch} SAEs ({m} latents, {knob} {vals}, {S} steps each, held-out L0 after: "
          f"{', '.join(f'{v:.0f}' for v in res['stacked (dense products)'][1]['l0'])}); {n} separate runs: "
          f"{seq['sparse']:.1f} s with sparse kernels, {seq['dense']:.1f} s dense. The one pass also records every "
          f"member's held-out curve (FVE and L0 on 2,048 rows at up to 17 points), which the separate runs do not:")
    print(f"| one pass | s | of which curves, s | / fastest separate runs | without the curves / fastest separate |")
    print("|---|---|---|---|---|")
    for label, (a, t) in res.items():
        cs = t.attrs["curve_seconds"]
        print(f"| {label} | {a:.1f} | {cs:.1f} | {a / best:.2f} | {(a - cs) / best:.2f} |")
    # what stacking the members' encoder products into one GEMM saves (the step's one dense product)
    xb = torch.randn(B, d, device=dev); Ws = [torch.randn(d, m, device=dev) for _ in range(n)]; Wst = torch.cat(Ws, 1)
    def timed(f, reps=10):
        f(); sync(); t = time.perf_counter()
        for _ in range(reps): f()
        sync(); return (time.perf_counter() - t) / reps
    t_sep, t_st = timed(lambda: [xb @ w for w in Ws]), timed(lambda: xb @ Wst)
    print(f"encoder products of {n} members: {n} GEMMs {1e3 * t_sep:.0f} ms, one stacked GEMM {1e3 * t_st:.0f} ms "
          f"(stacked / separate {t_st / t_sep:.2f})")

if args.crossover:
    from medsae.sae import ReLUSAE
    print("\none ReLU step (loss, backward, constraint, fused Adam), ms, by L0 (density):")
    print("| L0 | density | dense | sparse |")
    print("|---|---|---|---|")
    for l0 in [l for l in (64, 256, 512, 1024, 2048) if l < m]:
        s = initial_sae("relu", l0).to(dev)
        x = Normaliser.fit(X)(X)[:B].to(dev)
        opt = torch.optim.Adam(s.parameters(), lr=1e-12, fused=True)
        ms = {}
        for kernel in ("dense", "sparse"):
            s.kernel = kernel
            ts = []
            for _ in range(4):
                sync(); t = time.perf_counter()
                out = s.loss(x); opt.zero_grad(); out["loss"].backward(); s.remove_parallel_grad(); opt.step(); s.renorm_decoder()
                sync(); ts.append(time.perf_counter() - t)
            ms[kernel] = 1e3 * min(ts[1:])
        print(f"| {l0} | {l0 / m:.3f} | {ms['dense']:.0f} | {ms['sparse']:.0f} |")

if args.json: Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
