"""The numeric paths pinned by `medsae.numerics` give the same bits on another CPU, and unpinned they do not: the
fingerprint (tests/fingerprint.py: a tiny encoder training, its embeddings, MiniLM's, an SAE, a probe, numpy) run
natively and under `qemu-x86_64 -cpu Haswell` (an emulated Intel CPU with AVX2 and without AVX-512). `make check-repro` runs it alone."""
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medsae.numerics import PINS

FINGERPRINT = Path(__file__).with_name("fingerprint.py")


def _avx512() -> bool:
    try: return " avx512f " in open("/proc/cpuinfo").read().replace("\n", " ")
    except OSError: return False


def fingerprint(pin: bool, emulate: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PINS}      # each process pins itself, or not
    env["MEDSAE_PIN_CPU"] = "1" if pin else "0"
    cmd = [sys.executable, str(FINGERPRINT)]
    if emulate: cmd = [shutil.which("qemu-x86_64"), "-cpu", "Haswell", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.machine() != "x86_64" or not shutil.which("qemu-x86_64"),
                    reason="needs an x86-64 machine with qemu-user (`apt-get install qemu-user`; .ci/run installs it)")
@pytest.mark.skipif(not _avx512(), reason="this CPU has no AVX-512: the emulated Haswell would be the same instruction set")
def test_pinned_paths_give_the_same_bits_on_another_cpu():
    native, haswell = fingerprint(True, False), fingerprint(True, True)
    assert native["pinned"] and haswell["pinned"] and native["aten"] == haswell["aten"] == "AVX2"
    assert native == haswell                                          # every part, bit for bit
    free, free_haswell = fingerprint(False, False), fingerprint(False, True)
    assert not free["pinned"] and free["aten"] == "AVX512" and free_haswell["aten"] == "AVX2"
    parts = [k for k in native if k not in ("pinned", "aten")]
    differ = [k for k in parts if free[k] != free_haswell[k]]
    assert {"encoder", "embeddings", "sae", "numpy"} <= set(differ), differ    # unpinned, the two CPUs compute other numbers


def test_a_config_that_turns_pinning_off_reaches_the_libraries():
    "`--set run.pin_cpu=false` on the command line unpins the process before torch loads (as MEDSAE_PIN_CPU=0 does)."
    code = ("import argparse; from medsae.cli import _cfg; from medsae.numerics import numerics_state as s; "
            "_cfg(argparse.Namespace(config=None, overrides={over!r})); "
            "import torch; print(torch.backends.cpu.get_cpu_capability(), s()['pinned'])")
    env = {k: v for k, v in os.environ.items() if k not in PINS and k != "MEDSAE_PIN_CPU"}
    run = lambda over, **e: subprocess.run([sys.executable, "-c", code.format(over=over)], capture_output=True,
                                           text=True, env={**env, **e}, check=True).stdout.split()
    off, on = run(["run.pin_cpu=false"]), run([])
    free = subprocess.run([sys.executable, "-c", "import medsae, torch; print(torch.backends.cpu.get_cpu_capability())"],
                          capture_output=True, text=True, env={**env, "MEDSAE_PIN_CPU": "0"}, check=True).stdout.split()
    assert off[1] == "False" and on[1] == str(platform.machine() == "x86_64")
    assert off[0] == free[0]                             # the capability this CPU picks when nothing is pinned
    if _avx512(): assert (off[0], on[0]) == ("AVX512", "AVX2"), (off, free, on)
