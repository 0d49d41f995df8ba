"""Check that SAEs exported by medsae load in the real SAELens and compute what medsae computes.

sae-lens is not in the project's lock: it runs from a throwaway venv, layered on this interpreter's packages (torch
and the rest are reused, nothing is installed into the project's venv):

    .venv/bin/python scripts/check_saelens.py setup [VENV]     # VENV (default /tmp/medsae-saelens-venv) with sae-lens
    .venv/bin/python scripts/check_saelens.py export DIR       # writes DIR/<arch>/ and DIR/inputs.safetensors
    VENV/bin/python scripts/check_saelens.py load DIR          # loads each with sae_lens.SAE.load_from_disk

`load` runs SAELens' encode/decode on the saved raw inputs, compares with medsae's outputs saved by `export`, prints
one line per architecture and exits 1 when an output differs by more than 1e-4 (or an architecture loads as the
wrong SAELens class). `setup` prints the venv's python on success; on failure one line saying why and exit 2.
tests/test_sae.py::test_the_real_saelens_loads_the_export runs all three.
"""
import subprocess
import sys
from pathlib import Path

SAELENS_VERSION = "6.54.12"
DEFAULT_VENV = Path("/tmp/medsae-saelens-venv")
ARCHS = {"relu": "StandardSAE", "topk": "TopKSAE", "batchtopk": "JumpReLUSAE", "matryoshka": "JumpReLUSAE"}
TOL = 1e-4


def venv_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def throwaway_venv(venv: Path, requirement: str, check: str) -> Path:
    """A venv at `venv` with `requirement`, seeing this interpreter's packages through a .pth file (nothing is
    installed into the project's venv); `check` is Python that must run there. Raises RuntimeError saying why not."""
    import site
    import sysconfig
    py = venv_python(venv)
    ok = lambda: subprocess.run([str(py), "-c", check], capture_output=True).returncode == 0
    if py.exists() and ok(): return py
    r = subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f"cannot create a venv at {venv}: {r.stderr.strip()[-300:]}")
    inner = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True).stdout.strip()
    outer = [p for p in (site.getsitepackages() + [sysconfig.get_paths()["purelib"]]) if Path(p).is_dir()]
    (Path(inner) / "_medsae_base.pth").write_text("\n".join(dict.fromkeys(outer)) + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--retries", "1",
                        "--timeout", "20", requirement], capture_output=True, text=True)
    if r.returncode or not ok():
        err = [l for l in (r.stderr or r.stdout).splitlines() if l.strip() and not l.startswith("WARNING: Location")]
        raise RuntimeError(f"pip could not install {requirement} into {venv}: {err[-1] if err else 'no reason given'}")
    return py


def setup(venv: Path = DEFAULT_VENV) -> Path:
    "A venv with sae-lens (see throwaway_venv)."
    return throwaway_venv(venv, f"sae-lens=={SAELENS_VERSION}",
                          f"import sae_lens; assert sae_lens.__version__ == {SAELENS_VERSION!r}")


def export(out: Path):
    import torch
    from safetensors.torch import save_file
    from medsae.config import SAEConfig
    from medsae.sae_training import export_saelens, train_sae
    torch.manual_seed(0)
    X = (torch.randn(3000, 32) @ torch.randn(32, 64)).relu() + 1
    res = {"inputs": X[:200].contiguous()}
    for arch in ARCHS:
        s, _ = train_sae(X, SAEConfig(arch=arch, expansion=4, k=8, l1=0.3, batch_size=256, epochs=3, lr=1e-3), progress=False)
        export_saelens(s, out / arch)
        with torch.no_grad():
            f = s.encode(s.normalise(X[:200]))
            res[f"{arch}.recon"] = (s.decode(f) / s.norm_scale + s.norm_mean).contiguous()
            res[f"{arch}.acts"] = f.contiguous()
    save_file(res, str(out / "inputs.safetensors"))
    print(f"exported to {out}")


def load(out: Path) -> int:
    import torch
    import sae_lens
    from sae_lens import SAE
    from safetensors.torch import load_file
    ref = load_file(str(out / "inputs.safetensors"))
    x = ref["inputs"]
    bad = 0
    for arch, cls in ARCHS.items():
        sae = SAE.load_from_disk(str(out / arch), device="cpu")
        with torch.no_grad():
            f = sae.encode(x); r = sae.decode(f); full = sae(x)
        d_r = float((r - ref[arch + ".recon"]).abs().max()); d_f = float((f - ref[arch + ".acts"]).abs().max())
        d_full = float((full - ref[arch + ".recon"]).abs().max())
        ok = type(sae).__name__ == cls and max(d_r, d_f, d_full) <= TOL and int((f > 0).sum()) > 0
        bad += not ok
        print(f"sae_lens {sae_lens.__version__}: {arch:10s} loaded as {type(sae).__name__:14s} "
              f"max |recon diff| {d_r:.2e}  max |acts diff| {d_f:.2e}  max |forward diff| {d_full:.2e}  "
              f"{'ok' if ok else 'MISMATCH'}")
    return 1 if bad else 0


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "setup":
        try: print(setup(Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_VENV))
        except RuntimeError as e:
            print(f"check_saelens setup: {e}", file=sys.stderr); sys.exit(2)
    elif mode == "export": export(Path(sys.argv[2]))
    elif mode == "load": sys.exit(load(Path(sys.argv[2])))
    else: sys.exit(__doc__)
