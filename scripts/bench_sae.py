"""Benchmark of SAE training in the paper's setting (d 512, 8192 latents, batch 1024) on this machine.

The main table times, **interleaved**, the dense bound and our trainer's sparse kernels for ReLU + L1 and BatchTopK at
L0 about `--l0` (64): each repeat runs every method once, in an order rotated from repeat to repeat, so that a slow
minute of the machine hits all of them alike. Each method trains `--warmup` steps and then `--steps` timed steps (the
trainer's own clock, logging included) from the same initial SAE on the same synthetic data. Printed per method: the
median samples/s and its min-max over `--repeats` (at least 5), the ratio to the bound of the **same repeat**, its
median and its worst repeat, and the system time and minor page faults per timed step (getrusage: the trainer's log
records both).

* dense bound: the five GEMMs of a step (10 B d m FLOPs), torch.mm into preallocated outputs (no allocation, no
  page faults: pure arithmetic on the same shapes);
* ours sparse: `medsae.sae_training.train_sae` with `sae.kernel: sparse` (Adam, decoder constraint, dead-latent
  counters and logging included); `--dense` adds `sae.kernel: dense`, `--bare` a plain autograd loop;
* peers (`--peer-python`, a throwaway venv's interpreter): SAELens, dictionary_learning, overcomplete, one subprocess
  per repeat (their own clocks over the same steps).

The work of a step depends on L0, and a ReLU SAE's L0 is set by its training history (on this data it falls from 64 to
3 and climbs back to 360 within 80 steps at lr 3e-4, whatever the L1 coefficient): the ReLU rows start from an SAE
whose b_enc gives L0 = `--l0` and train at `--lr` 1e-9, so that every step does a full training step's work at that
sparsity (Adam, the constraint, the counters, all of it) while the code stays put; the L0 over the timed steps is
printed. BatchTopK has L0 = k. `--lr 3e-4` trains for real.
`--profile` times one sparse step of each architecture by phase (loss, backward, optimiser, constraint) with the
system time and minor faults of each, and lists the largest allocations of a step (torch.profiler). `--sweep N`
adds the sweep, `--crossover` the dense-vs-sparse step over L0. Asserts nothing.

    python scripts/bench_sae.py [--repeats 5] [--steps 80] [--l0 64] [--dense] [--bare] [--peer-python P] [--profile]
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--steps", type=int, default=80, help="timed steps of each method in each repeat")
ap.add_argument("--warmup", type=int, default=20, help="steps before the timed ones (allocator, caches, Adam state)")
ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median and spread over them)")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--d", type=int, default=512)
ap.add_argument("--m", type=int, default=8192)
ap.add_argument("--batch", type=int, default=1024)
ap.add_argument("--l0", type=int, default=64)
ap.add_argument("--relu-l1", type=float, default=1.0, help="the ReLU rows' L1 coefficient")
ap.add_argument("--lr", type=float, default=1e-9, help="learning rate of the timed runs (default: the code keeps its L0)")
ap.add_argument("--archs", nargs="+", default=["relu", "batchtopk"])
ap.add_argument("--dense", action="store_true", help="also time the dense kernels")
ap.add_argument("--bare", action="store_true", help="also time a plain autograd loop")
ap.add_argument("--device", default="cpu", help="cpu or cuda (peers run on the CPU only)")
ap.add_argument("--profile", action="store_true", help="profile one sparse step of each architecture")
ap.add_argument("--sweep", type=int, default=0, help="also time a sweep of N SAEs (one pass vs N runs; stacked or not)")
ap.add_argument("--sweep-arch", default="batchtopk", choices=["relu", "batchtopk"], help="the sweep's architecture")
ap.add_argument("--crossover", action="store_true", help="also time one ReLU step dense vs sparse over L0")
ap.add_argument("--json", help="write every repeat's rows here too")
ap.add_argument("--peer-python", help="a throwaway venv's python with sae-lens / dictionary-learning / overcomplete")
args = ap.parse_args()
torch.set_num_threads(args.threads)
d, m, B, S, W = args.d, args.m, args.batch, args.steps, args.warmup
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

def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_stime, r.ru_minflt

# the dense bound: five GEMMs of a step, into preallocated outputs
A, We, Wd, G, Fm = (torch.randn(*s, device=dev) for s in [(B, d), (d, m), (m, d), (B, d), (B, m)])
O1, O2, O3, O4, O5 = (torch.empty(*s, device=dev) for s in [(B, m), (B, d), (B, m), (m, d), (d, m)])
def gemms(steps):
    for _ in range(steps):
        torch.mm(A, We, out=O1); torch.mm(Fm, Wd, out=O2); torch.mm(G, Wd.t(), out=O3); torch.mm(Fm.t(), G, out=O4)
        torch.mm(A.t(), Fm, out=O5)
def bound():
    gemms(3); sync(); u = usage(); t = time.perf_counter(); gemms(S); sync()
    t, v = time.perf_counter() - t, usage()
    return dict(samples_per_s=S * B / t, steps=S, sys_s_per_step=(v[0] - u[0]) / S, faults_per_step=(v[1] - u[1]) / S)

def cfg_for(arch, l0, kernel):
    return SAEConfig(arch=arch, expansion=m // d, l1=args.relu_l1, k=l0, batch_size=B, max_steps=W + S, log_every=W,
                     threads=args.threads, device=args.device, kernel=kernel, lr=args.lr)

def initial_sae(arch, l0):
    "The same starting SAE for every method: seed 0, b_dec at the trainer's median, ReLU b_enc placed for L0 = l0."
    torch.manual_seed(0)
    s = build_sae(arch, d, m, kernel="auto", **({"l1": args.relu_l1} if arch == "relu" else {"k": l0}))
    x = Normaliser.fit(X)(X)
    s.init_from_data(x[batch_indices(len(x), 0, cfg_for(arch, l0, "auto"), 0)][:4096])
    if arch == "relu":
        with torch.no_grad():
            pre = s.pre_acts(x[:1024])
            s.b_enc.data = -torch.quantile(pre[:256].flatten(), 1 - l0 / m) * torch.ones(m)
    return s

def ours(arch, kernel):
    "`train_sae` for W + S steps; samples/s over the last S steps from its log (logged every W steps)."
    _, log = train_sae(X, cfg_for(arch, args.l0, kernel), progress=False, sae=initial_sae(arch, args.l0))
    seen = (log["step"] * B).to_numpy(); el = seen / log["samples_per_s"].to_numpy()     # the trainer's clock
    d_ = lambda c: float(log[c].iloc[-1] - log[c].iloc[0]) / S if c in log else None      # over the timed steps
    return dict(samples_per_s=(seen[-1] - seen[0]) / (el[-1] - el[0]), steps=S, l0=float(log["l0"].iloc[1:].mean()),
                fve=float(log["fve"].iloc[-1]), sys_s_per_step=d_("system_s"), faults_per_step=d_("minor_faults"))

def bare(arch):
    "Plain torch: autograd through the dense code, default Adam, the decoder constraint."
    s0 = initial_sae(arch, args.l0)
    x_all = Normaliser.fit(X)(X).to(dev)
    W_enc, b_enc, W_dec, b_dec = (torch.nn.Parameter(p.detach().clone().to(dev)) for p in (s0.W_enc, s0.b_enc, s0.W_dec, s0.b_dec))
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=args.lr)
    for i in range(W + S):
        if i == W: sync(); u = usage(); t = time.perf_counter()
        xb = x_all[(i * B) % len(x_all):][:B]
        pre = (xb - b_dec) @ W_enc + b_enc
        if arch == "relu":
            f = F.relu(pre)
            loss = ((xb - (f @ W_dec + b_dec)) ** 2).sum(-1).mean() + args.relu_l1 * f.sum(-1).mean()
        else:
            flat = F.relu(pre).flatten(); v, idx = flat.topk(args.l0 * B)
            f = torch.zeros_like(flat).scatter(0, idx, v).view_as(pre)
            loss = ((xb - (f @ W_dec + b_dec)) ** 2).sum(-1).mean()
        opt.zero_grad(); loss.backward()
        with torch.no_grad(): W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad(): W_dec.data = F.normalize(W_dec.data, dim=1)
    sync(); t, v = time.perf_counter() - t, usage()
    return dict(samples_per_s=S * B / t, steps=S, l0=float((f > 0).float().sum(-1).mean()),
                sys_s_per_step=(v[0] - u[0]) / S, faults_per_step=(v[1] - u[1]) / S)

def peers():
    "One subprocess of scripts/sae_peers.py: its rows (each peer's own clock over S steps)."
    r = subprocess.run([args.peer_python, str(Path(__file__).with_name("sae_peers.py")), "--steps", str(S),
                        "--threads", str(args.threads), "--d", str(d), "--m", str(m), "--batch", str(B),
                        "--archs", *args.archs, "--k", str(args.l0)], capture_output=True, text=True)
    if r.returncode: print(r.stderr[-1500:], file=sys.stderr)
    return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]

methods = {"dense bound (5 GEMMs)": bound}
for a in args.archs:
    methods[f"ours sparse, {a}"] = (lambda a=a: ours(a, "sparse"))
    if args.dense: methods[f"ours dense, {a}"] = (lambda a=a: ours(a, "dense"))
    if args.bare: methods[f"bare autograd loop, {a}"] = (lambda a=a: bare(a))
if args.peer_python and dev.type == "cpu": methods["peers"] = peers

if args.profile:
    from medsae.sae_training import _optimizer
    print(f"\none sparse step by phase (median of 10 after {W} warm-up steps; d {d}, m {m}, batch {B}):")
    print("| arch | phase | ms | system ms | minor faults |")
    print("|---|---|---|---|---|")
    for arch in args.archs:
        s = initial_sae(arch, args.l0).to(dev); s.kernel = "sparse"
        x = Normaliser.fit(X)(X).to(dev)
        opt = _optimizer(s, cfg_for(arch, args.l0, "sparse"))
        rec = {}
        for i in range(W + 10):
            xb = x[(i * B) % len(x):][:B]
            marks = [(time.perf_counter(), *usage())]
            out = s.loss(xb); marks.append((time.perf_counter(), *usage()))
            opt.zero_grad(set_to_none=True); out["loss"].backward(); marks.append((time.perf_counter(), *usage()))
            s.remove_parallel_grad(); opt.step(); marks.append((time.perf_counter(), *usage()))
            s.renorm_decoder(); marks.append((time.perf_counter(), *usage()))
            if i < W: continue
            for name, a, b in zip(("loss (forward)", "backward", "optimiser", "decoder constraint"), marks, marks[1:]):
                rec.setdefault(name, []).append((b[0] - a[0], b[1] - a[1], b[2] - a[2]))
        for name, v in rec.items():
            med = [statistics.median(c) for c in zip(*v)]
            print(f"| {arch} | {name} | {1e3 * med[0]:.1f} | {1e3 * med[1]:.1f} | {med[2]:.0f} |")
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = s.loss(xb); opt.zero_grad(set_to_none=True); out["loss"].backward(); s.remove_parallel_grad()
            opt.step(); s.renorm_decoder()
        print(f"\n{arch}: the largest allocations of one step (torch.profiler, self CPU memory):")
        print(prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=8, max_name_column_width=40))

rows = []
names = list(methods)
for rep in range(args.repeats):
    order = names[rep % len(names):] + names[:rep % len(names)]
    for name in order:
        got = methods[name]()
        for g in (got if isinstance(got, list) else [dict(got, method=name)]):
            rows.append(dict(dict(sys_s_per_step=None, faults_per_step=None), **g, repeat=rep))
        done = ", ".join(f"{r['method']} {r['samples_per_s']:.0f}" for r in rows if r["repeat"] == rep)
        print(f"repeat {rep + 1}/{args.repeats}: {done}", file=sys.stderr, flush=True)
bnd = {r["repeat"]: r["samples_per_s"] for r in rows if r["method"] == "dense bound (5 GEMMs)"}
for r in rows: r["x_bound"] = r["samples_per_s"] / bnd[r["repeat"]]

def spread(v, nd=0): return f"{statistics.median(v):,.{nd}f} ({min(v):,.{nd}f}-{max(v):,.{nd}f})"
print(f"\nd={d} m={m} batch={B} device={dev} threads={torch.get_num_threads()}; {args.repeats} interleaved repeats of "
      f"{W} warm-up + {S} timed steps each; median (min-max) over the repeats; x bound: the ratio to the dense bound "
      f"of the same repeat ({statistics.median(bnd.values()) * flops / B / 1e9:.1f} GFLOP/s in the median)")
print("| method | L0 | samples/s | x bound | x bound, worst repeat | system ms / step | minor faults / step |")
print("|---|---|---|---|---|---|---|")
for name in dict.fromkeys(r["method"] for r in rows):
    g = [r for r in rows if r["method"] == name]
    l0 = f"{statistics.median([r['l0'] for r in g]):.0f}" if g[0].get("l0") is not None else "-"
    sy = f"{1e3 * statistics.median([r['sys_s_per_step'] for r in g]):.1f}" if g[0]["sys_s_per_step"] is not None else "-"
    fa = f"{statistics.median([r['faults_per_step'] for r in g]):,.0f}" if g[0]["faults_per_step"] is not None else "-"
    print(f"| {name} | {l0} | {spread([r['samples_per_s'] for r in g])} | {spread([r['x_bound'] for r in g], 2)} | "
          f"{min(r['x_bound'] for r in g):.2f} | {sy} | {fa} |")

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
