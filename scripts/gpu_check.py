"""GPU-ready check: one table of what matters on an accelerator, in a few minutes (run by scripts/gpu_check.sh).

Rows: (1) extraction of MedCLIP-ResNet50 at 224 px (random weights: the speed does not depend on them), bare forward
and the full extraction pipeline on a generated PhantomCXR set, images/s and their ratio; (2) SAE training steps at
the paper's shapes (d 512, 8192 latents, batch 1024), ReLU at L0 ~ 64 and BatchTopK k = 64, dense and sparse
kernels, samples/s (and the dense bound: the five GEMMs of a step); (3) the naming path on a tiny random Gemma 3
(`medsae.vlm.tiny_gemma3` through `TransformersVLM`), requests/s. `--quick` shrinks everything so that CI can run
it on a CPU in well under a minute; it still runs every code path.

    python scripts/gpu_check.py [--device cuda] [--quick]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
ap.add_argument("--quick", action="store_true", help="tiny shapes and counts (CI on a CPU)")
ap.add_argument("--threads", type=int, default=None)
ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="extraction's decoding processes")
args = ap.parse_args()
if args.threads: torch.set_num_threads(args.threads)
dev = torch.device(args.device)
Q = args.quick
rows = []

def sync():
    if dev.type == "cuda": torch.cuda.synchronize()

def row(what, shape, rate, unit, note=""):
    rows.append((what, shape, rate, unit, note))
    print(f"# {what} [{shape}]: {rate:.1f} {unit} {note}", flush=True)

# (1) extraction, MedCLIP-ResNet50 at 224
from medsae.config import PhantomConfig
from medsae.encoders import build_medclip
from medsae.extract import dataset_table, extract
from medsae.phantomcxr import generate_phantom

n_img, bs = (4, 2) if Q else (512, 64)
with tempfile.TemporaryDirectory() as d:
    root = Path(d) / "p"
    generate_phantom(root, PhantomConfig(n_train=n_img + bs, n_valid=1, n_test=1), progress=False)
    torch.manual_seed(0)
    enc = build_medclip("resnet50", text=False).to(dev)
    size = enc._transform.size
    x = torch.randn(bs, 1, size, size, device=dev)
    with torch.autocast("cuda", dtype=torch.float16, enabled=dev.type == "cuda"): enc.encode_images(x)
    sync(); t, done = time.perf_counter(), 0
    while done < n_img:
        with torch.autocast("cuda", dtype=torch.float16, enabled=dev.type == "cuda"): enc.encode_images(x)
        done += bs
    sync(); bare = done / (time.perf_counter() - t)
    table = dataset_table(root, ("train",))
    extract(enc, root, Path(d) / "warm", batch_size=bs, workers=args.workers, progress=False, table=table.iloc[:bs])
    t = time.perf_counter()
    extract(enc, root, Path(d) / "s", batch_size=bs, workers=args.workers, progress=False, table=table.iloc[bs: bs + n_img])
    ext = n_img / (time.perf_counter() - t)
    row("MedCLIP-ResNet50 bare forward", f"{size}px, batch {bs}", bare, "img/s")
    row("MedCLIP-ResNet50 extraction", f"{size}px, batch {bs}, {n_img} PNGs, {args.workers} workers", ext, "img/s", f"{ext / bare:.2f} of bare")

# (2) SAE training steps at the paper's shapes, dense and sparse
from medsae.sae import build_sae, code_dense

d_, m_, B, S = (64, 512, 256, 3) if Q else (512, 8192, 1024, 30 if dev.type == "cpu" else 200)
x = torch.randn(B, d_, device=dev)
A, We, Wd, G, Fm = (torch.randn(*s, device=dev) for s in [(B, d_), (d_, m_), (m_, d_), (B, d_), (B, m_)])
def gemms(): torch.mm(A, We); torch.mm(Fm, Wd); torch.mm(G, Wd.t()); torch.mm(Fm.t(), G); torch.mm(A.t(), Fm)
for _ in range(3): gemms()        # every shape once before timing (cuBLAS picks its kernels on first use)
sync(); t = time.perf_counter()
for _ in range(S): gemms()
sync(); bound = S * B / (time.perf_counter() - t)
row("SAE dense bound (5 GEMMs)", f"d {d_}, m {m_}, batch {B}", bound, "samples/s")
k = max(1, m_ // 128)
for arch in ("relu", "batchtopk"):
    for kernel in ("dense", "sparse"):
        torch.manual_seed(0)
        s = build_sae(arch, d_, m_, kernel=kernel, **({"l1": 0.3} if arch == "relu" else {"k": k})).to(dev)
        if arch == "relu":
            with torch.no_grad(): s.b_enc.fill_(-float(torch.quantile(s.pre_acts(x[:128]).flatten().float(), 1 - k / m_)))
        opt = torch.optim.Adam(s.parameters(), lr=1e-4, fused=dev.type in ("cpu", "cuda"))
        def step():
            out = s.loss(x); opt.zero_grad(); out["loss"].backward(); s.remove_parallel_grad(); opt.step(); s.renorm_decoder()
            return out
        for _ in range(3): step()
        sync(); t = time.perf_counter()
        for _ in range(S): out = step()
        sync(); r = S * B / (time.perf_counter() - t)
        with torch.no_grad(): l0 = float((code_dense(out["f"]) > 0).float().sum(-1).mean())
        row(f"SAE {arch} {kernel}", f"d {d_}, m {m_}, batch {B}, L0 {l0:.0f}", r, "samples/s", f"{r / bound:.2f} x bound")

# sweep members stacked: the encoder products of 4 members as one GEMM vs 4 (what stacking a sweep would save)
Ws = [torch.randn(d_, m_, device=dev) for _ in range(4)]; Wst = torch.cat(Ws, 1)
def rate(f):
    for _ in range(3): f()
    sync(); t = time.perf_counter()
    for _ in range(S): f()
    sync(); return S * B / (time.perf_counter() - t)
sep, st = rate(lambda: [torch.mm(x, w) for w in Ws]), rate(lambda: torch.mm(x, Wst))
row("sweep encoder products, 4 separate GEMMs", f"d {d_}, m {m_} x 4, batch {B}", sep, "samples/s")
row("sweep encoder products, one stacked GEMM", f"d {d_}, m {4 * m_}, batch {B}", st, "samples/s", f"{st / sep:.2f} x separate")

# a sweep of 4 members at the paper's shapes (one epoch of S steps each): 4 separate train_sae runs, one sweep pass
# with the members one by one, and one pass with them stacked (`sae.sweep_stack`); training loops only (setup, the
# held-out curves and the final evaluation excluded), and the whole call as a user sees it
from medsae.config import SAEConfig
from medsae.sae_training import sweep, train_sae

Xs = torch.randn(B * S, d_, device=dev) @ torch.randn(d_, d_, device=dev) / d_ ** 0.5 + 1
Xv = torch.randn(2048, d_, device=dev) @ torch.randn(d_, d_, device=dev) / d_ ** 0.5 + 1
for arch, knob in (("relu", dict(sweep_l1=[1.0, 3.0, 10.0, 30.0])), ("batchtopk", dict(sweep_k=[k // 2, k, 2 * k, 4 * k]))):
    base = SAEConfig(arch=arch, batch_size=B, sweep_epochs=1, epochs=1, sweep_expansion=[m_ // d_], lr=3e-4,
                     device=str(dev), threads=torch.get_num_threads(), log_every=10 ** 6, checkpoint_every=0, **knob)
    members = base.sweep_l1 if arch == "relu" else base.sweep_k
    sweep(Xs[: B * 3], Xv, base.model_copy(update=dict(sweep_stack="on")), progress=False)     # warm every kernel
    sync(); t = time.perf_counter(); loop = 0.0
    for v in members:
        _, log = train_sae(Xs, base.model_copy(update=dict(expansion=m_ // d_, **({"l1": v} if arch == "relu" else {"k": v}))), progress=False)
        loop += S * B / float(log.samples_per_s.iloc[-1])
    sync(); sep_wall = time.perf_counter() - t
    row(f"sweep {arch}, {len(members)} separate runs", f"d {d_}, m {m_}, batch {B}, {S} steps", len(members) * S * B / loop,
        "member-samples/s", f"loop {loop:.2f} s, call {sep_wall:.2f} s")
    got = {}
    for st in ("off", "on"):
        sync(); t = time.perf_counter()
        tab, ms = got[st] = sweep(Xs, Xv, base.model_copy(update=dict(sweep_stack=st)), progress=False)
        sync(); wall = time.perf_counter() - t
        lp = tab.attrs["seconds"] - tab.attrs["curve_seconds"]
        same = ""
        if st == "on":     # the same members either way, to floating-point tolerance
            (t0_, m0), (t1_, m1) = got["off"], got["on"]
            dw = max(float((m0[n].W_dec - m1[n].W_dec).detach().abs().max()) for n in m0)
            same = f"; vs one by one: max |dW_dec| {dw:.1e}, max |dFVE| {float((t0_.fve - t1_.fve).abs().max()):.1e}"
        row(f"sweep {arch}, one pass, {'stacked' if st == 'on' else 'one by one'}", f"{len(members)} members, {S} steps",
            len(members) * S * B / lp, "member-samples/s",
            f"loop {lp:.2f} s ({lp / loop:.2f} of separate), call {wall:.2f} s ({wall / sep_wall:.2f}){same}")

# (3) the naming path on a tiny Gemma 3
from PIL import Image

from medsae.vlm import TransformersVLM, VLMRequest, tiny_gemma3

with tempfile.TemporaryDirectory() as d:
    tiny = tiny_gemma3(Path(d) / "tiny-gemma3")
    vlm = TransformersVLM(tiny, device=str(dev), max_new_tokens=8, batch_size=4, local_files_only=True)
    imgs = [Image.new("L", (64, 64), c).convert("RGB") for c in (40, 120, 200)]
    reqs = [VLMRequest("You name concepts.", f"What do these share? ({i})", imgs) for i in range(4 if Q else 32)]
    vlm.generate(reqs[:2])
    sync(); t = time.perf_counter()
    res = vlm.generate(reqs)
    sync(); r = len(reqs) / (time.perf_counter() - t)
    row("naming, tiny Gemma 3 (TransformersVLM)", f"{len(reqs)} requests, 3 images, 8 new tokens", r, "req/s",
        f"{sum(x.ok for x in res)}/{len(res)} answered; dtype {vlm.dtype}")

name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
print(f"\ngpu_check on {dev} ({name}), torch {torch.__version__}{', --quick' if Q else ''}")
print("| what | shape | rate | unit | note |")
print("|---|---|---|---|---|")
for w, sh, r, u, n in rows: print(f"| {w} | {sh} | {r:.1f} | {u} | {n} |")
