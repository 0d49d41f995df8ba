"The default reproduction, as `make reproduce` runs it (into a temporary run folder)."
import json

from conftest import ROOT, run_cli


def test_reproduce_default(tmp_path):
    out = run_cli("reproduce", "--config", ROOT / "configs" / "default.yaml", "--set", f"run.out_root={tmp_path}",
                  "--figures", tmp_path / "figures").stdout
    assert "reproduction finished" in out
    prov = json.loads((tmp_path / "default" / "chexpert_labels" / "provenance.json").read_text())
    assert prov["record"]["balanced_subset"] > 0 and prov["record"]["chexpert_5x200"] == 1000
    for f in ("chexpert_label_counts.png", "chexpert_label_counts.svg", "chexpert_label_counts.md"):
        assert (tmp_path / "figures" / f).stat().st_size > 0
