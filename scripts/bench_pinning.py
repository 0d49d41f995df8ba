"""What pinning the numeric paths costs (nbs/04_numerics): the three kernels that take a cold run's time, each in a
fresh process with the pins on (`MEDSAE_PIN_CPU=1`, the default) and off (`MEDSAE_PIN_CPU=0`), interleaved
round-robin over repeats so that a slow minute of the machine hits both alike. Prints the median and the min-max of
each, and the median of the per-repeat ratio pinned / unpinned; asserts nothing.

- encoder step: one training step of the default encoder (96 px, batch 128: `train_medclip`'s work, fused AdamW);
- SAE step: one step of the default run's SAE (ReLU, 512 -> 8,192, batch 128, as the sweep trains);
- extraction: the default encoder's forward on a batch of 256 images (what the extract stage computes).

    python scripts/bench_pinning.py [--repeats 5] [--steps 10] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--repeats", type=int, default=5, help="processes of each setting, interleaved (default 5)")
ap.add_argument("--steps", type=int, default=10, help="timed steps per kernel and process (default 10)")
ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the default run's)")
ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)   # internal: time the kernels in this process
a = ap.parse_args()

if a.one:
    import time

    import medsae  # noqa: F401  (pins, or not, by MEDSAE_PIN_CPU)
    import torch
    from medsae.config import EncoderTrainingConfig, SAEConfig
    from medsae.encoder_training import normalise_uint8, semantic_matching_loss
    from medsae.encoders import build_phantom_model
    from medsae.numerics import numerics_state
    from medsae.sae_training import _optimizer, sae_from_config
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    cfg = EncoderTrainingConfig()
    torch.manual_seed(0)
    model = build_phantom_model(cfg).train().to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (cfg.batch_size, 1, cfg.image_size, cfg.image_size), generator=g, dtype=torch.uint8)
    emb = torch.randn(cfg.batch_size, model.text_model.projection_head.in_features, generator=g)
    y = (torch.rand(cfg.batch_size, 21, generator=g) < 0.2).float()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    def enc_step():
        loss = semantic_matching_loss(model.compute_logits(model.encode_image(normalise_uint8(x)), model.encode_text(emb)),
                                      y, y, cfg.target_temperature)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    scfg = SAEConfig()
    sae = sae_from_config(scfg, 512); sae.train()
    sopt = _optimizer(sae, scfg)
    xs = torch.randn(scfg.sweep_batch_size, 512, generator=g)
    def sae_step():                                     # train_sae's step: loss, backward, Adam, decoder norms
        loss = sae.loss(xs)["loss"]
        sopt.zero_grad(set_to_none=True); loss.backward(); sae.remove_parallel_grad(); sopt.step(); sae.renorm_decoder()
    model_eval = build_phantom_model(cfg).eval()
    xe = normalise_uint8(torch.randint(0, 256, (256, 1, cfg.image_size, cfg.image_size), generator=g, dtype=torch.uint8))
    def extract():
        with torch.no_grad(): model_eval.encode_image(xe)
    out = {}
    for name, f in (("encoder step", enc_step), ("SAE step", sae_step), ("extraction (256 images)", extract)):
        for _ in range(2): f()
        t0 = time.perf_counter()
        for _ in range(a.steps): f()
        out[name] = (time.perf_counter() - t0) / a.steps
    print(json.dumps(dict(seconds=out, pinned=numerics_state()["pinned"])))
    sys.exit(0)

rows = {}
for r in range(a.repeats):
    for pin in ("1", "0"):
        env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR",
                                                                 "OPENBLAS_CORETYPE")}
        env["MEDSAE_PIN_CPU"] = pin
        res = json.loads(subprocess.run([sys.executable, __file__, "--one", "--steps", str(a.steps), "--threads",
                                         str(a.threads)], capture_output=True, text=True, check=True, env=env)
                         .stdout.strip().splitlines()[-1])
        assert res["pinned"] == (pin == "1")
        for k, v in res["seconds"].items(): rows.setdefault(k, {}).setdefault(pin, []).append(v)
print(f"pinned (MEDSAE_PIN_CPU=1) against unpinned, {a.repeats} interleaved processes each, {a.steps} steps, "
      f"{a.threads} threads; seconds per step: median [min-max]")
print(f"{'kernel':26s} {'pinned':>22s} {'unpinned':>22s} {'pinned / unpinned':>18s}")
fmt = lambda v: f"{statistics.median(v):.4f} [{min(v):.4f}-{max(v):.4f}]"
for k, d in rows.items():
    ratio = [p / u for p, u in zip(d["1"], d["0"])]
    print(f"{k:26s} {fmt(d['1']):>22s} {fmt(d['0']):>22s} {statistics.median(ratio):9.2f}x [{min(ratio):.2f}-{max(ratio):.2f}]")
