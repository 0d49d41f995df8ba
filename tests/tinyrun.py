"""A run small enough to kill and resume many times: a CheXpert-layout dataset of noise images written in a second
(no CT rendering), a randomly initialised default encoder saved as a checkpoint, and the config that points a run at
both (`data.root`, `encoder.weights`), so the phantom and encoder stages do not apply. Used by test_faults.py and
test_bad_input.py."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import TINY

RUN_SET = [*TINY, "metrics.ablation=false", "controls.run=false", "encoder.batch_size=16", "encoder.workers=0", "encoder.device=cpu",
           "sae.sweep=false", "sae.checkpoint_every=2", "sae.log_every=2", "sae.threads=1", "naming.min_active=3"]
"The conftest's tiny run, without the ablation, the sweep and the controls, with an SAE checkpoint every second step."

PHRASES = ["cardiomegaly", "pleural effusion", "pneumothorax", "support devices", "rib fracture", "lung opacity",
           "pulmonary edema", "atelectasis", "consolidation", "no acute findings", "chest tube", "pacemaker"]


def make_dataset(root, n=(160, 40, 40), size=48, seed=0) -> Path:
    "A CheXpert-layout dataset with `train/valid/test.csv`, grey noise PNGs with a blob per label, and a vocabulary."
    from PIL import Image
    from medsae.config import CHEXPERT_LABELS
    root, rng = Path(root), np.random.default_rng(seed)
    k = 0
    for split, m in zip(("train", "valid", "test"), n):
        rows = []
        for _ in range(m):
            k += 1
            lab = rng.choice([1.0, 0.0, -1.0, np.nan], size=len(CHEXPERT_LABELS), p=[0.3, 0.4, 0.1, 0.2])
            img = rng.normal(0.5, 0.1, (size, size))
            for j in np.flatnonzero(lab == 1): img[(j * 3) % size: (j * 3) % size + 4, :] += 0.3   # a band per label
            rel = f"Tiny/{split}/patient{k:05d}/study1/view1_frontal.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(root / rel)
            rows.append({"Path": rel, "Sex": rng.choice(["Male", "Female"]), "Age": int(rng.integers(20, 90)),
                         "Frontal/Lateral": "Frontal", "AP/PA": rng.choice(["AP", "PA"]),
                         **{c: ("" if np.isnan(v) else str(int(v))) for c, v in zip(CHEXPERT_LABELS, lab)}})
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    pd.DataFrame({"phrase": PHRASES, "count": 1}).to_csv(root / "vocabulary.csv", index=False)
    return root


def make_weights(path, seed=0) -> Path:
    "A randomly initialised default encoder (64 px, narrow ResNet) saved as its checkpoint (`.safetensors` + `.json`)."
    import torch
    from medsae.config import EncoderTrainingConfig
    from medsae.encoders import build_phantom_model, save_phantom_encoder
    cfg = EncoderTrainingConfig(image_size=64, widths=[8, 16, 32, 64])
    torch.manual_seed(seed)
    return save_phantom_encoder(build_phantom_model(cfg), Path(path), dict(training=cfg.model_dump(mode="json")))


def run_args(out_root, data, weights, *extra) -> list[str]:
    "`--set` arguments of a tiny run under `out_root` on the dataset `data` embedded with `weights`."
    sets = [*RUN_SET, f"data.root={data}", f"encoder.weights={weights}", f"run.out_root={out_root}", *extra]
    return [a for o in sets for a in ("--set", o)]


def medsae_cmd(*args) -> list[str]:
    "The console script with its arguments (the venv's `medsae` next to this interpreter)."
    return [str(Path(sys.executable).parent / "medsae"), *map(str, args)]


PRELOAD = ("medsae", "torch", "torchvision", "torchvision.models", "numpy", "pandas", "scipy.sparse", "sklearn.metrics", "matplotlib.pyplot", "safetensors.torch",
           "transformers", "medsae.cli", "medsae.stages", "medsae.extract", "medsae.sae_training", "medsae.activations",
           "medsae.evaluation", "medsae.naming", "medsae.naming_eval", "medsae.encoders", "papermill")

_ZYGOTE = r'''
import importlib, json, os, signal, sys, traceback
for m in sys.argv[1:]: importlib.import_module(m)
from medsae.cli import main
signal.signal(signal.SIGCHLD, signal.SIG_IGN)          # finished children are reaped by the kernel: no zombies
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the job waits for its own children (Papermill's kernel)
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1); os.dup2(fd, 2)
            sys.stdin = open(os.devnull)
            os.chdir(job["cwd"])
            rc = main(job["argv"]) or 0
        except SystemExit as e: rc = e.code if isinstance(e.code, int) else 1
        except BaseException: traceback.print_exc()
        finally:
            try: sys.stdout.flush(); sys.stderr.flush()
            except BaseException: pass
            with open(job["rc"] + ".tmp", "w") as f: f.write(str(rc))
            os.replace(job["rc"] + ".tmp", job["rc"])
            os._exit(rc)
    sys.stdout.write(f"{pid}\n"); sys.stdout.flush()
'''


class Zygote:
    """A process that has imported torch, pandas, Papermill and every medsae module once, and forks one child per CLI
    call: each call is a separate process (it can be SIGKILLed like any job) without paying the imports again. The
    zygote itself computes nothing, so forking it is safe (no thread pool to inherit)."""
    def __init__(self, env: dict | None = None):
        import os
        import subprocess
        e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1", **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE, *PRELOAD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=e)
        self.n = 0

    def start(self, argv, log_dir, cwd=None) -> "Job":
        import json
        self.n += 1
        log_dir = Path(log_dir); log_dir.mkdir(parents=True, exist_ok=True)
        job = dict(argv=[str(a) for a in argv], log=str(log_dir / f"job{self.n}.log"), rc=str(log_dir / f"job{self.n}.rc"),
                   cwd=str(cwd or Path.cwd()))
        self.proc.stdin.write(json.dumps(job) + "\n"); self.proc.stdin.flush()
        return Job(int(self.proc.stdout.readline()), Path(job["log"]), Path(job["rc"]))

    def run(self, argv, log_dir, cwd=None, timeout=600) -> "Job":
        "Start a call and wait for it; returns the finished job (`.rc`, `.log`)."
        j = self.start(argv, log_dir, cwd)
        j.wait(timeout)
        return j

    def close(self):
        self.proc.stdin.close(); self.proc.wait(30)


class Job:
    "One forked CLI call: wait for it, or SIGKILL it with every process it started."
    def __init__(self, pid: int, log: Path, rc_file: Path): self.pid, self.log, self.rc_file = pid, log, rc_file

    @property
    def done(self) -> bool: return self.rc_file.exists()

    @property
    def rc(self) -> int | None: return int(self.rc_file.read_text()) if self.done else None

    def alive(self) -> bool:
        import psutil
        try: return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess: return False

    def wait(self, timeout: float = 600, until: float | None = None) -> bool:
        "Wait until the job ends (True) or `until` seconds pass (False); fails after `timeout`."
        import time
        t0 = time.monotonic()
        while not self.done and self.alive():
            if until is not None and time.monotonic() - t0 >= until: return False
            if time.monotonic() - t0 > timeout: raise TimeoutError(f"job {self.pid} still running: {self.log}")
            time.sleep(0.02)
        while not self.done and self.alive(): time.sleep(0.02)
        return True

    def kill(self) -> bool:
        "SIGKILL the job and all its descendants (a crash of the whole job); False when it had already finished."
        import psutil
        try:
            p = psutil.Process(self.pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess: return False
        for q in procs:
            try: q.kill()
            except psutil.NoSuchProcess: pass
        psutil.wait_procs(procs, timeout=30)
        return True
