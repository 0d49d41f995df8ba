"""Benchmark of embedding extraction against the bare model forward, on this machine's CPU (or GPU with --device).

For each encoder: (a) bare forward: images/s of `encode_images` on one pre-made batch, repeated; (b) extraction:
images/s of the full pipeline (PNG decoding, preprocessing, DataLoader workers, forward, store writes) on a PhantomCXR
set with the same batch size; (c) extraction reading the pixels the encoder's training decoded (`PixelCache`, as the
default run does; filled before timing). Prints the three and the ratios to (a); asserts nothing.

    python scripts/bench_extract.py [--n 256] [--batch-size 32] [--workers 1] [--device cpu] [--phantom DIR]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from medsae.config import EncoderTrainingConfig, PhantomConfig
from medsae.encoder_training import build_phantom_model
from medsae.encoders import MedCLIPEncoder, build_medclip
from medsae.extract import extract
from medsae.phantomcxr import generate_phantom

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--n", type=int, default=256, help="images per measurement (default 256)")
ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--workers", type=int, default=1, help="DataLoader workers for extraction (default 1)")
ap.add_argument("--device", default="cpu")
ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
ap.add_argument("--phantom", help="an existing PhantomCXR folder (default: generate a small one)")
ap.add_argument("--encoders", default="medclip-resnet50,default", help="comma-separated: medclip-resnet50, default")
args = ap.parse_args()
if args.threads: torch.set_num_threads(args.threads)
dev = torch.device(args.device)

def bare(enc, n, bs):
    size = enc._transform.size
    x = torch.randn(bs, 1, size, size, device=dev)
    enc.encode_images(x)                                  # warm-up
    if dev.type == "cuda": torch.cuda.synchronize()
    t, done = time.time(), 0
    while done < n:
        with torch.autocast("cuda", dtype=torch.float16, enabled=dev.type == "cuda"): enc.encode_images(x)
        done += bs
    if dev.type == "cuda": torch.cuda.synchronize()
    return done / (time.time() - t)

with tempfile.TemporaryDirectory() as d:
    root = Path(args.phantom) if args.phantom else Path(d) / "p"
    if not args.phantom:
        generate_phantom(root, PhantomConfig(n_train=args.n + args.batch_size, n_valid=1, n_test=1), progress=False)
    print(f"device {dev}, torch threads {torch.get_num_threads()}, cores {os.cpu_count()}, batch {args.batch_size}, "
          f"workers {args.workers}, images {args.n}")
    for name in args.encoders.split(","):
        torch.manual_seed(0)
        if name == "medclip-resnet50": enc = build_medclip("resnet50", text=False)
        else:
            ecfg = EncoderTrainingConfig()                   # the default encoder, at its default input size
            enc = MedCLIPEncoder(build_phantom_model(ecfg), "medclip-phantom (random)", image_size=ecfg.image_size)
        enc.to(dev)
        b = bare(enc, args.n, args.batch_size)
        import pandas as pd
        from medsae.extract import dataset_table
        table = dataset_table(root, ("train",)).iloc[: args.n + args.batch_size]
        extract(enc, root, Path(d) / f"warm-{name}", batch_size=args.batch_size, workers=args.workers, progress=False,
                table=table.iloc[: args.batch_size])
        t = time.time()
        extract(enc, root, Path(d) / f"s-{name}", batch_size=args.batch_size, workers=args.workers, progress=False,
                table=table.iloc[args.batch_size: args.batch_size + args.n])
        e = args.n / (time.time() - t)
        # decoded once: the pixels the encoder's training keeps (load_pairs into a PixelCache), as the default run does
        from medsae.data import PixelCache
        from medsae.encoder_training import load_pairs
        pc = PixelCache(Path(d) / f"pixels-{enc._transform.size}")
        if not (pc.folder / "train.npy").exists(): load_pairs(root, "train", enc._transform.size, progress=False, cache=pc)
        t = time.time()
        extract(enc, root, Path(d) / f"c-{name}", batch_size=args.batch_size, workers=args.workers, progress=False,
                table=table.iloc[args.batch_size: args.batch_size + args.n], pixels=pc)
        c = args.n / (time.time() - t)
        print(f"{enc.name:28s} bare forward {b:8.1f} img/s   extraction, decoding PNGs {e:8.1f} img/s (ratio {e / b:4.2f})"
              f"   from the pixel cache {c:8.1f} img/s (ratio {c / b:4.2f})")
