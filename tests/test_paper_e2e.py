"""The paper's setting end to end, as a reviewer lays it out: a CheXpert-v1.0-small lookalike built from rows of the
real CheXpert training table, an official-layout MedCLIP-ResNet50 checkpoint of random weights, a local tokenizer
folder and a tiny Gemma 3, run through the Papermill pipeline with `configs/paper.yaml` (the published choices) and
`configs/paper-corrected.yaml`, shrunk only in size."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT

PREFIX = "CheXpert-v1.0-small"


def _jpeg(path, size, rng):
    "A grayscale JPEG of CheXpert-small's sizes with some structure (not a constant image)."
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    a = 120 + 60 * np.sin(xx / (7 + rng.integers(0, 9))) * np.cos(yy / (5 + rng.integers(0, 9))) + rng.normal(0, 20, (h, w))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=90)


def chexpert_small_lookalike(root, chexpert_train, n_train=150, n_valid=60, seed=0):
    """`root/CheXpert-v1.0-small/{train,valid}.csv` + JPEGs. Train: the first real rows of whole patients (several
    studies each, lateral views, -1 and blanks as they are). Valid: the next patients' rows under `valid/`, labels
    0/1 as in the official validation table. One frontal train image is truncated, one deleted: returns both paths."""
    raw = pd.read_csv(chexpert_train, nrows=3000)
    train, valid = [], []
    for _, g in raw.groupby(raw["Path"].str.extract(r"(patient\d+)")[0], sort=False):   # whole patients, in order
        if sum(map(len, train)) < n_train: train.append(g)
        elif sum(map(len, valid)) < n_valid: valid.append(g)
        else: break
    train, valid = pd.concat(train), pd.concat(valid)
    valid["Path"] = valid["Path"].str.replace(f"{PREFIX}/train/", f"{PREFIX}/valid/", regex=False)
    labels = [c for c in raw.columns if c not in ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")]
    valid[labels] = valid[labels].fillna(0).replace(-1.0, 0.0)
    rng = np.random.default_rng(seed)
    for df in (train, valid):
        for p, view in zip(df["Path"], df["Frontal/Lateral"]):
            _jpeg(root / p, (320, 390) if view == "Frontal" else (390, 320), rng)
    (root / PREFIX).mkdir(parents=True, exist_ok=True)
    train.to_csv(root / PREFIX / "train.csv", index=False)
    valid.to_csv(root / PREFIX / "valid.csv", index=False)
    frontal = train[train["Frontal/Lateral"] == "Frontal"]["Path"].tolist()
    corrupt, missing = frontal[3], frontal[7]
    (root / corrupt).write_bytes((root / corrupt).read_bytes()[:300])
    (root / missing).unlink()
    return train, valid, (corrupt, missing)


@pytest.fixture(scope="module")
def paper_setup(tmp_path_factory, chexpert_train):
    "The lookalike, a random-weights official zip, a local tokenizer folder and a tiny Gemma 3."
    import torch
    from medsae.encoders import build_medclip, save_official_zip
    from medsae.vlm import tiny_gemma3
    from test_encoders import tiny_tokenizer
    d = tmp_path_factory.mktemp("paper")
    train, valid, bad = chexpert_small_lookalike(d / "chexpert", chexpert_train)
    torch.manual_seed(1)                     # not seed 0: the run's random-encoder control is MedCLIP from seed 0
    (d / "weights").mkdir()
    z = save_official_zip(build_medclip("resnet50").model, d / "weights" / "medclip-pretrained.zip",
                          {"text_model.model.embeddings.position_ids": torch.arange(512)[None]})
    tok, _ = tiny_tokenizer(["no", "pleural", "effusion", "edema", "cardiomegaly", "opacity", "tube", "line", "."])
    tok.save_pretrained(d / "tokenizer")
    gemma = tiny_gemma3(d / "tiny-gemma3")
    return dict(dir=d, root=d / "chexpert", weights=z, tokenizer=d / "tokenizer", gemma=gemma, train=train,
                valid=valid, bad=bad)


def small(s, out_root, name, root):
    "Overrides that shrink the paper's run to CPU minutes; nothing else changes."
    return [f"run.out_root={out_root}", f"run.name={name}", f"data.root={root}",
            f"encoder.weights={s['weights']}", f"encoder.tokenizer={s['tokenizer']}", "encoder.device=cpu",
            "encoder.batch_size=16", "encoder.workers=0", "sae.expansion=2", "sae.epochs=4", "sae.batch_size=32",
            "sae.device=cpu", "sae.checkpoint_every=0", "sae.log_every=1", "sae.sweep_expansion=[1,2]",
            "sae.sweep_l1=[1.0]", "sae.sweep_epochs=2", "metrics.subset_per_class=4", "metrics.bootstrap=20",
            "metrics.permutations=3", "metrics.ms_sample=50", f"naming.model={s['gemma']}", "naming.device=cpu",
            "naming.load_in_4bit=false", "naming.min_active=3", "naming.max_latents=3", "naming.eval_units=2",
            "naming.eval_positive=4", "naming.eval_negative=4", "naming.max_new_tokens=8", "naming.n_examples=4",
            "analyses.linearity_images=8", "analyses.linearity_pairs=4", "analyses.probe_per_class=4",
            "analyses.probe_iters=10", "naming.vocabulary_min_count=100", "controls.seeds=2", "controls.bootstrap=20"]


@pytest.mark.parametrize("config", ["paper", "paper-corrected"])
def test_paper_config_end_to_end(paper_setup, tmp_path, config, monkeypatch):
    from medsae.config import load_config
    from medsae.layout import RunLayout
    from medsae.provenance import is_complete, read_provenance
    from medsae.stages import STAGES, run_notebooks
    s = paper_setup
    root = s["root"] if config == "paper" else s["root"] / PREFIX        # the folder that holds the copy, or the copy
    over = small(s, tmp_path / "runs", config, root)
    if config == "paper-corrected": over.append("controls.run=false")   # the controls on CheXpert: the paper run's
    cfg_file = ROOT / "configs" / f"{config}.yaml"
    run_notebooks(str(cfg_file), over, figures=str(tmp_path / "figures"), log=lambda *a: None)
    cfg = load_config(cfg_file, over)
    R = RunLayout(cfg.run_dir)
    for st in STAGES:                                             # every stage that applies to CheXpert completed
        if st.applies(cfg): assert is_complete(R.stage(st.name)), st.name
    assert not R.phantom.path.exists() and not R.encoder.path.exists()
    index = pd.read_csv(R.extract.store.index)
    views = pd.concat([s["train"], s["valid"]]).set_index("Path")["Frontal/Lateral"]
    if cfg.data.frontal_only:
        assert (views[index["Path"]] == "Frontal").all()          # no lateral view was embedded
        assert len(index) == (views == "Frontal").sum()
    else:
        assert len(index) == len(views) and (views[index["Path"]] == "Lateral").any()
    assert set(index["split"]) == {"train", "valid"}
    skipped = pd.read_csv(R.extract.store.skipped)
    assert sorted(skipped["path"]) == sorted(s["bad"])           # the corrupt and the missing image, listed
    page = R.report.results.read_text()
    assert "| quantity | paper (" in page                        # the paper's column
    for p in s["bad"]: assert p in page                           # the skipped images, on the results page
    ext = read_provenance(R.extract)["record"]
    assert ext["preprocess"] == cfg.data.preprocess and ext["frontal_only"] == cfg.data.frontal_only
    sae = read_provenance(R.sae)["record"]
    assert sae["penalty"]["normalise"] == cfg.sae.normalise
    assert np.isclose(sae["penalty"]["l1_paper_scale"] / sae["penalty"]["l1_published_scale"], sae["penalty"]["scale_s"])
    met = json.loads(R.evaluate.summary.read_text())
    assert met["split"] == "train" and met["subset_order"] == cfg.data.subset_order
    assert met["policy"]["uncertain"] == cfg.data.uncertain
    for w in (f"`data.uncertain`): **{cfg.data.uncertain}**", f"`sae.normalise`): **{cfg.sae.normalise}**",
              f"`naming.protocol`): **{cfg.naming.protocol}**"):
        assert w in page, w
    if config == "paper":
        ct = pd.read_csv(R.controls.full)                        # the controls, MedCLIP's random encoder among them
        assert set(ct.kind) == {"raw", "sae", "seeds", "random_encoder", "frozen_decoder", "random_projection", "pca", "ica"}
        assert ct[ct.kind == "random_encoder"].entropy.iloc[0] != ct[ct.kind == "raw"].entropy.iloc[0]
        assert "## 7. Is it learning? Controls" in page
        check_warm_pipeline(cfg_file, over, tmp_path, R, monkeypatch)
    else:
        assert not R.controls.path.exists() and "## 7. Is it learning? Controls" not in page


def check_warm_pipeline(cfg_file, over, tmp_path, R, monkeypatch):
    """A second `medsae pipeline` finds every executed notebook current: none runs again, and the tables and figures
    are published again into the (emptied) figures folder. An edited notebook, and only it, runs again."""
    import shutil
    import nbformat
    from medsae import stages
    figures = tmp_path / "figures"
    before = {p.name: p.read_bytes() for p in figures.rglob("*") if p.is_file()}
    stamps = {p.name: p.stat().st_mtime_ns for p in R.notebooks.glob("*.ipynb")}
    shutil.rmtree(figures)
    log = []
    done = stages.run_notebooks(str(cfg_file), over, figures=str(figures), log=log.append)
    assert [p.name for p in done] == sorted(stamps) and all("up to date" in m for m in log), log
    assert {p.name: p.stat().st_mtime_ns for p in R.notebooks.glob("*.ipynb")} == stamps
    assert {p.name: p.read_bytes() for p in figures.rglob("*") if p.is_file()} == before
    edited = tmp_path / "nbs"; edited.mkdir()
    for p in stages.pipeline_notebooks():
        if p.stem != "11_report": shutil.copyfile(p, edited / p.name); continue
        nb = nbformat.read(p, as_version=4)
        nb.cells.append(nbformat.v4.new_markdown_cell("A reader's note."))
        nbformat.write(nb, edited / p.name)
    monkeypatch.setattr(stages, "pipeline_notebooks", lambda: sorted(edited.glob("*.ipynb")))
    log = []
    stages.run_notebooks(str(cfg_file), over, figures=str(figures), log=log.append)
    ran = [m.split()[1] for m in log if m.startswith("[pipeline]") and " done in " in m]
    assert ran == ["11_report.ipynb"], log
    assert "A reader's note." in (R.notebooks / "11_report.ipynb").read_text()
    assert {p.name: p.stat().st_mtime_ns for p in R.notebooks.glob("*.ipynb") if p.stem != "11_report"} == \
        {k: v for k, v in stamps.items() if k != "11_report.ipynb"}


def test_no_weights_no_run_unless_random_weights_are_asked_for(paper_setup, tmp_path):
    "The paper's encoder without its weights file would embed with random weights: one line, exit 2, nothing made."
    from conftest import run_cli
    over = [a for o in small(paper_setup, tmp_path / "runs", "noweights", paper_setup["root"]) + ["encoder.weights=null"]
            for a in ("--set", o)]
    r = run_cli("extract", "--config", ROOT / "configs" / "paper-corrected.yaml", *over, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "encoder.random_weights" in r.stderr, r.stderr
    assert not (tmp_path / "runs" / "noweights" / "extract").exists()
