"""The default reproduction as `make reproduce` runs it (the Papermill pipeline notebooks, small sizes), in a git clone
of the working tree with its own code, `figures/` and `runs/`, as a reviewer has it: no tracked file changes; the
verdict and the reference commands; then `medsae reproduce` (no Jupyter) and each stage's own command on the same run:
every stage reused; one changed parameter reruns only the stages downstream of it; a stage refuses upstream results
that another config made, naming the fields that differ. The one finished tiny run of the suite's pipeline tests."""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import ROOT, SHARED
from medsae.layout import FiguresFolder, RunLayout, sibling
from medsae.stages import COMMANDS, STAGES


def test_reproduce_default(tiny_pipeline):
    import subprocess
    T = tiny_pipeline                                    # a reviewer's fresh clone, its own code and notebooks
    clone, cli, figures, args = T.clone, T.cli, T.figures, T.args     # figures/ and runs/ inside the clone
    assert "pipeline finished" in T.out
    status = lambda: subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    assert status() == ""                                # the run wrote no tracked (and no unignored) file
    v = cli("verify", *args)                             # not the default config: nothing to compare, said
    assert "nothing to compare" in v.stdout and "committed page" in v.stdout, v.stdout
    r = cli("reference", "update", *args, check=False)  # the reference refuses a run that is not the default one
    assert r.returncode == 2 and "not the default run" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert status() == ""
    run = RunLayout(clone / "runs" / "default")
    from medsae.config import load_config
    from medsae.reference import update_reference
    (clone / "figures" / "reference" / "stale.png").write_bytes(b"an image the run's page does not show")
    (clone / "figures" / "reference" / "stale.csv").write_text("a table the run's page does not link\n")
    written = update_reference(load_config(None, [*SHARED, f"run.out_root={clone / 'runs'}"]), check=False, root=clone,
                               log=lambda *a: None)
    page = (clone / "RESULTS.md").read_text()
    assert page == run.report.results_repo.read_text() and written[0] == clone / "RESULTS.md"
    from medsae.reference import page_links
    shown, ref = page_links(page), clone / "figures" / "reference"        # every image and table it links, no other
    assert shown and sorted(Path(s).name for s in shown) == sorted(p.name for p in [*ref.glob("*.png"), *ref.glob("*.csv")])
    assert all((clone / s).is_file() for s in shown)
    assert " M RESULTS.md" in status()
    same = cli("verify", *args, "--against", clone / "RESULTS.md").stdout
    assert "verdict: IDENTICAL" in same, same
    nbs = sorted(run.notebooks.glob("*.ipynb"))
    assert [p.stem.split("_", 1)[1].replace("_", "-") for p in nbs] == [*COMMANDS, "explore"]
    for p in nbs:                                      # executed, parameters injected, no error output
        nb = json.loads(p.read_text())
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
        assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"], p.name
    prov = lambda d: json.loads((d / "provenance.json").read_text())
    labels = prov(run.labels)["record"]
    assert labels["chexpert"]["balanced_subset"] > 0 and labels["chexpert"]["chexpert_5x200"] == 1000
    assert labels["phantom"]["rows"] == 160
    ph = prov(run.phantom)
    assert ph["record"]["counts"] == {"train": 160, "valid": 40, "test": 40}
    assert run.phantom.manifest.exists() and ph["outputs"]["PhantomCXR-v1.0/"]["files"] == 240
    assert all(prov(run.stage(s))["numerics"]["pinned"] for s in ("phantom", "encoder", "sae", "report"))  # recorded
    enc = prov(run.encoder)["record"]
    from medsae.reports import TECHNICAL
    assert len(enc["zero_shot_auroc"]) == 13                       # the findings, with prompts
    assert set(enc["probe_auroc"]) == set(enc["zero_shot_auroc"]) | set(TECHNICAL)   # and the reports' technique
    assert enc["steps"] == 2 * (160 // 32)                              # the budget is steps
    emb = prov(run.extract)["record"]
    assert emb["rows"] == 240 and emb["encoder"]["name"] == "medclip-phantom"
    E = np.load(run.extract.store.embeddings)
    assert E.shape == (240, 512) and np.allclose(np.linalg.norm(E, axis=1), 1, atol=1e-4)
    sae = prov(run.sae)["record"]
    assert sae["sae"]["m"] == 1024 and sae["sweep_models"] == 2 * 2 and sae["steps"] == 3 * (160 // 64)  # widths x L1s
    assert isinstance(sae["sweep_rule_met"], bool) and (sae["sweep_rule_met"] or "sparsest" in sae["sweep_rule"])
    assert run.sae.saelens.cfg.exists() and (run.sae.hub / "README.md").exists()
    met = json.loads(run.evaluate.summary.read_text())
    assert met["labels"][0] == "Atelectasis" and met["policy"]["uncertain"] == "u_zeros"
    assert len(met["labels"]) + len(met["dropped_labels"]) == 5      # chexpert5; a label with no positive is dropped, named
    assert set(met["comparison"]) == {"raw", "sae", "sae - raw"} and met["ground_truth"]["concepts"] > 10
    check_reconstruction_probes(run, met["ground_truth"])
    check_controls(run, met)
    check_causal(run, T.cfg, clone)
    names = figures.of("name", run.name_stage.names).read_text()
    assert "vocabulary" in names and "enrichment" in names
    ne = prov(run.score_names)["record"]
    assert ne["judge"] == "text" and "correctness" in ne
    # every stage published its tables and figures under its own name
    published = {p.name for p in figures.path.iterdir()}
    for st in STAGES:
        for f in st.publish(run):
            f = f[0] if isinstance(f, tuple) else f
            if f.exists(): assert figures.of(st.name, f, run.stage(st.name)).name in published or st.name == "report", f
    for f in ("labels_chexpert_label_counts.png", "labels_chexpert_label_counts.md", "phantom_findings.png",
              "phantom_nuisance.png", "encoder_zero_shot_auroc.md", "sae_sweep.md", "sae_sweep_pareto.svg",
              "sae_training_curve.png", "evaluate_monosemanticity.md", "evaluate_entropy_hist.png",
              "evaluate_correlation_heatmap.png", "evaluate_concept_recovery.png", "name_named_latents.md",
              "score_names_naming_accuracy.png", "report_decoder_umap.png", "RESULTS.md"):
        assert (figures / f).stat().st_size > 0, f
    page = figures.results.read_text()
    assert "PhantomCXR" in page and "NOT CheXpert" in page and "**Numeric paths**: pinned in every stage" in page
    assert ("**Two-level factors** (view AP / view PA)" in page) == bool(met["ground_truth"].get("levels"))
    for link in [l.split("](", 1)[1].split(")")[0] for l in page.splitlines() if l.startswith("![")]:
        assert (figures / link).exists(), link                 # every image the page shows is in the figures folder
    from test_browser import check_published_pages        # the repository page, interactive pages, HTML notebooks
    check_published_pages(run, figures.path)
    (figures / "phantom_findings.png").unlink()
    again = cli("reproduce", *args).stdout          # `medsae reproduce`, unchanged config: every stage is reused
    for st in STAGES: assert f"[{st.name}] up to date" in again, st.name
    times = again[again.index("where the time went"):]                # the stage-time table: every stage reused
    assert "| phantom |" in times and "| made |" not in times and "| stages made by this run | 0 |" in times, times
    made = T.out[T.out.index("where the time went"):]                 # the first run made them all
    assert all(f"| {st.name} |" in made for st in STAGES) and "| reused |" not in made, made
    assert (figures / "phantom_findings.png").exists()   # a deleted figure is published again
    for stage in COMMANDS:                          # each stage's own command finds the pipeline's result, and says so
        out = cli(stage, *args).stdout
        assert f"[{stage}] up to date" in out and f"[{stage}] results in" in out, out
    r = cli("name", *args, "--set", f"run.out_root={clone / 'elsewhere'}", check=False)  # nothing made: what to run first
    assert r.returncode == 2 and "run `medsae phantom`" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    changed = cli("reproduce", *args, "--set", "metrics.entropy_threshold=0.25").stdout
    for st in ("phantom", "labels", "encoder", "extract", "sae", "activations"): assert f"[{st}] up to date" in changed
    assert "[evaluate] up to date" not in changed and "metrics.entropy_threshold: 0.2 there, 0.25 here" in changed
    assert "[report] up to date" not in changed and "[controls] up to date" not in changed
    before = pd.read_csv(run.controls.full)                # one control's own field remakes that control alone
    cli("controls", *args, "--set", "metrics.entropy_threshold=0.25", "--set", "controls.ica_max_iter=50")
    assert json.loads(run.controls.summary.read_text())["reused"] == ["raw", "sae", "seeds", "random_encoder",
                                                                      "frozen_decoder", "random_projection", "pca"]
    after, keep = pd.read_csv(run.controls.full), before.kind != "ica"
    pd.testing.assert_frame_equal(before[keep], after[keep])
    assert after[after.kind == "ica"].iterations.iloc[0] <= 50
    # another SAE config: the commands downstream of the SAE refuse the old results and name the field
    r = cli("evaluate", *args, "--set", "sae.expansion=1", check=False)
    assert r.returncode == 2 and "sae.expansion: 2 there, 1 here" in r.stderr and "medsae sae" in r.stderr, r.stderr
    r = cli("name", *args, "--set", "sae.l1=3.0", check=False)
    assert r.returncode == 2 and "sae.l1" in r.stderr
    # rerunning the SAE with the new config makes evaluate stale through its input, not its own config
    cli("sae", *args, "--set", "sae.expansion=1", "--no-sweep")
    assert json.loads((run.sae / "provenance.json").read_text())["record"]["sae"]["m"] == 512
    r = cli("name", *args, "--set", "sae.expansion=1", "--set", "sae.sweep=false", check=False)
    assert r.returncode == 2 and "input sae was remade since" in r.stderr and "medsae evaluate" in r.stderr
    out = cli("evaluate", *args, "--set", "sae.expansion=1", "--set", "sae.sweep=false").stdout
    assert "[evaluate] results in" in out and "[activations]" in out
    import subprocess, sys                              # the architecture comparison script on this run
    arch = subprocess.run([sys.executable, str(ROOT / "scripts" / "recovery_by_arch.py"), "--run", str(run.path),
                           "--archs", "relu,topk", "--steps", "2"], capture_output=True, text=True, cwd=ROOT)
    assert arch.returncode == 0, arch.stderr[-2000:]
    lines = arch.stdout.splitlines()
    assert "concepts encodable" in lines[0] and [l.split(":")[0].strip() for l in lines[1:]] == ["relu", "topk"], lines
    assert all(f"of {met['ground_truth']['encodable']} encodable" in l for l in lines[1:]), lines


def check_controls(run, met):
    """The controls stage: given the run's own SAE and raw dimensions, its rows reproduce the evaluate and score-names
    stages' numbers; every control has its rows."""
    t = pd.read_csv(run.controls.full)
    assert list(dict.fromkeys(t.kind)) == ["raw", "sae", "seeds", "random_encoder", "frozen_decoder", "random_projection",
                                           "pca", "ica"]
    g, cmp_ = met["ground_truth"], met["comparison"]
    sc = pd.read_csv(run.score_names.summary).set_index(["namer", "unit_kind"]).accuracy
    for kind in ("raw", "sae"):
        r = t[t.kind == kind].iloc[0]
        assert np.isclose(r.entropy, cmp_[kind]["mean_best_entropy"]), (kind, r.entropy)
        held = cmp_[kind].get("heldout_mean_best_entropy")            # none where a label is constant on valid
        assert np.isnan(r.heldout_entropy) if held is None else np.isclose(r.heldout_entropy, held), (kind, r.heldout_entropy)
        assert (r.encodable, r.recovered, r.recovered_or_parts) == (
            g["encodable"], g[f"{kind}_recovered_encodable"], g[f"{kind}_recovered_or_split_encodable"]), kind
        assert np.isclose(r.naming_accuracy, sc[("vocabulary", kind)], atol=5e-4), (kind, r.naming_accuracy)  # 3 decimals
    assert np.isclose(t[t.kind == "sae"].naming_random.iloc[0], sc[("vocabulary", "random")], atol=5e-4)
    assert np.isclose(t[t.kind == "sae"]["diff"].iloc[0], cmp_["sae - raw"]["mean_best_entropy"])
    assert len(t[t.kind == "seeds"]) == 2 and t[t.kind == "seeds"].matched.between(0, 1).all()
    assert t[t.kind == "frozen_decoder"].decoder_unchanged.all()
    full = t[t.kind.isin(["pca", "ica"])]                               # rank min(train images, dimensions): 160 here
    assert (full.units == min(160, 512)).all() and (full.fve <= 1 + 1e-9).all()
    assert t[t.kind == "random_projection"].l0.iloc[0] <= round(json.loads(run.sae.summary.read_text())["valid"]["l0"])
    assert "## 7. Is it learning? Controls" in run.report.results.read_text()


def check_causal(run, cfg, clone):
    """The causal stage on the run: x's zero-shot AUROC per finding is the encoder stage's own (its code path, its
    embeddings of the test split), x_hat + (x - x_hat) gives it again, the latents intervened on are the evaluation's
    recovered ones, and the family is the run's SAE, its other seeds and every SAE of the sweep."""
    C = run.causal
    f = pd.read_csv(C.faithfulness).set_index("concept")
    enc = pd.read_csv(run.encoder.auroc).set_index("finding")
    zs = f[f.score == "zero-shot"]
    assert len(zs) >= 2 and set(f[f.score == "probe"].index) <= set(enc.index)
    both = zs.auroc_x.notna()
    assert np.allclose(zs.auroc_x[both], enc.zero_shot_auroc.reindex(zs.index)[both], atol=2e-3), (zs.auroc_x, enc)
    assert np.allclose(f.auroc_spliced, f.auroc_x, atol=1e-3, equal_nan=True) and (f.auroc_mean.dropna() == 0.5).all()
    rec = pd.read_csv(run.evaluate.recovery)
    want = {(r.concept, r.sae_latent) for r in rec.itertuples() if r.sae_recovered and r.concept in f.index}
    sp_ = pd.read_csv(C.specificity)
    assert want <= {(r.concept, r.latent) for r in sp_.itertuples()}, (want, sp_)
    fam = pd.read_csv(C.family)
    assert fam.sae.iloc[0] == "SAE (the run)" and (fam.sae.str.startswith("SAE at seed").sum() == 2)
    assert sorted(fam.sae[fam.sae.str.startswith("sweep ")].str[6:]) == sorted(pd.read_csv(run.sae.sweep).name)
    assert "## 8. Do the latents act on what they name?" in run.report.results.read_text()
    # 40 test images recover no concept at the page's rule: the stage again with a lax rule, so that it ablates and
    # steers; one ablation recomputed through the exported SAE (torch) and the encoder's text tower
    import torch
    from sklearn.metrics import roc_auc_score
    from medsae.activations import ExportedSAE
    from medsae.causal import causal_stage_run
    from medsae.encoders import FINDING_PROMPTS
    from medsae.extract import EmbeddingStore
    from medsae.stages import run_encoder
    lax = cfg.model_copy(update=dict(metrics=cfg.metrics.model_copy(update=dict(recovery_auroc=0.6, recovery_margin=0.0))))
    enc = run_encoder(cfg)
    te = lambda t: enc.encode_texts(t).cpu().numpy()
    s = causal_stage_run(lax, run, clone / "causal-lax", run.phantom.path, te, progress=False)
    from medsae.layout import CausalFolder
    L2 = CausalFolder(clone / "causal-lax")
    sp2, mat = pd.read_csv(L2.specificity), pd.read_csv(L2.matrix, index_col=0)
    assert s["targets"] == len(sp2) == len(mat) > 0 and list(mat.columns) == s["concepts"]
    st = pd.read_csv(L2.steering)
    assert len(st) == len(sp2) * 2 * (1 + len(cfg.causal.alphas)) and (st[st.alpha == 0].own == 0).all()
    assert L2.specificity_figure.exists() and L2.steering_figure.exists() and L2.specificity_html.exists()
    x, idx = EmbeddingStore(run.extract.store).split("test")
    gt = pd.read_csv(run.phantom.ground_truth, low_memory=False).set_index("Path").loc[idx["Path"]]
    truth = lambda c: gt[f"planted.{c}"].to_numpy() > 0
    r = next(r for r in sp2.itertuples() if r.concept in FINDING_PROMPTS and 0 < truth(r.concept).sum() < len(x))
    sae = ExportedSAE.load(run.sae.saelens)
    with torch.no_grad():
        xt = torch.as_tensor(x, dtype=torch.float32); z = sae.encode(xt); z0 = z.clone(); z0[:, r.latent] = 0
        x_abl = (sae.decode(z0) + (xt - sae.decode(z))).numpy()
    y = truth(r.concept)
    t = te(FINDING_PROMPTS[r.concept]).mean(0)
    score = lambda e: (e / np.linalg.norm(e, axis=1, keepdims=True)) @ t
    drop = roc_auc_score(y, score(x)) - roc_auc_score(y, score(x_abl))
    assert np.isclose(mat.loc[mat.index[list(sp2.latent).index(r.latent)], r.concept], drop, atol=1e-4), (drop, r)


def check_reconstruction_probes(run, g):
    """The evaluate stage's probes on the SAE's reconstruction and residual, recomputed here from the exported SAE
    (encode and decode in torch, not the stored sparse codes) and the embedding store's valid (fit) and test splits."""
    import pandas as pd
    import torch
    from medsae.activations import ExportedSAE
    from medsae.evaluation import phantom_concepts, probe_ceiling
    from medsae.extract import EmbeddingStore
    from medsae.layout import DatasetFolder
    t = pd.read_csv(run.evaluate.recovery)
    assert {"recon_probe_auroc", "residual_probe_auroc"} <= set(t.columns) and g["reconstructed_encodable"] <= g["encodable"]
    sae, store = ExportedSAE.load(run.sae.saelens), EmbeddingStore(run.extract.store)
    gt = pd.read_csv(DatasetFolder(run.phantom).ground_truth, low_memory=False).set_index("Path")
    (xv, iv), (xt, it) = store.split("valid"), store.split("test")
    ys = lambda idx: (lambda c: np.column_stack([c.y[:, c.names.index(n)] for n in t.concept]))(
        phantom_concepts(gt.loc[idx["Path"]].reset_index(), min_pos=0))
    with torch.no_grad():
        hat = lambda x: sae.decode(sae.encode(torch.as_tensor(np.asarray(x)))).numpy().astype(np.float64)
        hv, ht = hat(xv), hat(xt)
    rec = probe_ceiling(hv, ys(iv), ht, ys(it))
    res = probe_ceiling(np.asarray(xv, dtype=np.float64) - hv, ys(iv), np.asarray(xt, dtype=np.float64) - ht, ys(it))
    ok = np.isfinite(rec)
    assert ok.sum() >= 5 and np.allclose(t.recon_probe_auroc[ok], rec[ok], atol=0.02), (t.recon_probe_auroc.values, rec)
    assert np.allclose(t.residual_probe_auroc[ok], res[ok], atol=0.02), (t.residual_probe_auroc.values, res)
    assert not np.allclose(rec[ok], res[ok], atol=0.02)               # the two probes see different things
    inr = t.encodable & (t.recon_probe_auroc >= 0.9)
    assert g["reconstructed_encodable"] == int(inr.sum()) and g["not_reconstructed"] == list(t.concept[t.encodable & ~inr])
