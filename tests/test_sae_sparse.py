"Sparse SAE kernels: the same training as the dense GEMMs (losses, weights), the switch, exact resume, topk_flat."
import pytest
import torch

from medsae.config import SAEConfig
from medsae.sae import ReLUSAE, TopKSAE, build_sae, code_dense, topk_flat
from medsae.sae_training import train_sae


@pytest.fixture(scope="module")
def X():
    torch.manual_seed(0)
    return (torch.randn(3000, 32) @ torch.randn(32, 64)).relu() + 1


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk"])
def test_sparse_training_equals_dense(X, arch):
    cfg = SAEConfig(arch=arch, expansion=8, k=16, l1=1.0, batch_size=256, max_steps=25, log_every=5, lr=1e-3,
                    dead_window=1024)
    (a, la), (b, lb) = (train_sae(X, cfg.model_copy(update=dict(kernel=k)), seed=1, progress=False)
                        for k in ("dense", "sparse"))
    assert torch.allclose(torch.tensor(la["loss"].values), torch.tensor(lb["loss"].values), rtol=1e-4)
    assert torch.allclose(torch.tensor(la["l0"].values), torch.tensor(lb["l0"].values))
    for k, v in a.state_dict().items(): assert torch.allclose(v, b.state_dict()[k], atol=1e-5, rtol=1e-4), k


def test_auto_takes_sparse_kernels_only_for_sparse_codes():
    torch.manual_seed(0)
    s, x = ReLUSAE(16, 256, l1=0.1), torch.randn(64, 16)
    assert "fired" not in s.loss(x)                          # about half the latents active: dense GEMMs
    s.b_enc.data.fill_(-3.0)                                  # a few active: sparse kernels
    out = s.loss(x)
    assert "fired" in out and out["f"].layout == torch.sparse_csr
    s.kernel = "dense"
    assert torch.allclose(s.loss(x)["loss"], out["loss"], rtol=1e-5)
    assert "fired" in TopKSAE(16, 256, k=8).loss(x) and "fired" not in TopKSAE(16, 256, k=64).loss(x)


@pytest.mark.parametrize("arch", ["relu", "batchtopk"])
def test_sparse_resume_is_bit_exact(tmp_path, X, arch):
    cfg = SAEConfig(arch=arch, expansion=4, k=8, l1=1.0, batch_size=256, epochs=2, lr=1e-3, kernel="sparse",
                    dead_window=512)
    a, _ = train_sae(X, cfg, seed=3, progress=False)
    train_sae(X, cfg, seed=3, out_dir=tmp_path, steps=9, progress=False)
    b, _ = train_sae(X, cfg, seed=3, out_dir=tmp_path, progress=False)
    for k, v in a.state_dict().items(): assert torch.equal(v, b.state_dict()[k]), k


def test_resume_keeps_adam_state_in_the_parameter_layout(tmp_path, X):
    "Fused Adam reads its moments in the parameter's memory layout: a transposed W_enc must resume exactly too."
    def sae():
        torch.manual_seed(5)
        s = build_sae("topk", 64, 256, k=8)
        s.W_enc.data = s.W_dec.data.t().clone()                # transposed strides
        assert not s.W_enc.is_contiguous()
        return s
    cfg = SAEConfig(arch="topk", expansion=4, k=8, batch_size=256, epochs=2, lr=1e-3)
    a, _ = train_sae(X, cfg, seed=3, progress=False, sae=sae())
    train_sae(X, cfg, seed=3, out_dir=tmp_path, steps=5, progress=False, sae=sae())
    b, _ = train_sae(X, cfg, seed=3, out_dir=tmp_path, progress=False, sae=sae())
    for k, v in a.state_dict().items(): assert torch.equal(v, b.state_dict()[k]), k


def test_topk_flat_is_topk():
    torch.manual_seed(0)
    for a in (torch.randn(300_000).relu(), torch.zeros(300_000).index_put_((torch.arange(0, 300_000, 997),), torch.rand(301) + 0.1)):
        for n in (64, 5000):                                  # the second input has too few positives: the fallback
            v1, i1 = topk_flat(a, n); v2, i2 = a.topk(n)
            assert torch.equal(v1, v2)
            if v2[-1] > 0: assert torch.equal(i1.sort().values, i2.sort().values)


def test_code_dense_roundtrip():
    torch.manual_seed(0)
    f = torch.randn(8, 32).relu()
    from medsae.sae import SparseCode
    c = SparseCode.from_dense(f)
    assert torch.equal(code_dense(c.csr(c.gather(f))), f) and code_dense(f) is f


def test_gpu_check_runs_quick_on_cpu():
    "scripts/gpu_check.sh --quick: every path of the GPU-ready check (extraction, SAE kernels, tiny-Gemma naming)."
    import os, subprocess, sys
    from pathlib import Path
    from medsae.assets import AssetError, asset_path
    try: asset_path("chexpert_train")
    except AssetError as e: pytest.skip(str(e))
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", str(root / "scripts/gpu_check.sh"), "--quick", "--device", "cpu", "--threads", "2"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable), timeout=480)
    assert r.returncode == 0, r.stderr[-2000:]
    table = [l for l in r.stdout.splitlines() if l.startswith("| ") and not l.startswith("| what")]
    assert len(table) == 16 and "SAE relu sparse" in r.stdout and "4/4 answered" in r.stdout, r.stdout
    assert "one stacked GEMM" in r.stdout and "x separate" in r.stdout, r.stdout
    # the sweep rows: separate runs, one pass one by one, one pass stacked, for each architecture; stacked members
    # end where the one-by-one members end
    import re
    for arch in ("relu", "batchtopk"):
        rows = [l for l in table if l.startswith(f"| sweep {arch},")]
        assert [l.split(" | ")[0] for l in rows] == [f"| sweep {arch}, 4 separate runs", f"| sweep {arch}, one pass, one by one",
                                                     f"| sweep {arch}, one pass, stacked"], rows
        dw, dfve = map(float, re.search(r"max \|dW_dec\| (\S+), max \|dFVE\| (\S+) \|", rows[-1]).groups())
        assert dw < 1e-4 and dfve < 1e-4, rows[-1]


def test_bench_sae_small(tmp_path):
    """scripts/bench_sae.py in small form (CI; no timing is asserted): the interleaved repeats, every method once per
    repeat, the ratio to the bound of the same repeat, the median and spread columns, and the profile's phases."""
    import json, os, re, subprocess, sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, str(root / "scripts/bench_sae.py"), "--steps", "2", "--warmup", "2", "--repeats", "3",
                        "--d", "32", "--m", "256", "--batch", "64", "--l0", "8", "--profile", "--json", str(out)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(root)), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())
    methods = ["dense bound (5 GEMMs)", "ours sparse, relu", "ours sparse, batchtopk"]
    assert sorted({(x["method"], x["repeat"]) for x in rows}) == sorted((m, k) for m in methods for k in range(3))
    bound = {x["repeat"]: x["samples_per_s"] for x in rows if x["method"] == methods[0]}
    for x in rows: assert abs(x["x_bound"] - x["samples_per_s"] / bound[x["repeat"]]) < 1e-9, x   # per repeat
    head = "| method | L0 | samples/s | x bound | x bound, worst repeat | system ms / step | minor faults / step |"
    table = r.stdout[r.stdout.index(head):].splitlines()[2:5]
    assert [l.split(" | ")[0] for l in table] == [f"| {m}" for m in methods], r.stdout
    for line, m in zip(table, methods):
        cells = line.split(" | ")
        got = sorted(x["samples_per_s"] for x in rows if x["method"] == m)
        assert re.fullmatch(r"[\d,]+ \([\d,]+-[\d,]+\)", cells[2]), line                 # median (min-max)
        assert cells[2].replace(",", "").startswith(f"{got[1]:.0f} ({got[0]:.0f}-{got[2]:.0f})"), (line, got)
        worst = min(x["x_bound"] for x in rows if x["method"] == m)
        assert cells[4] == f"{worst:.2f}", line
    assert all(f"| {a} | {p} |" in r.stdout for a in ("relu", "batchtopk")
               for p in ("loss (forward)", "backward", "optimiser", "decoder constraint")), r.stdout
