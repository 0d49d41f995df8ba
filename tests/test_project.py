"The project's shape: notebooks and package in sync, site configuration, configs, README promises."
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT


def test_nbdev_export_changes_nothing(tmp_path):
    for name in ("nbs", "medsae"): shutil.copytree(ROOT / name, tmp_path / name, symlinks=True)
    shutil.copy(ROOT / "settings.ini", tmp_path)
    subprocess.run([str(Path(sys.executable).parent / "nbdev_export")], cwd=tmp_path, check=True)
    for f in sorted((ROOT / "medsae").glob("*.py")):
        assert (tmp_path / "medsae" / f.name).read_text() == f.read_text(), f"{f.name} is out of sync with nbs/"
    assert sorted(p.name for p in (tmp_path / "medsae").glob("*.py")) == sorted(p.name for p in (ROOT / "medsae").glob("*.py"))


def test_quarto_site_configuration():
    q = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    assert q["project"]["type"] == "website"
    nbs = ROOT / "nbs"
    assert (nbs / "_quarto.yml").resolve() == (ROOT / "_quarto.yml").resolve()
    for f in q["metadata-files"]: assert (nbs / f).exists(), f
    assert (nbs / q["format"]["html"]["css"]).exists()
    # the committed sidebar lists exactly the notebooks there are
    from nbdev.quarto import nbdev_sidebar
    import contextlib, io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): nbdev_sidebar(path=nbs, printit=True, force=True)   # custom_sidebar: kept
    assert yaml.safe_load(buf.getvalue()) == yaml.safe_load((nbs / "sidebar.yml").read_text())
    # every page the sidebar and the navbar name exists (the results page through its link)
    pages = yaml.safe_load((nbs / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    pages += [e["href"] for e in q["website"]["navbar"].get("left", [])]
    for page in pages: assert (nbs / page).exists(), page
    assert (nbs / "results.md").resolve() == (ROOT / "RESULTS.md").resolve()
    assert "figures/" in (ROOT / "RESULTS.md").read_text() and (nbs / "figures").resolve() == (ROOT / "figures").resolve()


def test_docs_site_builds_and_reads_in_chromium():
    """`make docs` where Quarto is missing (here): `nbdev_proc_nbs` runs every chapter's doc cells (the sidebar stays),
    and nbconvert renders every chapter and the results page into _site/, in the sidebar's order. In Chromium every
    page loads with no broken image or link and no raw directive, the show_doc signatures are rendered, and the results
    page shows the committed figures; the home page sends a student to the explorer and a reviewer to the results."""
    import yaml
    from test_browser import browser_unavailable, check_site
    sidebar = (ROOT / "nbs" / "sidebar.yml").read_bytes()
    r = subprocess.run(["make", "docs"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                                  if not (Path(p) / "quarto").exists())})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Quarto is not installed" in r.stdout
    assert {p.name for p in (ROOT / "_proc").glob("*.ipynb")} == {p.name for p in (ROOT / "nbs").glob("*.ipynb")}
    assert (ROOT / "nbs" / "sidebar.yml").read_bytes() == sidebar
    site = ROOT / "_site"
    order = [Path(e).stem for e in yaml.safe_load(sidebar)["website"]["sidebar"]["contents"]]
    pages = sorted(site.glob("*.html"))
    assert len(pages) == len(order) + 1                                   # every chapter, and the results page
    home = (site / "index.html").read_text()
    nav = re.findall(r'<nav class="medsae-nav">(.*?)</nav>', home)[0]
    hrefs = re.findall(r'href="([^"]+)"', nav)
    assert hrefs[:2] == ["index.html", "results.html"] and "numerics.html" in hrefs and len(hrefs) == len(pages)
    assert hrefs.index("config.html") < hrefs.index("numerics.html") < hrefs.index("explorer.html")   # sidebar order
    if browser_unavailable(): pytest.skip(browser_unavailable())
    seen = check_site(site)
    assert seen["numerics.html"]["headings"] >= 5 and "pin_cpu" in seen["numerics.html"]["text"]   # show_doc
    shown = len(re.findall(r"!\[[^\]]*\]\(", (ROOT / "RESULTS.md").read_text()))
    assert seen["results.html"]["images"] == shown > 0
    assert "explorer.html" in re.findall(r'href="([^"]+)"', home.split("</nav>", 1)[1])
    assert "results.html" in re.findall(r'href="([^"]+)"', home.split("</nav>", 1)[1])


def test_pipeline_notebooks_are_numbered_and_take_parameters():
    import json
    nbs = sorted((ROOT / "nbs" / "_pipeline").glob("*.ipynb"))
    assert [p.name[:3] for p in nbs] == [f"{i:02d}_" for i in range(1, len(nbs) + 1)] and len(nbs) >= 8
    for p in nbs:
        cells = json.loads(p.read_text())["cells"]
        assert "".join(cells[0]["source"]).startswith("# "), p.name
        params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
        assert len(params) == 1 and "config =" in "".join(params[0]["source"]), p.name
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), f"{p.name} has stored outputs"


def test_every_notebook_is_a_titled_chapter():
    import json
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        first = "".join(cells[0]["source"])
        assert cells[0]["cell_type"] == "markdown" and first.startswith("# "), nb.name
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), f"{nb.name} has stored outputs"


def test_shipped_configs_are_valid():
    from medsae.config import load_config
    d, p = load_config(ROOT / "configs" / "default.yaml"), load_config(ROOT / "configs" / "paper.yaml")
    assert d.data.dataset == "phantom" and p.data.dataset == "chexpert" and "medgemma" in p.naming.namers and p.naming.judge == "medgemma"
    assert p.sae.expansion * 512 == 8192 and p.data.uncertain == "published"


def test_the_two_paper_configs_differ_only_in_the_published_choices():
    "paper.yaml (as published) and paper-corrected.yaml (ours) run the same data and models."
    from medsae.config import config_to_dict, load_config
    def flat(d, pre=""):
        return {k2: v2 for k, v in d.items() for k2, v2 in (flat(v, f"{pre}{k}.").items() if isinstance(v, dict) else [(pre + k, v)])}
    p, c = (flat(config_to_dict(load_config(ROOT / "configs" / f))) for f in ("paper.yaml", "paper-corrected.yaml"))
    differ = {k for k in p if p[k] != c[k]}
    published = {"data.uncertain", "data.frontal_only", "data.preprocess", "data.subset_order", "sae.normalise", "sae.l1",
                 "sae.resample_epochs", "sae.resample_rule", "sae.sweep", "naming.protocol", "naming.split",
                 "naming.load_in_4bit", "metrics.detector", "naming.vocabulary_min_count"}
    assert differ - {"run.name"} <= published, differ - published
    assert {"data.uncertain", "sae.normalise", "naming.protocol", "data.frontal_only"} <= differ
    for k in ("data.root", "encoder.name", "encoder.weights", "sae.expansion", "sae.epochs", "metrics.split", "naming.model"):
        assert p[k] == c[k], k


def test_readme_leads_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert "make reproduce" in text and "make test" in text
    assert len(text.splitlines()) <= 150                                     # a front page; the rest is in the chapters
    assert text.index("make reproduce") < 1500                                # the two commands come first
    for link in re.findall(r"\]\(([^)\s#]+)\)", text):                      # every image and file it links exists
        assert link.startswith("http") or (ROOT / link).exists(), link
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_no_import_cycle():
    "The package's modules import each other (at the top or inside functions) without a cycle."
    import ast
    graph = {}
    for f in sorted((ROOT / "medsae").glob("*.py")):
        if f.stem.startswith("_"): continue
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level == 1: deps.add(mod.split(".")[0] if mod else "")
                elif mod.startswith("medsae."): deps.add(mod.split(".")[1])
                elif mod == "medsae": deps |= {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("medsae.")}
        graph[f.stem] = {d for d in deps if d and d != f.stem}
    state = {}
    def visit(m, path):
        if state.get(m) == "done": return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [m])}"
        state[m] = "open"
        for d in sorted(graph.get(m, ())): visit(d, path + [m])
        state[m] = "done"
    for m in graph: visit(m, [])


def test_committed_results_page_shows_only_committed_figures():
    """RESULTS.md (the reference run's page) shows its images and links its tables in figures/reference/, which holds
    exactly those: no link to a file the repository does not hold (a run's folder, an untracked figure)."""
    import re
    from medsae.reference import page_links
    page = (ROOT / "RESULTS.md").read_text()
    shown = page_links(page)
    assert shown and all(s.startswith("figures/reference/") for s in shown), shown
    assert not [s for s in shown if not (ROOT / s).is_file()]
    assert not re.findall(r".*\b\d+(?:\.\d+)? s\b.*", page)              # no run time: the page is the same everywhere
    ref = ROOT / "figures" / "reference"
    assert {Path(s).name for s in shown} == {p.name for p in [*ref.glob("*.png"), *ref.glob("*.csv")]}
    tracked = subprocess.run(["git", "ls-files", "figures/reference"], cwd=ROOT, capture_output=True, text=True).stdout
    if tracked: assert set(tracked.split()) == set(shown)            # in a clone: every figure it shows is committed
