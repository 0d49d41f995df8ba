"""Benchmark of one training step of the default encoder (`encoder_training.train_medclip`'s work: image and text
towers, logits, semantic-matching loss, backward, AdamW), on this machine's CPU, with the convolutions in NCHW
(PyTorch's default) and in channels-last (NHWC, what `train_medclip` uses), each in a fresh process. Prints seconds
per step, user and system CPU seconds and minor page faults per step; asserts nothing.

Keeping freed memory in the process (glibc `mallopt(M_MMAP_MAX, 0)`) removed the page faults and the system time
but added as much user time on the 2-core machine it was tried on (fewer transparent huge pages), so it is not used.

    python scripts/bench_encoder_step.py [--steps 10] [--warmup 3] [--threads 2]
"""
import argparse
import json
import subprocess
import sys

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--steps", type=int, default=10, help="timed steps per set-up (default 10)")
ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the default run's)")
ap.add_argument("--one", help=argparse.SUPPRESS)            # internal: run one set-up in this process
a = ap.parse_args()

SETUPS = ("NCHW", "channels-last")

if a.one:
    import resource
    import time

    import torch
    from medsae.config import EncoderTrainingConfig
    from medsae.encoder_training import build_phantom_model, semantic_matching_loss
    torch.set_num_threads(a.threads)
    cfg = EncoderTrainingConfig()
    torch.manual_seed(0)
    model = build_phantom_model(cfg).train()
    if a.one == "channels-last": model = model.to(memory_format=torch.channels_last)
    x = torch.randn(cfg.batch_size, 1, cfg.image_size, cfg.image_size)
    emb = torch.randn(cfg.batch_size, model.text_model.projection_head.in_features)   # MiniLM sentence embeddings
    y = (torch.rand(cfg.batch_size, 21) < 0.2).float()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)

    def step():
        logits = model.compute_logits(model.encode_image(x), model.encode_text(emb))
        loss = semantic_matching_loss(logits, y, y, cfg.target_temperature)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    for _ in range(a.warmup): step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(a.steps): step()
    t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps(dict(s_per_step=t / a.steps, user_s=(r1.ru_utime - r0.ru_utime) / a.steps,
                          sys_s=(r1.ru_stime - r0.ru_stime) / a.steps, minflt=(r1.ru_minflt - r0.ru_minflt) / a.steps)))
    sys.exit(0)

print(f"default encoder, one training step (batch 128, 128 px, {a.threads} threads), {a.steps} steps after {a.warmup}")
print(f"{'set-up':16s} {'s/step':>8s} {'user s':>8s} {'sys s':>8s} {'faults/step':>12s} {'vs first':>9s}")
first = None
for name in SETUPS:
    out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(a.steps), "--warmup", str(a.warmup),
                          "--threads", str(a.threads)], capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    first = first or r["s_per_step"]
    print(f"{name:16s} {r['s_per_step']:8.3f} {r['user_s']:8.3f} {r['sys_s']:8.3f} {r['minflt']:12,.0f} "
          f"{first / r['s_per_step']:8.2f}x")
