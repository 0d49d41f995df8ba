"The default reproduction, as `make reproduce` runs it (small PhantomCXR sizes, into a temporary run folder)."
import json

from conftest import ROOT, run_cli


def test_reproduce_default(tmp_path):
    args = ["reproduce", "--config", ROOT / "configs" / "default.yaml", "--set", f"run.out_root={tmp_path}",
            "--set", "phantom.n_train=120", "--set", "phantom.n_valid=20", "--set", "phantom.n_test=20",
            "--figures", tmp_path / "figures"]
    out = run_cli(*args).stdout
    assert "reproduction finished" in out
    run = tmp_path / "default"
    prov = json.loads((run / "chexpert_labels" / "provenance.json").read_text())
    assert prov["record"]["balanced_subset"] > 0 and prov["record"]["chexpert_5x200"] == 1000
    ph = json.loads((run / "phantom" / "provenance.json").read_text())
    assert ph["record"]["counts"] == {"train": 120, "valid": 20, "test": 20}
    assert (run / "phantom" / "manifest.json").exists() and ph["outputs"]["PhantomCXR-v1.0/"]["files"] == 160
    assert json.loads((run / "phantom_labels" / "provenance.json").read_text())["record"]["rows"] == 120
    for f in ("chexpert_label_counts.png", "chexpert_label_counts.svg", "chexpert_label_counts.md",
              "phantom_findings.png", "phantom_nuisance.png"):
        assert (tmp_path / "figures" / f).stat().st_size > 0
    again = run_cli(*args).stdout                       # unchanged config: the phantom stage is reused
    assert "[phantom] up to date" in again
