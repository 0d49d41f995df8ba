"""The published code's other analyses (nbs/54_published, 55_published_naming) on a tiny default run, each checked
against an independent computation: the stage outputs, the names of raw dimensions, the results page."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def tiny_run(tiny_pipeline):
    "The suite's tiny run (conftest.tiny_pipeline: the published analyses in its evaluate and name stages)."
    from medsae.stages import Pipeline
    return tiny_pipeline.cfg, Pipeline(tiny_pipeline.cfg, tiny_pipeline.figures.path, log=lambda *a: None)


def test_linearity_fits_and_their_invariants(tiny_run):
    "NNLS weights are non-negative; least squares never fits worse (its fit is the projection: the best cosine)."
    cfg, p = tiny_run
    E = p.layout.evaluate
    df = pd.read_csv(E.linearity)
    n = min(cfg.analyses.linearity_images, 40)
    g = df[(df.kind == "grid")]
    assert set(g.fit) == {"nnls", "lstsq", "nnls, other parts (control)"} and (g.fit == "nnls").sum() == n // 4
    assert ((df.kind == "pair") & (df.fit == "nnls")).sum() == 40
    w = df[df.fit.str.startswith("nnls")][["w0", "w1", "w2", "w3"]].to_numpy()
    assert (w[np.isfinite(w)] >= 0).all()
    for kind in ("grid", "pair"):
        a = df[(df.kind == kind) & (df.fit == "nnls")].set_index("composite").cosine
        b = df[(df.kind == kind) & (df.fit == "lstsq")].set_index("composite").cosine
        assert (b >= a - 1e-6).all()
    planted = pd.read_csv(E.linearity_planted)                   # PhantomCXR: the tiles' planted findings were read
    assert {"grid", "pair"} <= set(planted.kind) and planted.check.str.contains("finding").any()


def test_dead_rates_against_a_numpy_encode(tiny_run):
    "The run's SAE's dead-latent rate on the sampled train + valid images, recomputed with numpy from its weights."
    from medsae.extract import EmbeddingStore
    from safetensors.numpy import load_file
    cfg, p = tiny_run
    L = p.layout
    t = pd.read_csv(L.evaluate.dead_rates)
    store = EmbeddingStore(L.extract.store)
    x = np.concatenate([store.split("train")[0], store.split("valid")[0]])     # 200 rows < sweep_images: all of them
    w = load_file(str(L.sae.saelens.weights))
    f = np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)
    assert np.isclose(t.dead.iloc[0], (f.max(0) <= 0).mean(), atol=1 / f.shape[1])
    sweep = sorted(p.layout.sae.sweep_models.iterdir())
    assert len(sweep) == 4 and sorted(t.sae.iloc[1:]) == [s.name for s in sweep]   # every sweep SAE was saved and rated


def test_sweep_ranking_is_the_published_rule(tiny_run):
    "The published choice has the lowest mean rank-normalised entropy; ours is the sweep table's selected SAE."
    cfg, p = tiny_run
    t = pd.read_csv(p.layout.evaluate.sweep_ranking)
    assert t["published choice"].sum() == 1 and t.loc[t["published choice"], "rank_entropy"].iloc[0] == t.rank_entropy.min()
    sw = pd.read_csv(p.layout.sae.sweep)
    assert t.loc[t["our choice"], "sae"].tolist() == sw.loc[sw.selected, "name"].tolist()
    pub = json.loads(p.layout.evaluate.published.read_text())["sweep_ranking"]
    assert pub["agree"] == (pub["published"] == pub["ours"])


def test_detector_precision_by_hand(tiny_run):
    "Our detector (default): each label's best-F1 SAE latent; its precision recomputed with numpy thresholds."
    from medsae.published import metric_images
    cfg, p = tiny_run
    t = pd.read_csv(p.layout.evaluate.detector)
    codes, x, idx, y, m, labels = metric_images(cfg, p.layout)
    row = t[(t.units == "sae")].sort_values("f1").iloc[-1]
    c = labels.index(row.label)
    v = codes[:, [int(row.unit)]].toarray().ravel()
    pos = np.sort(v[v > 1e-7])
    thr = pos[max(1, int(0.7 * len(pos))) - 1]
    fire = v > thr
    assert np.isclose(row.precision, (fire & (y[:, c] == 1)).sum() / fire.sum(), atol=1e-4)


def test_probes_against_sklearn(tiny_run):
    "The 1-D probe's best SAE unit per label: no other unit fits its balanced sample better (sklearn, same penalty)."
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from medsae.published import balanced_rows, metric_images
    cfg, p = tiny_run
    t = pd.read_csv(p.layout.evaluate.probes)
    codes, x, idx, y, m, labels = metric_images(cfg, p.layout)
    rng = np.random.default_rng(cfg.run.seed)
    c = 0
    rows = balanced_rows(y[:, c], m[:, c], cfg.analyses.probe_per_class, rng)
    a = codes[rows].toarray(); yy = y[rows, c] == 1
    best = int(t.sae_unit.iloc[0])
    def loss(j):                       # the penalised objective: mean log loss + ridge / 2 w^2 (ridge 1e-4)
        if a[:, j].std() == 0: return log_loss(yy, np.full(len(yy), yy.mean()))
        s = LogisticRegression(C=1 / (1e-4 * len(rows)), tol=1e-10, max_iter=5000).fit(a[:, [j]], yy)
        return log_loss(yy, s.predict_proba(a[:, [j]])[:, 1]) + 0.5e-4 * s.coef_[0, 0] ** 2
    others = np.random.default_rng(1).choice(a.shape[1], 30, replace=False)
    assert all(loss(best) <= loss(j) + 1e-4 for j in others)
    lp = pd.read_csv(p.layout.evaluate.linear_probe)
    assert set(lp.columns) >= {"label", "sae_auroc", "raw_auroc"}


def test_raw_dimensions_named_by_every_offline_namer(tiny_run):
    "Enrichment and the published vocabulary name raw dimensions; every latent has a published-vocabulary name."
    from medsae.activations import ExportedSAE
    cfg, p = tiny_run
    L = p.layout
    names = pd.read_csv(L.name_stage.names, keep_default_na=False)
    d = ExportedSAE.load(L.sae.saelens).d
    raw = names[names.unit_kind == "raw"]
    assert {n: (raw.namer == n).sum() for n in ("vocabulary", "enrichment", "vocabulary_published")} == \
        {"vocabulary": d, "enrichment": d, "vocabulary_published": d}
    every = pd.read_csv(L.name_stage.vocabulary_published, keep_default_na=False)
    assert len(every) == ExportedSAE.load(L.sae.saelens).m and every.sim_value.between(-1, 1).all()
    summ = pd.read_csv(L.score_names.summary)
    assert {("enrichment", "raw"), ("vocabulary_published", "sae")} <= set(zip(summ.namer, summ.unit_kind))


def test_results_page_section(tiny_run):
    "The results page has the section, every figure it links was published, and the timings."
    import re
    cfg, p = tiny_run
    page = (p.figures.path / "RESULTS.md").read_text()
    assert "## 6. The published code's other analyses" in page
    for key in "abcdefgh": assert f"| 6{key} |" in page
    for img in re.findall(r"!\[[^]]*\]\(([^)]+)\)", page):
        assert (p.figures.path / img).exists(), img
    assert "evaluate_linearity.png" in page and "name_sparsity_vocabulary.png" in page
    sec = json.loads(p.layout.evaluate.published.read_text())["seconds"]
    assert set(sec) == {"linearity", "sparsity", "probes", "sweep_ranking", "detector"}


def test_memo_text_encoder_encodes_each_text_once():
    "The offline judge's text encoder (medsae.stages) asks the text tower once per distinct name, in order."
    from medsae.naming_eval import memo_text_encoder
    calls = []
    f = memo_text_encoder(lambda t: (calls.append(list(t)), np.array([[len(x), 1.0] for x in t]))[1])
    assert f(["a", "bb", "a"]).tolist() == [[1, 1], [2, 1], [1, 1]]
    assert f(["bb", "ccc"]).tolist() == [[2, 1], [3, 1]]
    assert calls == [["a", "bb"], ["ccc"]]
