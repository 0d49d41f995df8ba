"""The default reproduction as `make reproduce` runs it (the Papermill pipeline notebooks, small sizes, into a
temporary run folder), then `medsae reproduce` (no Jupyter) on the same run: every stage reused."""
import json

import numpy as np

from conftest import ROOT, run_cli


def test_reproduce_default(tmp_path):
    args = ["reproduce", "--config", ROOT / "configs" / "default.yaml", "--set", f"run.out_root={tmp_path}",
            "--set", "phantom.n_train=160", "--set", "phantom.n_valid=40", "--set", "phantom.n_test=40",
            "--set", "encoder_training.epochs=2", "--set", "encoder_training.image_size=64",
            "--set", "encoder_training.widths=[8,16,32,64]", "--set", "encoder_training.batch_size=32",
            "--set", "sae.expansion=2", "--set", "sae.epochs=3", "--set", "sae.batch_size=64", "--set", "sae.l1=1.0",
            "--set", "sae.sweep_expansion=[1,2]", "--set", "sae.sweep_l1=[1.0]", "--set", "sae.sweep_epochs=2",
            "--set", "metrics.bootstrap=50", "--set", "metrics.permutations=5", "--set", "naming.min_active=5",
            "--set", "naming.eval_positive=5", "--set", "naming.eval_negative=5", "--set", "naming.eval_units=6",
            "--figures", tmp_path / "figures"]
    out = run_cli("pipeline", *args[1:]).stdout
    assert "pipeline finished" in out
    nbs = sorted((tmp_path / "default" / "notebooks").glob("*.ipynb"))
    assert [p.name[:2] for p in nbs] == ["01", "02", "03", "04", "05", "06", "07", "08", "09"]
    for p in nbs:                                      # executed, parameters injected, no error output
        nb = json.loads(p.read_text())
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
        assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    run = tmp_path / "default"
    prov = json.loads((run / "chexpert_labels" / "provenance.json").read_text())
    assert prov["record"]["balanced_subset"] > 0 and prov["record"]["chexpert_5x200"] == 1000
    ph = json.loads((run / "phantom" / "provenance.json").read_text())
    assert ph["record"]["counts"] == {"train": 160, "valid": 40, "test": 40}
    assert (run / "phantom" / "manifest.json").exists() and ph["outputs"]["PhantomCXR-v1.0/"]["files"] == 240
    assert json.loads((run / "phantom_labels" / "provenance.json").read_text())["record"]["rows"] == 160
    enc = json.loads((run / "encoder" / "provenance.json").read_text())
    assert set(enc["record"]["zero_shot_auroc"]) == set(enc["record"]["probe_auroc"]) and len(enc["record"]["probe_auroc"]) == 13
    emb = json.loads((run / "embeddings" / "provenance.json").read_text())
    assert emb["record"]["rows"] == 240 and emb["record"]["encoder"]["name"] == "medclip-phantom"
    E = np.load(run / "embeddings" / "store" / "embeddings.npy")
    assert E.shape == (240, 512) and np.allclose(np.linalg.norm(E, axis=1), 1, atol=1e-4)
    sae = json.loads((run / "sae" / "provenance.json").read_text())["record"]
    assert sae["sae"]["m"] == 1024 and -10 < sae["valid"]["fve"] <= 1 and sae["sweep_models"] == 2  # a few steps: any FVE
    assert isinstance(sae["sweep_rule_met"], bool) and (sae["sweep_rule_met"] or "sparsest" in sae["sweep_rule"])
    assert (run / "sae" / "saelens" / "cfg.json").exists() and (run / "sae" / "hub" / "README.md").exists()
    for f in ("chexpert_label_counts.png", "chexpert_label_counts.svg", "chexpert_label_counts.md",
              "phantom_findings.png", "phantom_nuisance.png", "encoder_zero_shot_auroc.md", "sae_sweep.md",
              "sae_sweep_pareto.png", "sae_training_curve.png"):
        assert (tmp_path / "figures" / f).stat().st_size > 0
    # metrics, naming, naming evaluation, report
    met = json.loads((run / "metrics" / "summary.json").read_text())
    assert met["labels"][0] == "No Finding" and met["policy"]["uncertain"] == "u_zeros"
    assert len(met["labels"]) + len(met["dropped_labels"]) == 14     # a label with no positive test image is dropped, named
    assert set(met["comparison"]) == {"raw", "sae", "sae - raw"} and met["ground_truth"]["concepts"] > 10
    names = (tmp_path / "figures" / "naming_names.csv").read_text()
    assert "vocabulary" in names and "enrichment" in names
    ne = json.loads((run / "naming_eval" / "provenance.json").read_text())["record"]
    assert ne["judge"] == "text" and "correctness" in ne
    page = (tmp_path / "figures" / "RESULTS.md").read_text()
    assert "2.38" in page and "PhantomCXR" in page and "NOT CheXpert" in page
    for f in ("metrics_monosemanticity.md", "metrics_entropy_hist.png", "metrics_correlation_heatmap.png",
              "metrics_concept_recovery.png", "naming_named_latents.md", "naming_eval_naming_accuracy.png",
              "report_decoder_umap.png"):
        assert (tmp_path / "figures" / f).stat().st_size > 0, f
    (tmp_path / "figures" / "phantom_findings.png").unlink()
    again = run_cli(*args).stdout                       # `medsae reproduce`, unchanged config: every stage is reused
    for stage in ("phantom", "encoder", "extract", "sae", "activations", "metrics", "naming", "naming-eval", "report"):
        assert f"[{stage}] up to date" in again, stage
    assert (tmp_path / "figures" / "phantom_findings.png").exists()   # a deleted figure is drawn again
    changed = run_cli(*args, "--set", "metrics.entropy_threshold=0.25").stdout   # one parameter: only downstream reruns
    for stage in ("phantom", "encoder", "extract", "sae", "activations"): assert f"[{stage}] up to date" in changed
    assert "[metrics] up to date" not in changed and "[report] up to date" not in changed
