"`medsae doctor` on a half-prepared paper setup, then on the completed one, through the console script."
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, run_cli
from medsae.data import frontal_only, read_chexpert_csv

PREFIX = "CheXpert-v1.0-small"


def doctor(*args) -> tuple[int, dict[str, str], str]:
    "Run `medsae doctor`; (exit status, {check name: its line}, stdout)."
    r = run_cli("doctor", *args, check=False)
    lines = {}
    for line in r.stdout.splitlines():
        if line[:4] in ("PASS", "WARN", "FAIL", "SKIP", "INFO"): lines[line[6:].split("  ")[0].strip()] = line
    return r.returncode, lines, r.stdout


def status(lines, name): return lines[name][:4]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, chexpert_train):
    """A CheXpert-v1.0-small lookalike from 20 real rows (laterals included): 14 train rows, 6 valid rows (their
    Path moved to valid/), a small grayscale JPEG at each path but one; and a paper-like config whose weights,
    tokenizer and MedGemma folder do not exist."""
    tmp = tmp_path_factory.mktemp("doctor")
    rows = read_chexpert_csv(chexpert_train).iloc[:20].copy()
    assert (rows["Frontal/Lateral"] == "Lateral").sum() >= 3
    train, valid = rows.iloc[:14].copy(), rows.iloc[14:].copy()
    valid["Path"] = valid["Path"].str.replace(f"{PREFIX}/train/", f"{PREFIX}/valid/", regex=False)
    root = tmp / "chexpert"
    (root / PREFIX).mkdir(parents=True)
    train.to_csv(root / PREFIX / "train.csv", index=False)
    valid.to_csv(root / PREFIX / "valid.csv", index=False)
    rng = np.random.default_rng(0)
    for rel in [*train["Path"], *valid["Path"]]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 32), dtype=np.uint8)).save(root / rel, quality=90)
    missing = frontal_only(valid)["Path"].iloc[0]
    (root / missing).unlink()
    cfg = yaml.safe_load((ROOT / "configs" / "paper-corrected.yaml").read_text())
    cfg["run"]["out_root"] = str(tmp / "runs")
    cfg["data"]["root"] = str(root)
    cfg["encoder"]["weights"] = str(tmp / "weights" / "medclip-pretrained.zip")
    cfg["encoder"]["tokenizer"] = str(tmp / "bio_clinicalbert")
    cfg["naming"]["model"] = str(tmp / "models" / "medgemma-4b-it")
    assert "medgemma" in cfg["naming"]["namers"] and cfg["encoder"]["device"] == "cuda"
    (tmp / "paper.yaml").write_text(yaml.safe_dump(cfg))
    return dict(tmp=tmp, root=root, config=tmp / "paper.yaml", missing=missing,
                frontal={"train": len(frontal_only(train)), "valid": len(frontal_only(valid))}, cfg=cfg)


def test_half_prepared_setup_fails_every_missing_piece_in_one_run(setup):
    rc, lines, out = doctor("--config", setup["config"])
    print(out)
    assert rc == 1, out
    for name in ("data.root", "data.train_csv", "data.valid_csv", "data rows", "data images (train)"):
        assert status(lines, name) == "PASS", lines[name]
    n = setup["frontal"]
    assert f"train {n['train']:,}" in lines["data rows"] and f"valid {n['valid']:,}" in lines["data rows"]
    img = lines["data images (valid)"]
    assert status(lines, "data images (valid)") == "FAIL" and setup["missing"] in img
    assert f"1 of {n['valid']} sampled images do not load (1 missing" in img and "medsae data check" in img
    w = lines["encoder.weights"]
    assert status(lines, "encoder.weights") == "FAIL" and "medclip-pretrained.zip not found" in w and "--set encoder.weights=" in w
    assert status(lines, "encoder.tokenizer") == "FAIL" and "bio_clinicalbert: no such folder" in lines["encoder.tokenizer"]
    m = lines["naming.model"]
    assert status(lines, "naming.model") == "FAIL" and "medgemma-4b-it" in m and "huggingface-cli download" in m
    if not torch.cuda.is_available():
        assert status(lines, "gpu") == "FAIL" and "encoder.device=cuda" in lines["gpu"] and "CUDA asked" in lines["gpu"]
    for name in ("estimate extract", "estimate sae", "estimate name"):
        assert status(lines, name) == "INFO" and "estimate" in lines[name]
    rows = n["train"] + n["valid"]
    assert f"{rows:,} images" in lines["estimate extract"] and "1,226 img/s" in lines["estimate extract"]
    assert out.strip().splitlines()[-1].startswith("doctor: ") and " FAIL" in out.strip().splitlines()[-1]


def test_completed_setup_passes(setup):
    from medsae.encoders import MedCLIPModel, MedCLIPTextBert, MedCLIPVisionResNet, save_official_zip
    from medsae.vlm import tiny_gemma3
    from test_encoders import tiny_tokenizer
    tmp, cfg = setup["tmp"], setup["cfg"]
    # the official layout with random weights: a zip holding pytorch_model.bin, with the stale key the release has
    with torch.device("meta"): model = MedCLIPModel(MedCLIPVisionResNet("resnet50"), MedCLIPTextBert())
    model.to_empty(device="cpu")
    for p in model.parameters(): torch.nn.init.normal_(p, std=0.02)
    (tmp / "weights").mkdir()
    save_official_zip(model, cfg["encoder"]["weights"], {"text_model.model.embeddings.position_ids": torch.arange(512)[None]})
    del model
    tok, nv = tiny_tokenizer([f"w{i}" for i in range(28996 - 4)])        # Bio_ClinicalBERT's vocabulary size
    assert nv == 28996
    tok.save_pretrained(cfg["encoder"]["tokenizer"])
    tiny_gemma3(cfg["naming"]["model"])
    Image.fromarray(np.zeros((40, 32), np.uint8)).save(setup["root"] / setup["missing"])
    cpu = [] if torch.cuda.is_available() else ["--set", "encoder.device=cpu", "--set", "sae.device=cpu",
                                                 "--set", "naming.device=cpu"]
    rc, lines, out = doctor("--config", setup["config"], *cpu)
    print(out)
    for name in ("data.root", "data.train_csv", "data.valid_csv", "data rows", "data images (train)",
                 "data images (valid)", "encoder.weights", "encoder.tokenizer", "naming.model", "gpu", "disk (run.out_root)"):
        assert status(lines, name) == "PASS", lines[name]
    assert "0 missing, 0 unexpected" in lines["encoder.weights"] and "position_ids" in lines["encoder.weights"]
    assert "vocabulary 28,996" in lines["encoder.tokenizer"]
    assert "gemma3" in lines["naming.model"]
    assert status(lines, "naming.load_in_4bit") == "SKIP"
    assert rc == 0, out
    # an interrupted MedGemma download (no weights) fails, in-process
    from medsae.config import load_config
    from medsae.doctor import check_vlm
    (tmp / "models" / "medgemma-4b-it" / "model.safetensors").rename(tmp / "model.safetensors")
    c = check_vlm(load_config(setup["config"]))[0]
    assert c.status == "FAIL" and "no *.safetensors weights" in c.found
    (tmp / "model.safetensors").rename(tmp / "models" / "medgemma-4b-it" / "model.safetensors")
    # 4-bit asks for CUDA and bitsandbytes, as TransformersVLM does
    rc, lines, _ = doctor("--config", setup["config"], *cpu, "--set", "naming.load_in_4bit=true")
    if not torch.cuda.is_available():
        assert rc == 1 and status(lines, "naming.load_in_4bit") == "FAIL" and "CUDA" in lines["naming.load_in_4bit"]


def test_a_bad_table_fails_with_its_line_and_column(setup, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(setup["root"], root)
    t = root / PREFIX / "valid.csv"
    lines = t.read_text().splitlines()
    head = lines[0].split(",")
    cells = lines[1].split(",")
    cells[head.index("Edema")] = "maybe"
    t.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    rc, found, _ = doctor("--config", setup["config"], "--set", f"data.root={root}")
    assert rc == 1 and status(found, "data rows") == "FAIL"
    assert "valid.csv" in found["data rows"] and "line 2" in found["data rows"] and "Edema" in found["data rows"]
    assert status(found, "data images") == "SKIP" and status(found, "data.valid_csv") == "PASS"


def test_bad_config_input_is_the_cli_error_with_status_2(tmp_path):
    "Unparsable YAML or an unknown key: no check runs; the same error as every other command, status 2."
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    for args in (["--config", bad], ["--set", "naming.modle=x"]):
        r = run_cli("doctor", *args, check=False)
        same = run_cli("config", "show", *args, check=False)
        assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("medsae doctor: error:")
        assert r.stderr.replace("medsae doctor:", "medsae config:", 1) == same.stderr
    assert "not valid YAML" in run_cli("doctor", "--config", bad, check=False).stderr


def test_hub_ids_with_the_hub_allowed(monkeypatch, tmp_path):
    "Not cached, the hub asked (here a stand-in): gated without access fails, readable warns that make reproduce is offline."
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError
    from medsae.config import load_config
    from medsae.doctor import check_tokenizer, check_vlm

    class NoAccess(GatedRepoError):
        def __init__(self): Exception.__init__(self, "403: access to model google/x is restricted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cfg = load_config(None, ["naming.namers=[medgemma]", "naming.model=google/not-cached-model",
                             "encoder.name=medclip-resnet50", "encoder.tokenizer=someone/not-cached-tokenizer"])
    def refuse(repo, **kw): raise NoAccess()
    monkeypatch.setattr(huggingface_hub, "auth_check", refuse)
    c = check_vlm(cfg)[0]
    assert c.status == "FAIL" and "accept the licence at https://huggingface.co/google/not-cached-model" in c.found
    monkeypatch.setattr(huggingface_hub, "auth_check", lambda repo, **kw: None)
    c = check_vlm(cfg)[0]
    assert c.status == "WARN" and "make reproduce" in c.found and "huggingface-cli download google/not-cached-model" in c.fix
    t = check_tokenizer(cfg)[0]
    assert t.status == "WARN" and "--local-dir DIR" in t.fix
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert check_tokenizer(cfg)[0].status == "FAIL" and check_vlm(cfg)[0].status == "FAIL"


def test_gpu_memory_and_estimates_on_a_cuda_machine(monkeypatch):
    "The CUDA branch, with torch.cuda answering as one H200 would (no GPU here): memory against MedGemma's weights."
    import pandas as pd
    from medsae.config import load_config
    from medsae.doctor import MEDGEMMA_BYTES, Rows, THROUGHPUTS, check_gpu, estimate_times
    gib = 2**30
    free = {"now": 100 * gib}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (free["now"], 139 * gib))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    rows = Rows(pd.DataFrame({"split": ["train"] * 9000 + ["valid"] * 1000}))
    cfg = load_config(ROOT / "configs" / "paper-corrected.yaml", ["naming.model=/nonexistent/medgemma-4b-it"])
    c = check_gpu(cfg, rows)[0]
    assert c.status == "PASS" and "NVIDIA H200" in c.found and "100.0 GiB free of 139.0 GiB" in c.found
    assert f"about {MEDGEMMA_BYTES / gib:.1f} GiB" in c.found and "medgemma-4b-it weights (bf16" in c.found
    free["now"] = int(MEDGEMMA_BYTES * 1.2)
    assert check_gpu(cfg, rows)[0].status == "WARN"
    free["now"] = int(MEDGEMMA_BYTES * 0.8)
    assert check_gpu(cfg, rows)[0].status == "FAIL"
    four = load_config(ROOT / "configs" / "paper-corrected.yaml", ["naming.model=/nonexistent/medgemma-4b-it", "naming.load_in_4bit=true"])
    assert check_gpu(four, rows)[0].status == "PASS"                 # 4-bit weights take about a third
    other = load_config(ROOT / "configs" / "paper-corrected.yaml", ["encoder.device=cuda:3"])
    c = check_gpu(other, rows)[0]
    assert c.status == "FAIL" and "cuda:3" in c.found and "1 GPU" in c.found
    est = {c.name: c.found for c in estimate_times(cfg, rows)}
    gpu = {t.what: t for t in THROUGHPUTS if t.device == "cuda"}
    assert f"{gpu['extract'].rate:,g} img/s" in est["estimate extract"] and "10,000 images" in est["estimate extract"]
    assert f"{gpu['sae-relu'].rate:,g} samples/s" in est["estimate sae"] and "200 epochs x 9,000 train rows" in est["estimate sae"]
    assert est["estimate name"].startswith("at least") and "MedGemma-4b" in est["estimate name"]


class Evil:
    def __reduce__(self): return (print, ("pwned",))


def test_weights_that_are_not_the_official_archive_fail(tmp_path):
    "Another architecture fails with the missing / unexpected key counts; a pickle that builds objects is refused."
    import io, zipfile
    from medsae.config import load_config
    from medsae.doctor import check_weights
    from medsae.encoders import MedCLIPModel, MedCLIPVisionResNet, save_official_zip
    z = save_official_zip(MedCLIPModel(MedCLIPVisionResNet("resnet18"), None), tmp_path / "medclip-pretrained.zip",
                          {"vision_model.model.extra.weight": torch.zeros(1)})
    c = check_weights(load_config(None, ["encoder.name=medclip-resnet50", f"encoder.weights={z}"]))[0]
    assert c.status == "FAIL" and "medclip-pretrained.zip from the MedCLIP release" in c.fix
    assert "missing keys (" in c.found and "unexpected keys (1)" in c.found and "vision_model.model.extra.weight" in c.found
    buf = io.BytesIO(); torch.save({"x": Evil()}, buf)
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as f: f.writestr("pytorch_model.bin", buf.getvalue())
    c = check_weights(load_config(None, ["encoder.name=medclip-swin", f"encoder.weights={tmp_path / 'evil.zip'}"]))[0]
    assert c.status == "FAIL" and "pickle of more than tensors" in c.found and "medclip-vit-pretrained.zip" in c.fix


def test_tokenizer_is_required_by_every_text_tower_user():
    "MedCLIP without a tokenizer: a FAIL when a vocabulary namer or the text judge needs the text tower, else a WARN."
    from medsae.config import load_config
    from medsae.doctor import check_tokenizer
    base = ["encoder.name=medclip-resnet50", "naming.judge=medgemma"]
    status = lambda namers: check_tokenizer(load_config(None, [*base, f"naming.namers=[{namers}]"]))[0].status
    assert status("enrichment") == "WARN"
    assert status("vocabulary") == "FAIL" and status("vocabulary_published") == "FAIL"
    assert check_tokenizer(load_config(None, ["encoder.name=medclip-resnet50", "naming.namers=[enrichment]"]))[0].status == "FAIL"


@pytest.mark.skipif(torch.cuda.is_available(), reason="4-bit MedGemma runs on a CUDA machine: nothing to refuse")
def test_a_run_fails_before_its_first_stage(tmp_path):
    "The paper's setting on a CPU with 4-bit MedGemma: `pipeline` and `reproduce` name each problem on one line, make nothing."
    for cmd in ("pipeline", "reproduce"):
        r = run_cli(cmd, "--config", ROOT / "configs" / "paper.yaml", "--set", f"run.out_root={tmp_path}", check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and all(l.startswith("medsae: ") for l in lines), r.stderr
        assert [l for l in lines if "naming.load_in_4bit" in l and "CUDA" in l], lines   # the late failure, now first
        assert [l for l in lines if "data.root" in l], lines
        assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())                # no stage folder, no run folder
