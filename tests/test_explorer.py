"""Latent explorer: the atlas against the codes and numpy, the static panels, and the ipywidgets driven headlessly."""
import json
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from medsae.activations import save_activations
from medsae.layout import RunLayout
from medsae.config import CHEXPERT_LABELS
from medsae.data import LabelPolicy, label_matrix
from medsae.explorer import (Explorer, ExplorerError, LatentAtlas, compare_panel, correlation_figure, explore,
                             histogram_figure, image_tiles, latent_panel, names_html, names_text, pair_stats,
                             plotly_bundle)

PLOTLY = "application/vnd.plotly.v1+json"


def _panels(ex):
    "The four panels of the explorer's output area: names (HTML), tiles (PNG), histogram and correlations (plotly)."
    outs = ex.out.outputs
    assert [next(iter(o["data"])) for o in outs] == ["text/html", "image/png", PLOTLY, PLOTLY]
    return outs[0]["data"]["text/html"], outs[1]["data"]["image/png"], outs[2]["data"][PLOTLY], outs[3]["data"][PLOTLY]

N, M = 60, 40
LABS = list(CHEXPERT_LABELS)
PLANTED = {0: "Edema", 1: "Cardiomegaly", 2: "Pleural Effusion"}   # latent -> label it follows
CONCEPTS = ["Edema", "Cardiomegaly", "Pleural Effusion", "Rotation"]
POLICY = LabelPolicy(uncertain="ignore", blank="zero")            # so that the label mask matters


def _write_run(base, naming=True):
    "A run folder in the pipeline's layout (activations, evaluate, name, score-names) and PNG images."
    from medsae.layout import RunLayout
    rng = np.random.default_rng(1)
    root = base / "images"
    L = RunLayout(base / "run")
    run = L.path
    vals = rng.choice([1.0, 0.0, -1.0, np.nan], size=(N, len(LABS)), p=[0.3, 0.45, 0.1, 0.15])
    for c in PLANTED.values(): vals[:2, LABS.index(c)] = [1.0, 0.0]
    paths = [f"demo/train/patient{i:05d}/study1/view1_frontal.png" for i in range(N)]
    for i, p in enumerate(paths[:-1]):                             # the last image is missing on disk
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8), mode="L").save(root / p)
    dense = np.where(rng.random((N, M)) < 0.2, rng.gamma(2.0, 0.5, (N, M)), 0.0)
    for j, c in PLANTED.items():
        pos = vals[:, LABS.index(c)] == 1
        dense[:, j] = np.where(pos, 1.0 + rng.random(N), np.where(rng.random(N) < 0.15, 0.1 * rng.random(N) + 0.01, 0))
    dense[:, M - 1] = 0                                           # a dead latent
    dense[5, 4] = dense[6, 4] = 2.5                               # a tie: lower row first
    codes = sp.csr_matrix(dense.astype(np.float32))
    index = pd.DataFrame(vals, columns=LABS)
    index.insert(0, "split", "train"); index.insert(0, "Path", paths); index["ok"] = True
    for split in ("train", "valid"):
        save_activations(L.activations.split(split), codes, index.assign(split=split), {"split": split})
    met = L.evaluate; met.path.mkdir(parents=True)
    pd.DataFrame({"label": LABS, "positives": 1, "sae_unit": [next((j for j, c in PLANTED.items() if c == l), 7)
                                                             for l in LABS],
                  "sae_r": [{"Edema": 0.9, "Cardiomegaly": 0.8, "Pleural Effusion": 0.7}.get(l, 0.2) for l in LABS], "sae_entropy": 2.0, "sae_f1": 0.5,
                  "raw_unit": 3, "raw_r": 0.2}).to_csv(met.best_units)
    met.summary.write_text(json.dumps({"split": "train", "labels": LABS, "policy": POLICY.as_dict()}))
    auroc = rng.uniform(0.4, 0.7, (M, len(CONCEPTS))).astype(np.float32)
    auroc[0, 0], auroc[1, 1], auroc[2, 2], auroc[8, 0], auroc[9, 0] = 0.97, 0.95, 0.9, 0.85, 0.81
    np.save(met.concept_auroc, auroc)
    met.concepts.write_text(json.dumps({"names": CONCEPTS, "kinds": ["finding"] * 3 + ["nuisance"],
                                                   "phrases": {c: [c.lower()] for c in CONCEPTS}}))
    if naming:
        rows = []
        for j in range(M - 1):
            for namer in ("vocabulary", "medgemma"):
                name = PLANTED[j].lower() if j in PLANTED else f"texture {j}"
                if j == 12 and namer == "medgemma": name = "Pulmonary EDEMA pattern"
                if j == 13 and namer == "medgemma": name = ""          # a failed naming
                rows.append(dict(unit_kind="sae", unit=j, namer=namer, concept=name, description=f"desc {j}",
                                 score=np.nan if namer == "medgemma" else 0.1 * (j % 10), ok=bool(name),
                                 n_active=int((dense[:, j] > 0).sum())))
        rows.append(dict(unit_kind="raw", unit=20, namer="vocabulary", concept="edema", description="raw", score=0.3,
                         ok=True, n_active=N))
        L.name_stage.path.mkdir(); pd.DataFrame(rows).to_csv(L.name_stage.names, index=False)
        sc = [dict(unit_kind=k, unit=j, namer=nm, judge=jd, accuracy=round(0.01 * j + 0.1 * (jd == "b"), 3),
                   precision=0.5, recall=0.5, f1=round(0.02 * j + (nm == "medgemma") * 0.3, 3), n_images=20)
              for k in ("sae", "raw") for j in range(M - 1) for nm in ("vocabulary", "medgemma") for jd in ("a", "b")]
        L.score_names.path.mkdir(); pd.DataFrame(sc).to_csv(L.score_names.scores, index=False)
        pd.DataFrame([dict(unit=j, namer=nm, truth_concept=c, truth_auroc=0.9, concept=c.lower(), similarity=1.0,
                           correct=nm == "vocabulary") for j, c in PLANTED.items() for nm in ("vocabulary", "medgemma")]
                     ).to_csv(L.score_names.correctness, index=False)
    return run, root, dense, vals


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _write_run(tmp_path_factory.mktemp("explorer"))


@pytest.fixture(scope="module")
def atlas(run):
    return LatentAtlas.from_run(run[0], run[1])


def test_sizes_and_alive(atlas, run):
    dense = run[2]
    assert atlas.n_latents == M and atlas.n_images == N and atlas.labels == tuple(LABS)
    assert atlas.policy == POLICY                                   # read from metrics/summary.json
    assert list(atlas.alive()) == [j for j in range(M) if (dense[:, j] > 0).any()] and M - 1 not in atlas.alive()
    assert sp.isspmatrix_csc(atlas.csc)
    np.testing.assert_allclose(atlas.activation_values(3), dense[:, 3].astype(np.float32))


@pytest.mark.parametrize("j", [0, 2, 4, 17])
def test_top_and_bottom_images(atlas, run, j):
    a = run[2][:, j].astype(np.float32)
    top, bot = atlas.top_images(j, 9), atlas.bottom_images(j, 9)
    nz = np.flatnonzero(a)
    want_top = sorted(nz, key=lambda r: (-a[r], r))[:9]
    want_bot = sorted(nz, key=lambda r: (a[r], r))[:9]
    assert list(top.index) == want_top and list(bot.index) == want_bot
    assert list(top.columns[:2]) == ["Path", "activation"]
    assert (np.diff(top["activation"]) <= 0).all() and (np.diff(bot["activation"]) >= 0).all()
    assert (bot["activation"] > 0).all()                            # the least active images where it still fires
    np.testing.assert_allclose(top["activation"], a[want_top])
    assert list(top["Path"]) == [atlas.index["Path"][r] for r in want_top]
    if j == 4: assert list(top.index[:2]) == [5, 6]                 # ties: lower row first
    assert atlas.top_images(M - 1).empty and atlas.bottom_images(M - 1).empty
    with pytest.raises(IndexError): atlas.top_images(M)


@pytest.mark.parametrize("j", [0, 1, 5])
def test_label_correlations_match_numpy(atlas, run, j):
    dense, vals = run[2], run[3]
    y, mask = label_matrix(pd.DataFrame(vals, columns=LABS), LABS, POLICY)
    r = atlas.label_correlations(j)
    assert list(r.index) == LABS
    for k, lab in enumerate(LABS):
        m = mask[:, k]
        want = np.corrcoef(dense[m, j], y[m, k])[0, 1] if y[m, k].std() > 0 and dense[m, j].std() > 0 else np.nan
        np.testing.assert_allclose(r[lab], want, atol=1e-6, equal_nan=True)
    if j in PLANTED: assert r.idxmax() == PLANTED[j]


def test_names_joined_with_scores(atlas, run):
    df = atlas.names(0)
    assert sorted(df["namer"]) == ["medgemma", "vocabulary"] and (df["unit_kind"] == "sae").all()
    for c in ("accuracy[a]", "accuracy[b]", "f1[a]", "f1[b]", "truth_concept", "correct"):
        assert c in df.columns, c
    sc = pd.read_csv(RunLayout(run[0]).score_names.scores)
    for _, row in df.iterrows():
        for judge in ("a", "b"):
            s = sc[(sc.unit_kind == "sae") & (sc.unit == 0) & (sc.namer == row["namer"]) & (sc.judge == judge)].iloc[0]
            assert row[f"f1[{judge}]"] == pytest.approx(s["f1"]) and row[f"accuracy[{judge}]"] == pytest.approx(s["accuracy"])
    assert df.set_index("namer")["truth_concept"]["vocabulary"] == "Edema"
    assert len(atlas.names(20)) == 2                                 # raw unit 20's name is not an SAE latent's
    assert len(atlas.names(M - 1)) == 0
    failed = atlas.names(13).set_index("namer")
    assert not failed.loc["medgemma", "ok"] and failed.loc["medgemma", "concept"] == ""
    assert "(naming failed)" in names_text(atlas, 13)


def test_search(atlas):
    assert sorted(atlas.search("edema")) == [0, 8, 9, 12]    # names (any namer, any case), ground truth >= 0.8 (8, 9)
    assert sorted(atlas.search("EDEMA", min_auroc=0.9)) == [0, 12]
    assert atlas.search("cardiomegaly") == [1]
    assert sorted(atlas.search("texture 3")) == sorted({3} | {j for j in range(30, 39)})
    assert atlas.search("#7") == [7] and atlas.search("7")[0] == 7 and sorted(atlas.search("7")) == [7, 17, 27, 37]
    assert atlas.search("fracture") == [7]                           # best unit of a label (best_units.csv)
    assert atlas.search("zebra") == [] and atlas.search("") == list(atlas.alive())


def _pearson_masked(a, y, m):
    keep = m.astype(bool)
    return np.corrcoef(a[keep], y[keep])[0, 1] if a[keep].std() > 0 else np.nan


def test_search_ranks_the_strongest_carriers_first(atlas, run):
    "Hits come in order of how strongly they carry the searched label, computed here independently with numpy."
    _, _, dense, vals = run
    auroc = np.load(RunLayout(run[0]).evaluate.concept_auroc)
    atlas = LatentAtlas.from_run(run[0], run[1])
    extra = dict(unit_kind="sae", unit=5, namer="medgemma", concept="edema-like haze", description="", ok=True)
    atlas.names_table = pd.concat([atlas.names_table, pd.DataFrame([extra])], ignore_index=True)
    atlas._text = None                                   # a low-numbered latent that matches by name, weakly
    for q, label, concept in (("edema", "Edema", 0), ("effusion", "Pleural Effusion", 2)):
        hits = atlas.search(q)
        y = np.nan_to_num(vals[:, LABS.index(label)]) == 1
        m = ~(vals[:, LABS.index(label)] == -1)                      # the fixture's policy masks uncertain labels
        def score(u):
            r = _pearson_masked(dense[:, u], y.astype(float), m)
            s = [r] if np.isfinite(r) else []
            if auroc[u].argmax() == concept and auroc[u].max() >= 0.8: s.append(2 * (auroc[u].max() - 0.5))
            return max(s) if s else -2
        scores = [score(u) for u in hits]
        assert scores == sorted(scores, reverse=True), (q, hits, scores)
        assert hits[0] == concept                                      # the planted latent leads


def test_concepts(atlas):
    assert atlas.concepts() == CONCEPTS
    s = atlas.latents_for_concept("Edema")
    assert list(s.index) == [0, 8, 9] and list(s.round(2)) == [0.97, 0.85, 0.81]
    assert list(atlas.latents_for_concept("Edema", min_auroc=0.9).index) == [0]
    assert atlas.latents_for_concept("Rotation").empty
    with pytest.raises(KeyError): atlas.latents_for_concept("Nope")
    assert atlas.best_concepts().loc[1, "concept"] == "Cardiomegaly"
    assert atlas.featured(3) == [0, 1, 2]                            # the labels' best units, by r


def test_latent_panel_axes(atlas):
    from matplotlib.figure import Figure
    fig = latent_panel(atlas, 0, n=9)
    assert isinstance(fig, Figure) and len(fig.axes) == 9 + 3 + 3    # tiles, bottom row, text + histogram + bars
    assert fig.axes[-2].get_yscale() == "log"
    assert len(latent_panel(atlas, 1, n=5).axes) == 5 + 3 + 3
    assert "latent 0" in fig._suptitle.get_text()
    text = fig.axes[-3].texts[0].get_text()
    assert "vocabulary: 'edema'" in text and "f1[a]" in text and "ground truth AUROC: Edema 0.97" in text
    dead = latent_panel(atlas, M - 1, n=4)                          # a dead latent draws, says so
    assert any("never fires" in t.get_text() for t in dead.axes[-2].texts)
    tiles_with_image = sum(bool(ax.images) for ax in latent_panel(atlas, 0, n=9).axes[:12])
    assert tiles_with_image >= 10


def test_missing_image_is_blank_tile(atlas):
    assert atlas.image(N - 1) is None and atlas.image(0).shape == (24, 20)
    assert 0 <= atlas.image(0).min() and atlas.image(0).max() <= 1
    assert len(atlas._cache) <= atlas.cache_size


def test_compare_panel(atlas):
    fig = compare_panel(atlas, 0, 1, n=4)
    assert len(fig.axes) == 2 * (4 + 2)
    s = pair_stats(atlas, 0, 1)
    a, b = atlas.activation_values(0), atlas.activation_values(1)
    assert s["r"] == pytest.approx(np.corrcoef(a, b)[0, 1]) and f"r = {s['r']:.2f}" in fig._suptitle.get_text()
    assert s["both"] == int(((a > 0) & (b > 0)).sum())


def test_explorer_drives_headlessly(atlas):
    ex = Explorer(atlas, n=4)
    names, png, hist, corr = _panels(ex)
    assert ex.shown == (0,) and 'data-latents="0"' in names and "latent 0" in corr["layout"]["title"]["text"]
    assert ex.widget.children and ex.other.disabled
    all_opts = [v for _, v in ex.latent.options]
    assert all_opts == list(atlas.alive())
    ex.search.value = "edema"
    assert [v for _, v in ex.latent.options] == [0, 8, 9, 12] and ex.shown == (0,)
    ex.latent.value = 12
    names, png12, hist, corr = _panels(ex)
    assert ex.shown == (12,) and 'data-latents="12"' in names and "Pulmonary EDEMA pattern" in names
    assert "latent 12" in hist["layout"]["title"]["text"] and "latent 12" in corr["layout"]["title"]["text"]
    assert png12 != png
    first = ex.out.outputs
    ex.n.value = 9                                                    # the slider re-renders
    assert ex.out.outputs is not first and ex.shown == (12,)
    ex.concept.value = "Edema"                                        # search AND concept, ranked by AUROC
    assert [v for _, v in ex.latent.options] == [0, 8, 9] and ex.shown == (0,)
    ex.compare.value = True
    assert len(ex.shown) == 2 and ex.shown[0] == 0 and ex.shown[1] != 0 and not ex.other.disabled
    ex.other.value = 9
    assert ex.shown == (0, 9)
    names, _, hist, corr = _panels(ex)
    assert 'data-latents="0 9"' in names and len(hist["data"]) == 2
    assert corr["data"][0]["type"] == "heatmap" and corr["data"][0]["y"] == ["latent 0", "latent 9"]
    ex.compare.value = False
    assert ex.shown == (0,)
    ex.search.value = "zebra"
    assert ex.shown == () and ex.latent.value is None and "no latent matches" in ex.out.outputs[0]["text"]
    ex.search.value = ""; ex.concept.value = "all"
    assert [v for _, v in ex.latent.options] == all_opts and ex.shown == (ex.latent.value,)


def test_explorer_caps_options(atlas):
    ex = Explorer(atlas, max_options=5)
    assert len(ex.latent.options) <= 6 and "first 5 listed" in ex.info.value


def test_missing_naming_still_works(tmp_path):
    run, root, _, _ = _write_run(tmp_path, naming=False)
    at = LatentAtlas.from_run(run, root)
    assert any("name/" in m for m in at.missing) and any("score-names/" in m for m in at.missing)
    assert "missing: name/" in at.status()
    assert at.names(0).empty and "the name stage has not run" in names_text(at, 0)
    assert at.search("edema") == [0, 8, 9]                           # ground truth still searchable
    assert len(latent_panel(at, 0, n=4).axes) == 4 + 2 + 3
    ex = Explorer(at, n=4)
    assert ex.shown == (0,) and len(ex.out.outputs) == 4 and "name/" in ex.info.value
    assert "the name stage has not run" in ex.out.outputs[0]["data"]["text/html"]
    ex.latent.value = 3
    assert ex.shown == (3,)


def test_split_and_missing_parts(tmp_path):
    run, root, _, _ = _write_run(tmp_path, naming=False)
    at = LatentAtlas.from_run(run, root, split="valid")
    assert at.split == "valid" and at.concepts() == CONCEPTS
    with pytest.raises(ExplorerError, match="no activations for split 'test'.*valid"):
        LatentAtlas.from_run(run, root, split="test")
    with pytest.raises(ExplorerError, match="no activations"):
        LatentAtlas.from_run(tmp_path / "nowhere", root)
    RunLayout(run).evaluate.concept_auroc.unlink()
    at = LatentAtlas.from_run(run, root)
    assert at.concepts() == [] and any("concept AUROCs" in m for m in at.missing)
    ex = Explorer(at, n=4)
    assert ex.concept.disabled and list(ex.concept.options) == ["all"]


def test_explore_static(run):
    ex = explore(run[0], run[1], static=True, n=4, k=2)
    assert isinstance(ex, Explorer) and ex.shown == (0,)


def test_panels_show_as_png_and_explore_is_static_outside_a_kernel(atlas, run):
    from medsae.explorer import _live_kernel
    png = latent_panel(atlas, 2, n=1)._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not _live_kernel()                                         # pytest: no kernel, so explore() goes static
    ex = explore(run[0], run[1], n=1, k=1)
    assert isinstance(ex, Explorer) and ex.shown == (0,)


def test_live_panels_against_numpy(atlas, run):
    "The interactive panels show the same numbers as the atlas and numpy: histogram values, r per label, names."
    dense, vals = run[2], run[3]
    hist = histogram_figure(atlas, [0])
    a = dense[:, 0].astype(np.float32)
    np.testing.assert_allclose(np.sort(np.asarray(hist.data[0].x)), np.sort(a[a > 0]))   # the non-zero activations
    assert hist.layout.yaxis.type == "log"
    y, mask = label_matrix(pd.DataFrame(vals, columns=LABS), LABS, POLICY)
    bars = correlation_figure(atlas, [1])
    got = dict(zip(bars.data[0].y, bars.data[0].x))
    for k, lab in enumerate(LABS):
        m = mask[:, k]
        want = np.corrcoef(dense[m, 1], y[m, k])[0, 1] if y[m, k].std() > 0 else 0.0
        assert got[lab] == pytest.approx(np.nan_to_num(want), abs=1e-6), lab
    assert bars.data[0].y[-1] == "Cardiomegaly"                      # sorted, the planted label on top
    heat = correlation_figure(atlas, [1, 2])
    np.testing.assert_allclose(heat.data[0].z[1], atlas.label_correlations(2).reindex(LABS).to_numpy(), atol=1e-6)
    s = pair_stats(atlas, 1, 2)
    assert f"activation r {s['r']:.2f}" in heat.layout.title.text
    html = names_html(atlas, [0, 13])
    assert 'data-latents="0 13"' in html and "(naming failed)" in html and "✓ Edema" in html and "f1[a] " in html
    assert "&lt;" in names_html(_with_name(atlas, 5, "<b>bold</b>"), [5])          # names are escaped
    b = plotly_bundle(heat)
    import json
    assert json.loads(json.dumps(b[PLOTLY]))["data"][0]["type"] == "heatmap" and "Plotly.newPlot" in b["text/html"]
    fig = image_tiles(atlas, [0, 1], n=4)
    assert sum(bool(ax.images) for ax in fig.axes) >= 2 * 4 and len(fig.axes) == 2 * (4 + 2)


def _with_name(atlas, unit, name):
    import copy
    at = copy.copy(atlas)
    extra = dict(unit_kind="sae", unit=unit, namer="medgemma", concept=name, description="", ok=True)
    at.names_table = pd.concat([atlas.names_table[atlas.names_table.unit != unit], pd.DataFrame([extra])], ignore_index=True)
    at._text = None
    return at
