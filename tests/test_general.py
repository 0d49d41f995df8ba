"""The general-domain SAE (nbs/56_general): configs/general.yaml on a small folder of images without labels, open_clip
RN50 with random weights, offline, through every stage that applies; what needs labels is skipped and said so."""
import json

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from conftest import ROOT


def image_folder(root, n_train: int = 20, n_valid: int = 8, seed: int = 0):
    "`root/train/*.jpg` and `root/val/*.png`: coloured shapes on varied backgrounds (not constant images)."
    rng = np.random.default_rng(seed)
    for split, n, ext in (("train", n_train, "jpg"), ("val", n_valid, "png")):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            im = Image.new("RGB", (96, 80), tuple(int(v) for v in rng.integers(0, 255, 3)))
            dr = ImageDraw.Draw(im)
            for _ in range(3):
                x, y = rng.integers(0, 70, 2)
                (dr.ellipse if rng.random() < 0.5 else dr.rectangle)([x, y, x + 20, y + 15],
                                                                     fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            im.save(root / split / f"{i:03d}.{ext}")


def test_general_config_on_a_folder(tmp_path):
    from medsae.config import load_config
    from medsae.extract import EmbeddingStore
    from medsae.provenance import is_complete
    from medsae.stages import STAGES, Pipeline
    image_folder(tmp_path / "images")
    phrases = [f"a {c} {s}" for c in ("red", "green", "blue", "white", "dark") for s in ("circle", "square", "shape", "background")]
    (tmp_path / "vocabulary.txt").write_text("\n".join(phrases) + "\n")      # a vocabulary of one's own, one per line
    over = [f"data.root={tmp_path / 'images'}", f"run.out_root={tmp_path / 'runs'}", "encoder.weights=null",
            "encoder.random_weights=true", "encoder.device=cpu", "encoder.batch_size=8", "encoder.workers=0",
            "sae.device=cpu", "sae.expansion=1", "sae.epochs=2", "sae.batch_size=8", "sae.checkpoint_every=0",
            "sae.sweep_expansion=[1]", "sae.sweep_l1=[0.00003,0.0003]", "sae.sweep_epochs=1",
            "analyses.linearity_images=8", "analyses.linearity_pairs=3", "naming.min_active=1",
            "naming.eval_units=3", "naming.eval_positive=2", "naming.eval_negative=2", "naming.n_examples=4",
            f"naming.vocabulary_file={tmp_path / 'vocabulary.txt'}"]
    cfg = load_config(ROOT / "configs" / "general.yaml", over)
    p = Pipeline(cfg, tmp_path / "figures", log=lambda *a: None)
    p.until()
    L = p.layout
    made = {st.name for st in STAGES if is_complete(L.stage(st.name))}
    assert made == {"extract", "sae", "activations", "evaluate", "name", "score-names", "report"}, made
    store = EmbeddingStore(L.extract.store)
    assert store.meta["dim"] == 1024 and store.meta["rows"] == 28
    assert sorted(set(store.index()["split"])) == ["train", "valid"]
    assert not any(c in store.index().columns for c in ("Edema", "No Finding"))        # no label was made up
    summ = json.loads(L.evaluate.summary.read_text())
    assert summ["labels"] == [] and "probes" in summ["skipped"] and summ["why_skipped"]
    pub = json.loads(L.evaluate.published.read_text())
    assert {"linearity", "sparsity"} <= set(pub) and "probes" not in pub and "labels" in pub["skipped"]
    lin = pd.read_csv(L.evaluate.linearity)
    assert ((lin.kind == "grid") & (lin.fit == "nnls")).sum() == 2 and ((lin.kind == "pair") & (lin.fit == "nnls")).sum() == 3
    dead = pd.read_csv(L.evaluate.dead_rates)
    assert len(dead) == 3 and dead.dead.between(0, 1).all()                            # the run's SAE and the sweep's two
    names = pd.read_csv(L.name_stage.names, keep_default_na=False)
    assert set(names.namer) == {"vocabulary", "vocabulary_published"} and set(names.concept) <= set(phrases), names.concept
    assert (names[names.namer == "vocabulary_published"].unit_kind == "raw").sum() == 1024
    assert L.score_names.summary.exists()
    page = L.report.results.read_text()
    assert "a folder of images without labels" in page and "RANDOM WEIGHTS" in page
    assert "## 6. The published code's other analyses" in page and "not in this run" in page
    assert not L.report.entropy_r.exists()                  # no labels: no interactive r / entropy figures either
