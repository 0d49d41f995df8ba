"""Check that SAEs exported by medsae load in SAELens and compute what medsae computes.

Run with a Python that has `sae-lens` (a throwaway venv, not the project's lock):

    .venv/bin/python scripts/check_saelens.py export DIR          # writes DIR/<arch>/ and DIR/inputs.safetensors
    /path/to/venv-with-sae-lens/bin/python scripts/check_saelens.py load DIR

The second call loads each folder with `sae_lens.SAE.load_from_disk`, runs its encode/decode on the saved raw
inputs, and compares with medsae's outputs saved by the first call. Prints one line per architecture.
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

mode, out = sys.argv[1], Path(sys.argv[2])
if mode == "export":
    from medsae.config import SAEConfig
    from medsae.sae_training import export_saelens, train_sae
    torch.manual_seed(0)
    X = (torch.randn(3000, 32) @ torch.randn(32, 64)).relu() + 1
    res = {"inputs": X[:200].contiguous()}
    for arch in ("relu", "topk", "batchtopk", "matryoshka"):
        s, _ = train_sae(X, SAEConfig(arch=arch, expansion=4, k=8, l1=0.3, batch_size=256, epochs=3, lr=1e-3), progress=False)
        export_saelens(s, out / arch)
        with torch.no_grad():
            f = s.encode(s.normalise(X[:200]))
            res[f"{arch}.recon"] = (s.decode(f) / s.norm_scale + s.norm_mean).contiguous()
            res[f"{arch}.acts"] = f.contiguous()
    save_file(res, str(out / "inputs.safetensors"))
    print(f"exported to {out}")
else:
    from sae_lens import SAE
    import sae_lens
    ref = load_file(str(out / "inputs.safetensors"))
    x = ref["inputs"]
    for arch in ("relu", "topk", "batchtopk", "matryoshka"):
        sae = SAE.load_from_disk(str(out / arch), device="cpu")
        with torch.no_grad():
            f = sae.encode(x); r = sae.decode(f)
        print(f"sae_lens {sae_lens.__version__}: {arch:10s} loaded as {type(sae).__name__:14s} "
              f"max |recon diff| {float((r - ref[arch + '.recon']).abs().max()):.2e}  "
              f"max |acts diff| {float((f - ref[arch + '.acts']).abs().max()):.2e}")
