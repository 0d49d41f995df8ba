"""The explorer as a student uses it: JupyterLab in headless Chromium opens the explorer notebook on a finished run,
runs it, picks a latent by typing in the search box, switches to compare mode, and every panel (names, top images,
histogram, label correlations) follows; no cell shows an error. Screenshots go to `$MEDSAE_SCREENSHOTS` (default: a
temporary folder, printed). Also the offline HTML rendering of executed notebooks, opened in Chromium: no broken image,
no empty output, every plotly figure drawn.

Needs a Chromium (Debian's `chromium`, installed by `.ci/run`; or `$MEDSAE_CHROMIUM`) and the `playwright` package
(which drives it; its own browser download is never used). Skipped, saying which is missing, where either cannot be had."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    "A Chromium executable: `$MEDSAE_CHROMIUM`, else the first of the usual names on PATH."
    env = os.environ.get("MEDSAE_CHROMIUM")
    if env: return env if Path(env).is_file() else None
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def browser_unavailable() -> str | None:
    "Why no browser can be had here (None: one can)."
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return "the playwright package is not installed (pip install -r requirements.lock)"
    if chromium_path() is None:
        return (f"no Chromium found ({', '.join(CHROMIUM_NAMES)} on PATH or $MEDSAE_CHROMIUM): "
                "apt-get install chromium (what .ci/run does)")
    return None


@pytest.fixture(scope="module")
def browser():
    why = browser_unavailable()
    if why: pytest.skip(why)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def screenshot_dir(tmp_path_factory) -> Path:
    d = Path(os.environ.get("MEDSAE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {d}")
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180):
    "Wait until `url` answers 200, the server dies (fail with its log) or `timeout` s pass."
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None: pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200: return
        except OSError: pass
        time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A JupyterLab server on a free port with a token, serving a temporary folder; yields (base url, token, folder)."
    why = browser_unavailable()
    if why: pytest.skip(why)
    home = tmp_path_factory.mktemp("lab")
    root = home / "root"; root.mkdir()
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), "medsae-browser-test"
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "JUPYTER_PLATFORM_DIRS")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    log = home / "lab.log"
    exe = Path(sys.executable).parent / "jupyter-lab"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(exe), "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                                 f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
                                 "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                                 "--LabApp.extension_manager=readonly", "--allow-root"],
                                cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/api/status?token={token}", proc, log)
        yield base, token, root
    finally:
        proc.terminate()
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: proc.kill()


def explorer_notebook(dest: Path, run_dir: Path, image_root: Path, split: str = "valid") -> Path:
    "The pipeline's explorer notebook, its parameters cell set to open `run_dir` as it is (what a student edits)."
    nb = nbformat.read(ROOT / "nbs" / "_pipeline" / "12_explore.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += f"\nrun_dir = {str(run_dir)!r}\nimage_root = {str(image_root)!r}\nsplit = {split!r}\n"
    nbformat.write(nb, dest)
    return dest


# JavaScript run in the page: the state of the explorer's output area, read from the DOM
PANELS_JS = """() => {
  const out = [...document.querySelectorAll('.jp-OutputArea-output')];
  const names = document.querySelector('.medsae-names');
  const img = [...document.querySelectorAll('.widget-output img')].find(i => i.src.startsWith('data:image/png'));
  const plots = [...document.querySelectorAll('.widget-output .js-plotly-plot')];
  return {
    latents: names ? names.dataset.latents : null,
    names: names ? names.innerText : '',
    img: img ? img.src.length + ':' + img.src.slice(-64) : null,
    imgLoaded: img ? img.complete && img.naturalWidth > 0 : false,
    plots: plots.map(p => ({title: (p.querySelector('.gtitle') || {}).textContent || '',
                            traces: p.querySelectorAll('.trace, .hm, .heatmaplayer image').length})),
    errors: out.filter(o => /Traceback \\(most recent call last\\)/.test(o.innerText)).map(o => o.innerText.slice(0, 400)),
    busy: [...document.querySelectorAll('.jp-InputArea-prompt')].some(p => p.innerText.includes('*')),
  };
}"""


def _panels(page) -> dict: return page.evaluate(PANELS_JS)


def _wait_panels(page, latents: str, timeout: float = 180_000):
    "Wait until the four panels show `latents` (names panel, both plotly titles) and the tile image has loaded."
    page.wait_for_function(
        """(want) => { const f = """ + PANELS_JS + """; const s = f();
             const named = want.split(' ').every(j => s.plots.length === 2 && s.plots.every(p => p.title.includes('latent ' + j)));
             return s.latents === want && named && s.imgLoaded; }""", arg=latents, timeout=timeout)
    return _panels(page)


def _kernel_idle(page):
    "Wait until the notebook's kernel is connected and idle (the status bar says so)."
    page.wait_for_function("() => /\\| Idle/.test((document.querySelector('#jp-main-statusbar') || {}).innerText || '')")


def _cells_done(page):
    "Wait until no cell is queued or running ([*])."
    page.wait_for_function("() => ![...document.querySelectorAll('.jp-InputArea-prompt')].some(p => p.innerText.includes('*'))")


def test_explorer_in_jupyterlab(lab, browser, tmp_path, tmp_path_factory):
    from medsae.explorer import LatentAtlas, make_demo_run
    base, token, root = lab
    shots = screenshot_dir(tmp_path_factory)
    run, images = make_demo_run(tmp_path, n_images=80)     # a finished run's folders, images with planted findings
    explorer_notebook(root / "explore.ipynb", run, images, split="valid")
    atlas = LatentAtlas.from_run(run, images, split="valid")
    opens, carrier = atlas.featured(1)[0], atlas.search("cardiomegaly")[0]
    assert opens != carrier == 1                          # the planted Cardiomegaly latent leads the search
    page = browser.new_page(viewport={"width": 1500, "height": 2300})
    page.set_default_timeout(300_000)
    try:
        _drive_explorer(page, base, token, shots, str(opens), str(carrier), atlas)
    except Exception:
        page.screenshot(path=str(shots / "explorer_failure.png"))
        raise
    finally: page.close()


def _dropdown(page, label: str):
    "The <select> of the explorer's dropdown whose description is `label`."
    return page.locator(".widget-dropdown", has=page.locator(".widget-label", has_text=label)).locator("select").first


def _drive_explorer(page, base, token, shots, opens: str, carrier: str, atlas):
    page.goto(f"{base}/lab/tree/explore.ipynb?token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    _kernel_idle(page)
    page.keyboard.press("Control+b")                     # hide the file browser: room for the panels
    # Run > Run All Cells, as a student does
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_selector(".widget-text input", state="visible")
    first = _wait_panels(page, opens)                    # opens on the featured latent (the best unit with the highest r)
    _cells_done(page)
    page.locator(".widget-output").first.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "explorer_opened.png"))
    want = atlas.names(int(opens))
    assert first["errors"] == [] and all(n in first["names"] for n in want["namer"]) and len(want), first["names"]
    assert all(c in first["names"] for c in want.loc[want["ok"], "concept"])
    assert [p["traces"] > 0 for p in first["plots"]] == [True, True], first["plots"]
    # pick a latent by search: typing a concept and pressing Enter lists its carriers, strongest first
    search = page.locator(".widget-text input").first
    search.fill("cardiomegaly"); search.press("Enter")
    picked = _wait_panels(page, carrier)
    page.screenshot(path=str(shots / "explorer_search.png"))
    assert picked["img"] != first["img"] and "cardiomegaly" in picked["names"] and picked["errors"] == []
    assert f"label correlations: latent {carrier}" in picked["plots"][1]["title"]
    options = _dropdown(page, "latent").locator("option").all_inner_texts()
    assert options and options[0].startswith(f"{carrier}:"), options
    # compare mode: the second dropdown is enabled and every panel shows both latents
    page.locator("button.widget-toggle-button", has_text="compare").click()
    both = page.wait_for_function("""() => { const n = document.querySelector('.medsae-names');
                                       return n && n.dataset.latents.split(' ').length === 2 ? n.dataset.latents : null; }""").json_value()
    cmp = _wait_panels(page, both)
    assert both.split()[0] == carrier and cmp["img"] != picked["img"] and cmp["errors"] == []
    assert " vs latent " in cmp["plots"][1]["title"] and page.locator(".widget-output .js-plotly-plot .hm").count() >= 1
    assert not _dropdown(page, "vs").is_disabled()
    page.screenshot(path=str(shots / "explorer_compare.png"))
    # no cell of the notebook shows an error (JupyterLab draws a traceback as stderr text)
    assert _panels(page)["errors"] == []


# ---- the offline HTML rendering of executed notebooks -------------------------------------------------------------

HTML_JS = """() => ({
  broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 120)),
  images: document.images.length,
  empty: [...document.querySelectorAll('.jp-OutputArea-output')].filter(o => !o.innerText.trim()
           && !o.querySelector('img, svg, canvas, .js-plotly-plot, iframe')).length,
  outputs: document.querySelectorAll('.jp-OutputArea-output').length,
  plotly: document.querySelectorAll('.plotly-graph-div').length,
  drawn: document.querySelectorAll('.plotly-graph-div .main-svg').length,
})"""


def check_html_in_browser(browser, html_files, shots: Path | None = None) -> dict:
    """Open each offline HTML page in Chromium, with the network cut: no broken image, every plotly figure drawn, no
    script error; a notebook rendering (a page with output areas) also has no empty output."""
    seen = {}
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page_errors = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.route("**/*", lambda r: r.abort() if not r.request.url.startswith(("file:", "data:")) else r.continue_())
    for f in html_files:
        page.goto(Path(f).resolve().as_uri())
        page.wait_for_load_state("load")
        page.wait_for_function("() => [...document.querySelectorAll('.plotly-graph-div')].every(d => d.querySelector('.main-svg'))",
                               timeout=60_000)
        s = page.evaluate(HTML_JS)
        assert s["broken"] == [], (f, s["broken"])
        assert s["empty"] == 0 and (s["outputs"] > 0 or s["plotly"] > 0), (f, s)
        assert s["drawn"] >= s["plotly"], (f, s)
        if shots is not None: page.screenshot(path=str(shots / f"html_{Path(f).stem}.png"))
        seen[Path(f).name] = s
    assert page_errors == [], page_errors                 # no script failed (offline: nothing from the network)
    page.close()
    return seen


def test_html_rendering_offline(browser, tmp_path):
    "An executed notebook with a figure, a plotly figure and a table, rendered by the report's renderer, in Chromium."
    from medsae.report import render_notebooks
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"),
                nbformat.v4.new_code_cell(
                    "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt, pandas as pd\n"
                    "from medsae.report import show_figure\n"
                    "fig, ax = plt.subplots(); ax.plot([1, 3, 2]); show_figure(fig)\n"
                    "pd.DataFrame({'a': [1, 2]})"),
                nbformat.v4.new_code_cell(
                    "import plotly.graph_objects as go\nfrom medsae.report import show_plotly\n"
                    "show_plotly(go.Figure(go.Scatter(x=[1, 2], y=[3, 1])))")]
    src = tmp_path / "01_demo.ipynb"
    nbformat.write(nb, src)
    subprocess.run([str(Path(sys.executable).parent / "jupyter"), "nbconvert", "--to", "notebook", "--execute", "--inplace",
                    str(src)], check=True, capture_output=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    out = render_notebooks([src], tmp_path / "html")
    assert [p.name for p in out] == ["01_demo.html"] and (tmp_path / "html" / "plotly.min.js").exists()
    s = check_html_in_browser(browser, out)["01_demo.html"]
    assert s["images"] >= 1 and s["plotly"] == 1 and s["drawn"] >= 1


def check_published_pages(run, figures, shots: Path | None = None) -> dict:
    """What the report makes for a finished `medsae pipeline` run (`run`: its RunLayout; `figures`: its figures folder):
    the repository page (kept in the run's report folder for `medsae reference update`) shows `figures/reference/`
    images that are exactly the small PNGs of the run's `report/reference/`; the interactive pages and every executed
    notebook's HTML rendering exist and, in Chromium (when one can be had), show no broken image, no empty output and
    every plotly figure drawn. Used by tests/test_reproduce.py, which makes such a run."""
    from PIL import Image
    figures = Path(figures)
    repo = Path(run.report.results_repo).read_text()
    from medsae.reference import page_links
    block = []                                             # every table is a table on the repository page: one cell
    for line in [*repo.splitlines(), ""]:                  # count per table (a bare | splits a cell), at most 8 cells
        if line.startswith("|"): block.append(len(re.findall(r"(?<!\\)\|", line)) - 1)
        elif block: assert len(set(block)) == 1 and block[0] <= 8, (block, line); block = []
    assert not re.search(r"^\|\s*\|", repo, re.M)            # no unnamed (index) column
    links = page_links(repo)                               # images and tables, all kept with the page
    assert links and all(l.startswith("figures/reference/") for l in links), links
    ref = sorted([*Path(run.report.reference).glob("*.png"), *Path(run.report.reference).glob("*.csv")])
    assert {p.name for p in ref} == {Path(l).name for l in links} and any(l.endswith(".csv") for l in links)
    assert sum(p.stat().st_size for p in ref) < 4_000_000 and all(Image.open(p).width <= 1400 for p in ref if p.suffix == ".png")
    pages = [figures / f"report_{k}.html" for k in ("decoder_map", "entropy_r", "label_heatmap")]
    for p in pages: assert p.is_file() and 'src="plotly.min.js"' in p.read_text(), p
    assert (figures / "plotly.min.js").stat().st_size > 1_000_000
    html = sorted(Path(run.report.html).glob("*.html"))
    nbs = sorted(Path(run.notebooks).glob("*.ipynb"))
    assert [p.stem for p in html] == [p.stem for p in nbs] and (Path(run.report.html) / "plotly.min.js").exists()
    for l in re.findall(r"\]\(([^)\s]+\.html)\)", (figures / "RESULTS.md").read_text()):
        assert (figures / l).resolve().is_file(), l          # the page links the pages and the renderings
    if browser_unavailable(): return {}
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            seen = check_html_in_browser(b, [*html, *pages], shots)
            page = b.new_page(viewport={"width": 1200, "height": 900})   # hover a coloured point of the decoder map
            page.goto(pages[0].resolve().as_uri())
            page.locator(".plotly-graph-div .scatterlayer .trace").nth(1).locator(".point").first.hover(force=True)
            tip = page.wait_for_selector(".hoverlayer .hovertext", timeout=30_000).text_content()
            assert "latent" in tip and "entropy" in tip and "best label" in tip, tip
        finally: b.close()
    assert sum(s["plotly"] for k, s in seen.items() if k.startswith(("06_", "11_"))) >= 3   # the notebooks' plotly figures
    assert seen["11_report.html"]["images"] >= 5                                          # the results page's figures
    import tempfile                                          # the site's results page, as `make docs` renders it:
    from medsae.report import build_site                     # its figures and the run's interactive figures load
    site = Path(tempfile.mkdtemp()) / "_site"
    build_site(site, site.parent / "no_chapters", ROOT / "nbs" / "sidebar.yml", run.report.results_repo,
               run.report.reference, figures)
    made = sorted(p.relative_to(site).as_posix() for p in (site / "figures").glob("report_*.html"))
    web = check_site(site, ["results.html", *made])
    assert web["results.html"]["images"] == len(re.findall(r"!\[", repo)) and len(made) == 3
    assert all(web[m]["drawn"] >= 1 for m in made), web
    return seen

def check_site(site: Path, pages: list[str] | None = None) -> dict:
    """Open every page of a static site (`make docs` without Quarto: `_site/`) in Chromium: each loads, shows no broken
    image, no raw `#|` directive and no `{{<` shortcode, and links only to files the site holds; plotly figures draw.
    Returns per page what it counted (images, links, plotly figures drawn, h3/h4 headings: show_doc signatures)."""
    from playwright.sync_api import sync_playwright
    out = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = b.new_page()
            for f in pages or sorted(q.name for q in site.glob("*.html")):
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto((site / f).resolve().as_uri(), wait_until="load")
                page.wait_for_timeout(200)
                s = page.evaluate("""() => ({
                    broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
                    images: document.images.length,
                    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
                    text: document.body.innerText,
                    headings: document.querySelectorAll('h3, h4').length,
                    plotly: document.querySelectorAll('.js-plotly-plot').length,
                    drawn: document.querySelectorAll('.js-plotly-plot .main-svg').length})""")
                local = [l.split("#")[0] for l in s["links"] if not re.match(r"[a-z]+:|#", l)]
                dead = [l for l in local if l and not (site / f).parent.joinpath(l).resolve().exists()]
                assert not s["broken"] and not dead, (f, s["broken"], dead)
                assert not re.search(r"(?m)^\s*#\|\s*[\w-]+", s["text"]) and "{{<" not in s["text"], f   # no directive
                assert not errors, (f, errors)
                out[f] = dict(images=s["images"], links=len(local), headings=s["headings"], plotly=s["plotly"],
                              drawn=s["drawn"], text=s["text"])
        finally:
            b.close()
    return out
