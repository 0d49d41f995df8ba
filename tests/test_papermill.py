"The configuration as Papermill parameters: a notebook with a `parameters` cell, executed with -p, resolves the config."
import json
import subprocess
import sys
from pathlib import Path

import nbformat

from conftest import ROOT


def test_config_as_papermill_parameters(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('config = "configs/default.yaml"\noverrides = []')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import json\nfrom medsae.config import load_config, config_to_dict\n"
        "cfg = load_config(config, overrides)\n"
        f"open({str(tmp_path / 'resolved.json')!r}, 'w').write(json.dumps(config_to_dict(cfg)))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    pm = Path(sys.executable).parent / "papermill"
    subprocess.run([str(pm), str(src), str(out), "--cwd", str(ROOT), "-k", "python3",
                    "-p", "config", "configs/paper.yaml", "-y", "overrides: [sae.l1=0.0001, run.seed=5]"],
                   check=True, capture_output=True, text=True, timeout=300)
    cfg = json.loads((tmp_path / "resolved.json").read_text())
    assert cfg["data"]["dataset"] == "chexpert" and cfg["sae"]["l1"] == 1e-4 and cfg["run"]["seed"] == 5
    executed = nbformat.read(out, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def test_pipeline_notebook_runs_where_jupyterlab_opens_it(tmp_path):
    "Opened in JupyterLab, a pipeline notebook's folder is nbs/_pipeline/: relative paths still mean the repository's."
    from conftest import TINY
    src = ROOT / "nbs" / "_pipeline" / "01_phantom.ipynb"
    pm = Path(sys.executable).parent / "papermill"
    overrides = [*TINY, f"run.out_root={tmp_path}", "phantom.n_train=8", "phantom.n_valid=4", "phantom.n_test=4"]
    r = subprocess.run([str(pm), str(src), str(tmp_path / "out.ipynb"), "--cwd", str(src.parent), "-k", "python3",
                        "-p", "config", "configs/default.yaml", "-p", "figures", str(tmp_path / "figures"),
                        "-y", json.dumps({"overrides": overrides})], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "default" / "phantom" / "provenance.json").exists()
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2                                   # the findings and nuisance figures, shown inline
