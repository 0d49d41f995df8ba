import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


TINY = ["phantom.n_train=160", "phantom.n_valid=40", "phantom.n_test=40",
        "encoder_training.epochs=2", "encoder_training.image_size=64", "encoder_training.widths=[8,16,32,64]",
        "encoder_training.batch_size=32", "sae.expansion=2", "sae.epochs=3", "sae.batch_size=64", "sae.l1=1.0",
        "sae.sweep_expansion=[1,2]", "sae.sweep_l1=[1.0]", "sae.sweep_epochs=2", "metrics.bootstrap=50",
        "metrics.permutations=5", "naming.min_active=5", "naming.eval_positive=5", "naming.eval_negative=5",
        "naming.eval_units=6"]
"Overrides that shrink the default run to a minute or two (tiny PhantomCXR, encoder and SAE)."


def tiny_args(out_root, *extra) -> list[str]:
    "`--set` arguments of a tiny default run under `out_root`."
    return [a for o in [*TINY, f"run.out_root={out_root}", *extra] for a in ("--set", o)]


def run_cli(*args, cwd=ROOT, check=True):
    "Run the installed `medsae` console script; returns the CompletedProcess."
    exe = Path(sys.executable).parent / "medsae"
    r = subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"medsae {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def chexpert_train():
    from medsae.assets import asset_path
    return asset_path("chexpert_train", check=True)
