"PhantomCXR: findings appear where anatomy says, labels keep CheXpert's statistics, the set is deterministic and resumable."
import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from conftest import run_cli
from medsae.config import CHEXPERT_LABELS, PhantomConfig
from medsae.data import LabelPolicy, frontal_only, label_matrix, read_chexpert_csv
from medsae.phantom import FINDINGS, Anatomy, f_pneumothorax, render
from medsae.phantomcxr import PhantomError, generate_phantom, neutral_nuisance, sample_studies


@pytest.fixture(scope="module")
def an():
    return Anatomy.build(224, cache=False)        # computed: the medsae cache's copy is checked against it below


def test_the_cached_anatomy_is_the_computed_one(an):
    "The anatomy read back from the medsae cache is the computed one: every field, its type, dtype, shape and bits."
    import dataclasses, pickle
    from medsae.assets import asset_path
    from medsae.phantom import _read_anatomy, anatomy_cache
    Anatomy.build(224)                            # kept in the cache, if it was not there yet
    back = _read_anatomy(anatomy_cache(224, asset_path("ct"), asset_path("ct_mask")))
    fields = lambda a: pickle.dumps([getattr(a, f.name) for f in dataclasses.fields(a) if f.name != "build_seconds"])
    assert fields(back) == fields(an)


@pytest.fixture(scope="module")
def table(chexpert_train):
    return read_chexpert_csv(chexpert_train)


def _img(an, findings, seed=0, **nu):
    n = neutral_nuisance()
    n.update(noise=0.0, zoom=1.0, **nu)
    return render(an, findings, n, np.random.default_rng(seed))


def _side_masks(an):
    return {s: an.marks[f"lung_{s}"] for s in ("right", "left")}


@pytest.mark.parametrize("name", ["Lung Opacity", "Lung Lesion", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                                  "Fracture"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_lateralised_findings_change_their_side_only(an, name, side):
    from medsae import phantom
    base, _ = _img(an, {})
    fn = phantom.FINDINGS[name]
    n = neutral_nuisance(); n.update(noise=0.0, zoom=1.0)
    # render with the side forced, through the finding function itself
    rng = np.random.default_rng(1)
    dl, p = fn(an, rng, 0.6, side=side)
    assert p["side"] == side
    other = "left" if side == "right" else "right"
    m = _side_masks(an)
    own, opp = np.abs(dl[m[side]]).mean(), np.abs(dl[m[other]]).mean()
    assert own > 0 and own > 20 * opp, (own, opp)


def test_right_effusion_raises_the_right_lower_lateral_zone(an):
    base, _ = _img(an, {})
    from medsae import phantom
    n = neutral_nuisance(); n.update(noise=0.0, zoom=1.0)
    orig = phantom._pick_side
    phantom._pick_side = lambda rng, side=None: "right"
    try: eff, p = _img(an, {"Pleural Effusion": 0.5})
    finally: phantom._pick_side = orig
    m = an.marks
    lung = m["lung_right"]
    rows = np.nonzero(lung.any(1))[0]
    lower = np.zeros_like(lung); lower[rows[int(0.8 * len(rows)):]] = True
    lateral = np.zeros_like(lung); lateral[:, : int(np.nanmedian(m["lateral_right"])) + 25] = True
    zone = lung & lower & lateral
    diff = eff.astype(float) - base.astype(float)
    assert diff[zone].mean() > 25                        # clearly whiter at the right base
    assert abs(diff[m["lung_left"]].mean()) < 1          # the left lung untouched
    upper = np.zeros_like(lung); upper[rows[: int(0.3 * len(rows))]] = True
    assert abs(diff[lung & upper].mean()) < 1            # the apex untouched


def test_pneumothorax_removes_lung_markings_at_the_periphery(an):
    dl, p = f_pneumothorax(an, np.random.default_rng(2), 0.7, side="left")
    d = an.marks["dist_left"] * an.px_mm
    rows = np.nonzero(an.marks["lung_left"].any(1))[0]
    band = an.marks["lung_left"] & (d > 1) & (d < 10)
    band[rows[int(0.5 * len(rows)):]] = False                      # the apical half, where the air is widest
    tissue = an.side_tissue["left"]
    def texture(x): return np.var((x - ndi.gaussian_filter(x, 1.5))[band])
    # the lung markings (vessels, interstitium) are gone from the air layer
    assert texture(tissue + dl) < 0.05 * texture(tissue)
    assert np.abs(dl[an.marks["lung_right"] & ~an.marks["lung_left"]]).max() < 0.01 * np.abs(dl).max()  # other side
    base, _ = _img(an, {})
    from medsae import phantom
    orig = phantom._pick_side
    phantom._pick_side = lambda rng, side=None: "left"
    try: ptx, _ = _img(an, {"Pneumothorax": 0.7}, seed=2)
    finally: phantom._pick_side = orig
    assert ptx[band].mean() < base[band].mean() - 5                 # a peripheral lucency
    w = p["apical_gap_mm"]
    line = an.marks["lung_left"] & (np.abs(d - w) < 1.0)
    line[rows[int(0.3 * len(rows)):]] = False
    assert (ptx.astype(float) - base)[line].mean() > 5              # the visceral pleural line is white


def test_cardiomegaly_widens_the_cardiac_silhouette(an):
    widths = []
    hr = int(an.marks["heart_center"][0] + 0.05 * an.n)
    for s in (0.0, 0.4, 0.8):
        img, p = _img(an, {"Cardiomegaly": s} if s else {})
        row = img[hr].astype(float)
        lung = np.median(img[an.marks["lung_left"]])
        mid = int(an.marks["heart_center"][1])
        thr = (lung + row[mid]) / 2
        bright = row > thr
        lo, hi = mid, mid
        while lo > 0 and bright[lo - 1]: lo -= 1
        while hi < len(row) - 1 and bright[hi + 1]: hi += 1
        widths.append(hi - lo)
    assert widths[0] < widths[1] < widths[2], widths


def test_ap_view_magnifies_the_heart(an):
    pa, _ = _img(an, {}, view="PA")
    ap, _ = _img(an, {}, view="AP")
    heart_zone = ndi.binary_dilation(an.heart_t[0] > 5, iterations=8) & ~(an.heart_t[0] > 5)
    assert (ap.astype(float) - pa)[heart_zone].mean() > 3


def test_support_devices_follow_the_trachea(an):
    from medsae.phantom import f_support_devices
    dl, p = f_support_devices(an, np.random.default_rng(0), 0.5, devices=["ett"])
    r = an.marks["carina"][0] - 40
    c = an.marks["trachea_cols"][r]
    assert dl[r, int(c) - 6: int(c) + 7].max() > 0.3 and dl[r, : int(c) - 20].max() < 1e-3


def test_findings_change_nothing_outside_the_body(an):
    outside = ~ndi.binary_dilation(an.marks["body"], iterations=3)
    for name, fn in FINDINGS.items():
        if name == "Support Devices": continue        # ECG wires run off the body, as they do
        dl, _ = fn(an, np.random.default_rng(3), 0.8)
        assert np.abs(dl[outside]).max() < 1e-3, name


def test_label_prevalence_matches_chexpert(table):
    cfg = PhantomConfig(n_train=6000, n_valid=1000, n_test=1000)
    s = sample_studies(table, cfg, seed=11)
    front = frontal_only(table)
    ps, _ = label_matrix(s)
    pf, _ = label_matrix(front)
    for j, c in enumerate(CHEXPERT_LABELS):
        p = pf[:, j].mean()
        se = np.sqrt(p * (1 - p) / len(s))
        assert abs(ps[:, j].mean() - p) < 4 * se + 1e-9, (c, ps[:, j].mean(), p)
    assert s["source_row"].is_unique and (s["split"].value_counts()[["train", "valid", "test"]] == [6000, 1000, 1000]).all()


def test_loader_reads_the_set_and_labels_equal_the_sidecar(tmp_path, table, an):
    cfg = PhantomConfig(n_train=40, n_valid=10, n_test=10, workers=1)
    man = generate_phantom(tmp_path, cfg, seed=5, policy=LabelPolicy("u_ones"), table=table, anatomy=an, progress=False)
    gt = pd.read_csv(tmp_path / "ground_truth.csv")
    for sp in ("train", "valid", "test"):
        t = read_chexpert_csv(tmp_path / f"{sp}.csv")
        g = gt[gt["split"] == sp]
        assert len(t) == man["counts"][sp] and t["Path"].tolist() == g["Path"].tolist()
        assert np.array_equal(t[list(CHEXPERT_LABELS)].to_numpy(), g[list(CHEXPERT_LABELS)].to_numpy(), equal_nan=True)
        assert all((tmp_path / p).is_file() for p in t["Path"])
    # u_ones: every positive or uncertain observation was planted, nothing else
    y, _ = label_matrix(gt, policy=LabelPolicy("u_ones"))
    planted = gt[[f"planted.{k}" for k in FINDINGS]].to_numpy()
    assert np.array_equal(planted, y[:, 1:].astype(int))
    raw = (tmp_path / "train.csv").read_text().splitlines()[1]
    assert ",1.0," in raw or ",0.0," in raw or ",-1.0," in raw     # CheXpert's own value format


def test_resume_after_a_crash_loses_and_duplicates_nothing(tmp_path, table, an, monkeypatch):
    from medsae import phantomcxr
    cfg = PhantomConfig(n_train=30, n_valid=5, n_test=5, workers=1)
    clean = generate_phantom(tmp_path / "clean", cfg, seed=9, table=table, anatomy=an, progress=False, chunk=8)
    real = phantomcxr.make_image
    def flaky(i, *a, **k):
        if i == 21: raise RuntimeError("power cut")
        return real(i, *a, **k)
    monkeypatch.setattr(phantomcxr, "make_image", flaky)
    with pytest.raises(RuntimeError, match="power cut"):
        generate_phantom(tmp_path / "x", cfg, seed=9, table=table, anatomy=an, progress=False, chunk=8)
    assert not (tmp_path / "x" / "manifest.json").exists()               # nothing partial looks complete
    assert len(list((tmp_path / "x" / ".chunks").glob("chunk_*.json"))) == 2
    monkeypatch.setattr(phantomcxr, "make_image", real)
    done = generate_phantom(tmp_path / "x", cfg, seed=9, table=table, anatomy=an, progress=False, chunk=8)
    assert done["images_sha256"] == clean["images_sha256"] and done["tables_sha256"] == clean["tables_sha256"]
    with pytest.raises(PhantomError, match="another config"):
        generate_phantom(tmp_path / "x", cfg, seed=10, table=table, anatomy=an, progress=False)


@pytest.mark.parametrize("args, field", [
    (["--set", "phantom.findings=[Pneumonitis]"], "phantom.findings"),
    (["--set", "phantom.severity_max=1.5"], "phantom.severity_max"),
    (["--size", "1024"], "phantom.size"),
    (["--n-train", "300000"], "phantom.n_train"),
    (["--set", "phantom.severity_min=0.8", "--set", "phantom.severity_max=0.2"], "severity_min"),
])
def test_bad_config_names_the_field(tmp_path, args, field):
    r = run_cli("phantom", "--set", f"run.out_root={tmp_path}", "--n-valid", "1", "--n-test", "1", *args, check=False)
    assert r.returncode == 2 and field in r.stderr and r.stderr.count("\n") <= 4, r.stderr
    assert not (tmp_path / "default" / "phantom" / "provenance.json").exists()   # nothing partial looks complete


def test_cli_is_deterministic_across_worker_counts(tmp_path, an):
    "`medsae phantom --workers 2` makes the set that one process makes (in process here, with the same anatomy)."
    from medsae.config import PhantomConfig
    from medsae.layout import RunLayout
    from medsae.phantomcxr import generate_phantom
    run_cli("phantom", "--set", f"run.out_root={tmp_path / 'b'}", "--figures", tmp_path / "b" / "figures", "--workers", "2",
            "--n-train", "20", "--n-valid", "4", "--n-test", "4", "--seed", "2")
    a = RunLayout(tmp_path / "a" / "default").phantom
    generate_phantom(a.path, PhantomConfig(n_train=20, n_valid=4, n_test=4), seed=2, anatomy=an, progress=False, workers=1)
    b = RunLayout(tmp_path / "b" / "default").phantom
    ma, mb = (json.loads(p.manifest.read_text()) for p in (a, b))
    assert ma["images_sha256"] == mb["images_sha256"] and ma["tables_sha256"] == mb["tables_sha256"]
    for f in (a.table("train"), a.ground_truth, a.reports):
        assert f.read_bytes() == (b / f.name).read_bytes()


@pytest.mark.parametrize("name", list(FINDINGS))
def test_moderate_findings_are_visible(an, name):
    "At severity 0.5 every finding changes a visible patch of the 224 px image (> 8 grey levels on > 100 pixels)."
    base, _ = _img(an, {})
    for seed in range(3):
        img, _ = _img(an, {name: 0.5}, seed=seed)
        assert (np.abs(img.astype(float) - base) > 8).sum() > 100, (name, seed)
