import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


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
