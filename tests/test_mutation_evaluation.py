"""The evaluation statistics and the concept-recovery rule against independent computations: numpy's corrcoef on
resampled rows, scikit-learn's AUROC, brute-force matching, and cases worked out by hand (the mutation tests of
medsae.evaluation: `make mutate`)."""
import itertools

import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

import medsae.encoders  # noqa: F401  (phantom_concepts imports it: once, not in every mutant's run)

from medsae.evaluation import (_ci, _fixed_stats, _stats_of_r, _weighted_r, auroc_matrix, compare_units,
                               concept_recovery, hungarian_matching, paired_bootstrap, permutation_null,
                               phantom_concepts, polysemanticity)
from medsae.metrics import MetricError, correlations, detection, monosemanticity, monosemanticity_score

LABS = ("A", "B", "C")


def pearson(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    "r (m, k) by numpy's corrcoef, column by column; NaN where either side is constant."
    out = np.full((a.shape[1], y.shape[1]), np.nan)
    for j in range(a.shape[1]):
        for c in range(y.shape[1]):
            if a[:, j].std() > 0 and y[:, c].std() > 0: out[j, c] = np.corrcoef(a[:, j], y[:, c])[0, 1]
    return out


def entropy_ref(r: np.ndarray) -> np.ndarray:
    "Shannon entropy (nats) of each row's |r| / sum |r|, written out."
    out = []
    for row in np.abs(r):
        p = row / row.sum()
        out.append(-sum(x * np.log(x) for x in p if x > 0))
    return np.array(out)


def _data(seed=0, n=90, m=6, k=3):
    "Dense units (one tied to each label, the rest noise) and labels; every label has both values."
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.4).astype(float)
    y[0], y[1] = 1, 0
    a = rng.normal(size=(n, m))
    a[:, :k] += 2.0 * y
    a[:, 3] += 0.8 * y[:, 0] - 0.6 * y[:, 1]
    return a, y, rng


# ---------------------------------------------------------------------------------------------------------------
# _weighted_r, _stats_of_r, _fixed_stats, _ci
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparse", [False, True])
def test_weighted_r_equals_corrcoef_on_the_repeated_rows(sparse):
    a, y, rng = _data(1, n=40, m=4, k=2)
    a = np.abs(a) * (rng.random(a.shape) < 0.6)
    a[:, 2] = 3.0                                                    # a constant unit: NaN under every weighting
    msk = (rng.random(y.shape) < 0.85).astype(float)
    W = np.stack([np.bincount(rng.integers(0, 40, 40), minlength=40) for _ in range(3)], 1).astype(float)
    A = sp.csr_matrix(a) if sparse else a
    A2 = A.multiply(A).tocsr() if sparse else a * a
    R = _weighted_r(A, A2, y, msk, W)
    assert R.shape == (3, 4, 2)
    for b in range(3):
        for c in range(2):
            rows = np.repeat(np.arange(40), W[:, b].astype(int))
            rows = rows[msk[rows, c] > 0]
            want = pearson(a[rows], y[rows][:, [c]])[:, 0]
            assert np.allclose(R[b, :, c], want, atol=1e-10, equal_nan=True), (b, c)
    assert np.isnan(R[:, 2, :]).all()


def test_weighted_r_tolerances_and_bounds():
    "Rounding is not variance (a large inexact constant), a tiny scale is; r never leaves [-1, 1]."
    rng = np.random.default_rng(3)
    n = 30
    y = (rng.random((n, 2)) < 0.5).astype(float); y[0], y[1] = [1, 1], [0, 0]
    y[:, 1] = 12345.678                                                # a label constant up to rounding
    a = np.c_[np.full(n, 12345.678), 1e-6 * rng.random(n), 3.3 * y[:, 0] + 4.9, -2.1 * y[:, 0] + 0.7]
    W = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(2)], 1).astype(float)
    for A in (sp.csr_matrix(a), a):
        A2 = A.multiply(A).tocsr() if sp.issparse(A) else a * a
        R = _weighted_r(A, A2, y, np.ones_like(y), W)
        assert np.isnan(R[:, 0, :]).all() and np.isnan(R[:, :, 1]).all()
        for b in range(2):
            rows = np.repeat(np.arange(n), W[:, b].astype(int))
            assert np.isclose(R[b, 1, 0], np.corrcoef(a[rows, 1], y[rows, 0])[0, 1])
        assert np.allclose(R[:, 2, 0], 1.0) and np.allclose(R[:, 3, 0], -1.0) and (np.abs(R[:, 2:, 0]) <= 1).all()
    R = _weighted_r(a[:, 1:2], a[:, 1:2] ** 2, 1e-6 * y[:, :1], np.ones((n, 1)), W)   # tiny labels too
    rows = np.repeat(np.arange(n), W[:, 0].astype(int))
    assert np.isclose(R[0, 0, 0], np.corrcoef(a[rows, 1], y[rows, 0])[0, 1])


def test_weighted_r_label_constant_under_a_weighting_is_nan():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
    a = np.array([[1.0], [2.0], [4.0], [3.0]])
    W = np.array([[1, 1], [1, 0], [1, 1], [1, 0]], dtype=float)      # the second keeps rows 0 and 2: label A all 1
    R = _weighted_r(a, a * a, y, np.ones_like(y), W)
    assert np.isnan(R[1, 0, 0]) and np.isclose(R[1, 0, 1], 1.0)        # label B: (0 at a=1, 1 at a=4)
    assert np.isclose(R[0, 0, 0], np.corrcoef(a[:, 0], y[:, 0])[0, 1])


def test_stats_of_r_by_hand():
    r = np.array([[0.5, 0.1, 0.1],          # max |r| 0.5 > 0.2: enters
                  [0.1, -0.6, 0.3],         # enters; best for B is the max r, not max |r|
                  [0.15, 0.05, 0.19],       # below the threshold
                  [np.nan, 0.2, 0.2],       # undefined: never enters
                  [0.3, 0.3, 0.3]])         # enters, ln 3
    s = _stats_of_r(r, LABS, 0.2)
    h = entropy_ref(r[[0, 1, 4]])
    assert s["entering"] == 3
    assert np.isclose(s["mean_entropy"], h.mean())
    # best entering unit per label by r: A unit 0 (0.5), B unit 4 (0.3), C unit 1 (0.3 ties unit 4: first)
    assert np.isclose(s["mean_best_r"], (0.5 + 0.3 + 0.3) / 3)
    assert np.isclose(s["mean_best_entropy"], (h[0] + h[2] + h[1]) / 3)
    assert np.isclose(s["mean_max_r"], (0.5 + 0.3 + 0.3) / 3)        # over all units, NaN ignored
    assert _stats_of_r(np.array([[0.5, np.nan, 0.1], [0.3, np.nan, 0.2]]), LABS, 0.2) is None   # B undefined
    assert _stats_of_r(r, LABS, 0.45)["entering"] == 2                 # units 0 and 1: the threshold is used
    r2 = np.array([[0.9, 0.05, -0.3], [0.15, 0.18, 0.1]])
    s2 = _stats_of_r(r2, LABS, 0.2)                                    # mean_max_r counts units below the threshold
    assert np.isclose(s2["mean_max_r"], (0.9 + 0.18 + 0.1) / 3) and s2["entering"] == 1
    assert np.isclose(s2["mean_best_r"], (0.9 + 0.05 - 0.3) / 3)


def test_fixed_stats_remeasures_the_selected_units():
    r_sel = np.array([[0.6, 0.1, 0.0], [0.1, 0.5, 0.1], [0.05, 0.1, 0.1], [0.2, 0.1, 0.45]])
    from medsae.metrics import Correlations
    mono = monosemanticity(Correlations(r_sel, LABS, 50, np.array([], dtype=int), ()), 0.2)
    assert list(mono.entering) == [0, 1, 3] and list(mono.best_unit) == [0, 1, 3]
    r_new = np.array([[0.3, 0.2, 0.1], [0.2, 0.25, 0.05], [0.1, 0.1, 0.4]])   # rows: entering units 0, 1, 3
    s = _fixed_stats(r_new, mono)
    h = entropy_ref(r_new)
    assert np.isclose(s["mean_entropy"], h.mean())
    assert np.isclose(s["mean_best_r"], (0.3 + 0.25 + 0.4) / 3)
    assert np.isclose(s["mean_best_entropy"], h.mean())
    r_nan = r_new.copy(); r_nan[:, 1] = np.nan                          # label B without variation: dropped
    dropped = _fixed_stats(r_nan, mono)
    assert set(dropped) == {"mean_entropy", "mean_best_r", "mean_best_entropy"} and all(np.isnan(v) for v in dropped.values())
    # a class without an entering unit is left out of the best-unit means
    mono2 = monosemanticity(Correlations(np.array([[0.6, 0.05, 0.0], [0.1, 0.1, -0.3]]), LABS, 50,
                                         np.array([], dtype=int), ()), 0.2)
    assert list(mono2.best_unit) == [0, 1, 0]
    r2 = np.array([[0.5, 0.1, 0.2], [0.3, 0.2, -0.1]])
    s2 = _fixed_stats(r2, mono2)
    assert np.isclose(s2["mean_best_r"], (0.5 + 0.2 + 0.2) / 3)
    assert np.isclose(s2["mean_best_entropy"], np.mean(entropy_ref(r2)[[0, 1, 0]]))
    r3 = r2.copy(); r3[1] = np.nan                                      # a unit undefined in this resample
    s3 = _fixed_stats(r3, mono2)
    assert np.isclose(s3["mean_entropy"], entropy_ref(r2[:1])[0]) and np.isclose(s3["mean_best_r"], (0.5 + 0.2) / 2)


def test_basic_bootstrap_interval_by_hand():
    v = np.arange(1, 102, dtype=float)                                   # percentiles 2.5 -> 3.5, 97.5 -> 98.5
    lo, hi, bias = _ci(v, 40.0)
    assert np.isclose(lo, 80 - 98.5) and np.isclose(hi, 80 - 3.5) and np.isclose(bias, 51 - 40)
    lo, hi, bias = _ci(np.r_[v, np.nan, np.inf], 40.0)                  # non-finite resamples are dropped
    assert np.isclose(lo, 80 - 98.5) and np.isclose(bias, 11)
    assert all(np.isnan(x) for x in _ci(np.array([np.nan]), 1.0))
    assert all(np.isnan(x) for x in _ci(v, np.nan))


# ---------------------------------------------------------------------------------------------------------------
# paired_bootstrap, permutation_null
# ---------------------------------------------------------------------------------------------------------------

def _reference_resample(a, y, mask, mono, idx):
    "The statistics of the units `mono` chose, on the images `idx` (repeats allowed), by corrcoef."
    cols = []
    for c in range(y.shape[1]):
        rows = idx if mask is None else idx[mask[idx, c]]
        cols.append(pearson(a[rows][:, mono.entering], y[rows][:, [c]])[:, 0])
    r = np.column_stack(cols)
    if np.isnan(r).all(0).any(): return dict(mean_entropy=np.nan, mean_best_r=np.nan, mean_best_entropy=np.nan)
    h = entropy_ref(r)
    pos = {u: i for i, u in enumerate(mono.entering)}
    bi = [pos[u] for u in mono.best_unit]
    return dict(mean_entropy=np.nanmean(h), mean_best_r=np.nanmean(r[bi, np.arange(len(bi))]),
                mean_best_entropy=np.nanmean(h[bi]))


@pytest.mark.parametrize("masked", [False, True])
def test_paired_bootstrap_equals_resampling_by_hand(masked):
    a, y, rng = _data(2, n=60)
    s = sp.csr_matrix(np.where(a > 0.5, a, 0))
    mask = (rng.random(y.shape) < 0.9) if masked else None
    if masked: mask[:2] = True
    units = {"dense": a, "sparse": s}
    y_in = np.where(mask, y, np.nan) if masked else y                  # NaN outside the mask never enters
    boot = paired_bootstrap(units, y_in, LABS, mask, n_boot=7, seed=5, threshold=0.2, block=3)
    assert list(boot.columns) == ["resample", "units", "mean_entropy", "mean_best_r", "mean_best_entropy"]
    key = lambda b: b.sort_values(["resample", "units"]).reset_index(drop=True)
    assert key(boot)["resample"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert key(boot)["units"].tolist() == ["dense", "sparse"] * 7
    draw = np.random.default_rng(5)
    for i in range(7):
        idx = np.sort(draw.integers(0, 60, 60))                          # the same images for both sets: paired
        for name, u in (("dense", a), ("sparse", s.toarray())):
            mono = monosemanticity(correlations(u, y, LABS, mask), 0.2)
            want = _reference_resample(u, y, mask, mono, idx)
            got = boot[(boot["resample"] == i) & (boot.units == name)].iloc[0]
            for k, v in want.items(): assert np.isclose(got[k], v, atol=1e-9), (i, name, k)
    again = paired_bootstrap(units, y, LABS, mask, n_boot=7, seed=5, threshold=0.2, block=25)   # blocks change nothing
    pd.testing.assert_frame_equal(key(boot), key(again))


def test_paired_bootstrap_threshold_selects_the_units():
    a, y, _ = _data(3, n=50)
    b1 = paired_bootstrap({"u": a}, y, LABS, n_boot=3, seed=1, threshold=0.2)
    b2 = paired_bootstrap({"u": a}, y, LABS, n_boot=3, seed=1, threshold=0.45)
    mono = monosemanticity(correlations(a, y, LABS), 0.45)
    idx = np.sort(np.random.default_rng(1).integers(0, 50, 50))
    want = _reference_resample(a, y, None, mono, idx)
    assert np.isclose(b2.mean_entropy.iloc[0], want["mean_entropy"]) and not np.isclose(b1.mean_entropy.iloc[0], want["mean_entropy"])


def test_permutation_null_by_hand():
    a, y, _ = _data(4, n=50)
    units = {"u": a, "v": a[:, ::-1].copy()}
    null = permutation_null(units, y, LABS, n_perm=4, seed=9, threshold=0.2)
    assert list(null.columns) == ["permutation", "units", "mean_entropy", "mean_best_r", "mean_best_entropy",
                                  "entering", "mean_max_r", "degenerate"]
    assert null.permutation.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and null.degenerate.tolist() == [False] * 8
    rng = np.random.default_rng(9)
    for p in range(4):
        perm = rng.permutation(50)
        for name, u in units.items():
            want = _stats_of_r(pearson(u, y[perm]), LABS, 0.2)
            got = null[(null.permutation == p) & (null.units == name)].iloc[0]
            for k, v in want.items(): assert np.isclose(got[k], v), (p, name, k)
    mask = np.ones_like(y, dtype=bool); mask[:, 2] = y[:, 2] == 1       # label C: only positives defined
    deg = permutation_null({"u": a}, y, LABS, mask, n_perm=2, seed=0)
    assert deg.degenerate.tolist() == [True, True] and deg[["mean_entropy", "mean_best_r", "mean_best_entropy", "entering",
                                         "mean_max_r"]].isna().all().all()
    m2 = np.ones_like(y, dtype=bool); m2[5:10] = False
    got = permutation_null({"u": a}, y, LABS, m2, n_perm=1, seed=3).iloc[0]
    perm = np.random.default_rng(3).permutation(50)
    want = _stats_of_r(correlations(a, y[perm], LABS, m2[perm]).r, LABS, 0.2)
    assert np.isclose(got.mean_best_r, want["mean_best_r"]) and got.entering == want["entering"]


# ---------------------------------------------------------------------------------------------------------------
# compare_units
# ---------------------------------------------------------------------------------------------------------------

def test_compare_units_point_estimates_and_the_paired_difference():
    a, y, rng = _data(5, n=80, m=6)
    raw = a[:, :4] @ rng.normal(size=(4, 4)) * 0.5 + rng.normal(size=(80, 4))
    sae = sp.csr_matrix(np.where(a > 0.3, a, 0))
    tab, det = compare_units({"raw": raw, "sae": sae}, y, LABS, threshold=0.2, n_boot=0, n_perm=0, detector_top=0.3)
    assert tab.units.tolist() == ["raw", "sae", "sae - raw"]
    t = tab.set_index("units")
    for name, u in (("raw", raw), ("sae", sae.toarray())):
        r = pearson(u, y)
        maxabs = np.nanmax(np.abs(r), 1)
        enter = np.flatnonzero(maxabs > 0.2)
        h = entropy_ref(r[enter])
        best = enter[np.argmax(r[enter], 0)]
        hb = h[np.argmax(r[enter], 0)]
        assert t.loc[name, "entering"] == len(enter) and t.loc[name, "n_units"] == u.shape[1]
        assert np.isclose(t.loc[name, "mean_entropy"], h.mean())
        assert np.isclose(t.loc[name, "mean_best_r"], r[best, range(3)].mean())
        assert np.isclose(t.loc[name, "mean_best_entropy"], hb.mean())
        assert np.isclose(t.loc[name, "max_entropy"], np.log(3)) and t.loc[name, "classes_without_unit"] == ""
        d = detection(u, y, top=0.3)
        assert np.isclose(t.loc[name, "mean_max_f1"], d.f1.max(0).mean())
        assert np.isclose(t.loc[name, "mean_best_unit_f1"], d.f1[best, range(3)].mean())
        assert list(det[name]["monosemanticity"].best_unit) == list(best)
        assert np.allclose(det[name]["correlations"].r, r, equal_nan=True)
    for k in ("mean_best_entropy", "mean_best_r", "mean_entropy", "entering", "mean_max_f1"):
        assert np.isclose(t.loc["sae - raw", k], t.loc["sae", k] - t.loc["raw", k]), k
    assert "mean_best_r_lo" not in tab.columns and det["bootstrap"] is None and det["null"] is None


def test_compare_units_intervals_null_and_p_value():
    a, y, rng = _data(6, n=70, m=5)
    raw = a + rng.normal(size=a.shape)
    units = {"raw": raw, "sae": a}
    tab, det = compare_units(units, y, LABS, threshold=0.2, n_boot=30, n_perm=12, seed=4)
    t = tab.set_index("units")
    boot, null = det["bootstrap"], det["null"]
    pd.testing.assert_frame_equal(boot, paired_bootstrap(units, y, LABS, None, 30, 4, 0.2))
    pd.testing.assert_frame_equal(null, permutation_null(units, y, LABS, None, 12, 5, 0.2))
    for name in units:
        for st in ("mean_best_entropy", "mean_best_r", "mean_entropy"):
            v = boot.loc[boot.units == name, st].to_numpy()
            est = t.loc[name, st]
            assert np.isclose(t.loc[name, f"{st}_lo"], 2 * est - np.percentile(v, 97.5))
            assert np.isclose(t.loc[name, f"{st}_hi"], 2 * est - np.percentile(v, 2.5))
            assert np.isclose(t.loc[name, f"{st}_bias"], v.mean() - est)
            assert t.loc[name, f"{st}_boot_dropped"] == 0
            nv = null.loc[null.units == name, st].to_numpy()
            fin = nv[np.isfinite(nv)]
            assert np.isclose(t.loc[name, f"{st}_null_mean"], fin.mean()) and t.loc[name, f"{st}_null_defined"] == len(fin)
        obs = np.nanmax(pearson(units[name], y), 0).mean()
        nv = null.loc[null.units == name, "mean_max_r"].to_numpy()
        assert np.isclose(t.loc[name, "mean_max_r"], obs)
        assert np.isclose(t.loc[name, "mean_max_r_null_mean"], nv.mean())
        assert np.isclose(t.loc[name, "mean_max_r_null_p"], (1 + (nv >= obs).sum()) / 13)
    for st in ("mean_best_entropy", "mean_best_r", "mean_entropy"):
        d = boot[boot.units == "sae"][st].to_numpy() - boot[boot.units == "raw"][st].to_numpy()
        est = t.loc["sae - raw", st]
        assert np.isclose(est, t.loc["sae", st] - t.loc["raw", st])
        assert np.isclose(t.loc["sae - raw", f"{st}_lo"], 2 * est - np.percentile(d, 97.5))
        assert np.isclose(t.loc["sae - raw", f"{st}_hi"], 2 * est - np.percentile(d, 2.5))
        assert np.isclose(t.loc["sae - raw", f"{st}_bias"], d.mean() - est)
    one, _ = compare_units({"sae": a}, y, LABS, n_boot=0, n_perm=0)
    assert one.units.tolist() == ["sae"]                                 # no difference row for one set


def test_compare_units_held_out_selection_on_distinct_images():
    "Best units chosen on one set of images, measured on another: by hand, with corrcoef, on disjoint data."
    rng = np.random.default_rng(7)
    def draw(n):
        y = (rng.random((n, 3)) < 0.5).astype(float); y[0], y[1] = 1, 0
        a = rng.normal(size=(n, 8))
        a[:, 0] += 1.5 * y[:, 0]; a[:, 1] += 1.4 * y[:, 0]              # two candidates for A
        a[:, 2] += 1.5 * y[:, 1]; a[:, 3] += 1.5 * y[:, 2]
        return a, y
    a_sel, y_sel = draw(60)
    a_ev, y_ev = draw(90)
    mask_ev = rng.random(y_ev.shape) < 0.9; mask_ev[:2] = True
    tab, _ = compare_units({"sae": a_ev}, y_ev, LABS, mask_ev, threshold=0.2, n_boot=0, n_perm=0,
                           select_on=({"sae": a_sel}, y_sel, None))
    r_sel = pearson(a_sel, y_sel)
    enter = np.flatnonzero(np.nanmax(np.abs(r_sel), 1) > 0.2)
    best = enter[np.argmax(r_sel[enter], 0)]                             # chosen on the selection images
    r_ev = np.column_stack([pearson(a_ev[mask_ev[:, c]], y_ev[mask_ev[:, c]][:, [c]])[:, 0] for c in range(3)])
    t = tab.set_index("units")
    assert np.isclose(t.loc["sae", "heldout_mean_best_r"], r_ev[best, range(3)].mean())
    assert np.isclose(t.loc["sae", "heldout_mean_best_entropy"], entropy_ref(r_ev[best]).mean())
    best_here = np.argmax(np.where(np.nanmax(np.abs(r_ev), 1)[:, None] > 0.2, r_ev, -np.inf), 0)
    assert (best != best_here).any()                                     # the choice differs from the in-sample one
    assert t.loc["sae", "heldout_mean_best_r"] < t.loc["sae", "mean_best_r"]
    # one unit above the threshold on the selection images: it is every class's best; none: no held-out number
    a2 = rng.normal(size=a_sel.shape) * 0.01; a2[:, 0] += y_sel[:, 0]
    assert (np.abs(pearson(a2, y_sel))[1:] < 0.5).all() and (np.abs(pearson(a2, y_sel))[0, 1:] < 0.5).all()
    tab2, _ = compare_units({"sae": a_ev}, y_ev, LABS, mask_ev, threshold=0.5, n_boot=0, n_perm=0,
                            select_on=({"sae": a2}, y_sel, None))
    assert np.isclose(tab2.loc[0, "heldout_mean_best_r"], r_ev[0].mean())
    assert np.isclose(tab2.loc[0, "heldout_mean_best_entropy"], entropy_ref(r_ev[:1])[0])
    tab3, _ = compare_units({"sae": a_ev}, y_ev, LABS, mask_ev, threshold=0.5, n_boot=0, n_perm=0,
                            select_on=({"sae": a2 - a2[:, :1] * np.eye(8)[0]}, y_sel, None))
    assert np.isnan(tab3.loc[0, "heldout_mean_best_r"]) and np.isnan(tab3.loc[0, "heldout_mean_best_entropy"])


def test_compare_units_monosemanticity_score_on_a_seeded_sample():
    a, y, rng = _data(8, n=40, m=4)
    emb = rng.normal(size=(40, 5))
    acts = np.maximum(a, 0)
    tab, det = compare_units({"sae": acts}, y, LABS, n_boot=0, n_perm=0, ms_emb=emb, ms_sample=25, seed=3)
    rows = np.sort(np.random.default_rng(3).choice(40, size=25, replace=False))
    ms = monosemanticity_score(acts[rows], emb[rows])
    t = tab.set_index("units")
    assert np.allclose(det["sae_ms"], ms, equal_nan=True) and np.isclose(t.loc["sae", "ms_mean"], np.nanmean(ms))
    assert t.loc["sae", "ms_sample"] == 25 and t.loc["sae", "ms_undefined"] == int(np.isnan(ms).sum())
    acts2 = acts.copy(); acts2[:, 1] = 0                                  # a silent unit: MS undefined
    tab2, det2 = compare_units({"sae": acts2}, y, LABS, n_boot=0, n_perm=0, ms_emb=emb, ms_sample=100, seed=3)
    assert tab2.loc[0, "ms_sample"] == 40 and tab2.loc[0, "ms_undefined"] >= 1 and np.isnan(det2["sae_ms"][1])
    assert np.isclose(tab2.loc[0, "ms_mean"], np.nanmean(monosemanticity_score(acts2, emb)))


# ---------------------------------------------------------------------------------------------------------------
# AUROC, the recovery rule, matching, polysemanticity
# ---------------------------------------------------------------------------------------------------------------

def test_auroc_matrix_equals_sklearn_dense_sparse_and_signed():
    rng = np.random.default_rng(0)
    y = (rng.random((50, 3)) < 0.3).astype(float); y[0], y[1] = 1, 0
    v = np.round(rng.exponential(1, (50, 4)), 1) * (rng.random((50, 4)) < 0.5)   # ties and many zeros
    v[:, 3] = 0; v[[3, 9], 3] = [2.0, 1.0]                              # a column with two nonzeros
    signed = v - 0.5 * (rng.random((50, 4)) < 0.3)                      # negative values: the dense path
    for acts, ref in ((v, v), (sp.csr_matrix(v), v), (sp.csr_matrix(signed), signed), (signed, signed)):
        auc = auroc_matrix(acts, y)
        want = np.array([[roc_auc_score(y[:, c], ref[:, j]) for c in range(3)] for j in range(4)])
        assert np.allclose(auc, want), type(acts)
    ints = sp.csr_matrix(np.round(v * 2).astype(np.int64))            # integer activations with ties: half ranks
    assert np.allclose(auroc_matrix(ints, y), [[roc_auc_score(y[:, c], ints[:, [j]].toarray().ravel()) for c in range(3)]
                                                for j in range(4)])
    with pytest.raises(MetricError) as e: auroc_matrix(v, np.c_[y[:, :2], np.ones(50)])
    assert str(e.value) == "a concept has no positive or no negative image"
    with pytest.raises(MetricError, match="no positive or no negative"): auroc_matrix(v, np.c_[y[:, :2], np.zeros(50)])


def test_recovery_margin_rule_above_the_threshold_with_a_close_second_concept():
    names = ["effusion", "edema", "marker L"]
    auc = np.array([[0.95, 0.90, 0.50],     # unit 0: effusion 0.95, but edema 0.90: margin 0.05 < 0.1
                    [0.92, 0.55, 0.52],     # unit 1: effusion 0.92, margin 0.37: the dedicated one
                    [0.60, 0.93, 0.50],     # unit 2: edema 0.93, margin 0.33
                    [0.50, 0.50, 0.97]])    # unit 3: marker 0.97, margin 0.47
    t = concept_recovery(auc, names, 0.9, 0.1).set_index("concept")
    assert t.loc["effusion", "unit"] == 1 and t.loc["effusion", "recovered"]     # not the highest AUROC, the dedicated
    assert np.isclose(t.loc["effusion", "auroc"], 0.92) and np.isclose(t.loc["effusion", "best_auroc"], 0.95)
    assert np.isclose(t.loc["effusion", "margin"], 0.37) and t.loc["effusion", "next_concept"] == "edema"
    assert np.isclose(t.loc["effusion", "next_auroc"], 0.55)
    assert concept_recovery(auc, names).equals(concept_recovery(auc, names, 0.9, 0.1))     # the rule's defaults
    assert not concept_recovery(auc, names, 0.9, 0.38).set_index("concept").loc["effusion", "recovered"]
    last = concept_recovery(np.array([[0.95, 0.3, 0.6]]), names, 0.9, 0.1).iloc[0]   # the best other is the last
    assert last.next_concept == "marker L" and np.isclose(last.next_auroc, 0.6) and np.isclose(last.margin, 0.35)
    at = concept_recovery(np.array([[0.875, 0.25], [0.9375, 0.875]]), ["a", "b"], 0.875, 0.25).iloc[0]
    assert at.unit == 0 and at.recovered                               # exactly at the AUROC bound: a candidate
    only = concept_recovery(auc[[0, 2, 3]], names, 0.9, 0.1).set_index("concept")   # without the dedicated unit
    assert only.loc["effusion", "unit"] == 0 and not only.loc["effusion", "recovered"]
    assert np.isclose(only.loc["effusion", "margin"], 0.05) and only.loc["effusion", "next_concept"] == "edema"
    assert only.loc["edema", "recovered"] and only.loc["marker L", "recovered"]
    assert concept_recovery(auc[[0, 2, 3]], names, 0.9, 0.04).set_index("concept").loc["effusion", "recovered"]
    edge = concept_recovery(np.array([[0.875, 0.625, 0.5], [0.5, 0.5, 0.5]]), names, 0.875, 0.25)
    assert edge.recovered.tolist()[0]                                   # both bounds inclusive (exact in binary)
    assert not concept_recovery(np.array([[0.875, 0.625, 0.5]]), names, 0.876, 0.25).recovered.iloc[0]
    assert not concept_recovery(np.array([[0.875, 0.625, 0.5]]), names, 0.875, 0.26).recovered.iloc[0]


def test_recovery_below_threshold_takes_the_best_unit_and_is_not_recovered():
    auc = np.array([[0.85, 0.2], [0.88, 0.87], [0.3, 0.95]])
    t = concept_recovery(auc, ["a", "b"], 0.9, 0.1)
    assert t.unit.tolist() == [1, 2] and t.recovered.tolist() == [False, True]
    assert np.isclose(t.margin.iloc[0], 0.01) and np.isclose(t.best_auroc.iloc[0], 0.88)
    one = concept_recovery(np.array([[0.91], [0.95], [0.4]]), ["a"], 0.9, 0.1)  # one concept: margin is the AUROC
    assert one.unit.tolist() == [1] and np.isclose(one.margin.iloc[0], 0.95) and one.recovered.iloc[0]
    assert one.next_concept.iloc[0] == "" and np.isnan(one.next_auroc.iloc[0])


def test_recovery_direction_free_for_raw_dimensions():
    auc = np.array([[0.04, 0.5, 0.5], [0.3, 0.92, 0.6]])               # dimension 0: effusion with the sign flipped
    t = concept_recovery(auc, ["a", "b", "c"], 0.9, 0.1, direction_free=True)
    assert t.unit.tolist()[:2] == [0, 1] and t.recovered.tolist()[:2] == [True, True]
    assert np.isclose(t.auroc.iloc[0], 0.96) and np.isclose(t.margin.iloc[0], 0.46)
    assert np.isclose(t.auroc.iloc[1], 0.92) and np.isclose(t.margin.iloc[1], 0.92 - 0.7)
    signed = concept_recovery(auc, ["a", "b", "c"], 0.9, 0.1)
    assert not signed.recovered.iloc[0] and np.isclose(signed.auroc.iloc[0], 0.3)
    assert t.inverse.tolist() == [True, False, False] and not signed.inverse.any()


def test_recovery_direction_free_per_concept():
    "A two-level factor is read either way; the others keep one direction, also as the margin's other concepts."
    auc = np.array([[0.04, 0.04, 0.5], [0.5, 0.5, 0.93]])
    t = concept_recovery(auc, ["a", "b", "c"], 0.9, 0.1, direction_free=[True, False, False])
    assert t.recovered.tolist() == [True, False, True] and t.inverse.tolist() == [True, False, False]
    assert np.isclose(t.auroc.iloc[0], 0.96) and np.isclose(t.margin.iloc[0], 0.96 - 0.5)     # b read as 0.04, c 0.5
    assert np.isclose(t.margin.iloc[2], 0.93 - 0.5)                                        # a read as 0.5 for unit 1
    b_free = concept_recovery(auc, ["a", "b", "c"], 0.9, 0.1, direction_free=[True, True, False])
    assert not b_free.recovered.iloc[0] and np.isclose(b_free.margin.iloc[0], 0.0)         # b read as 0.96 too


def test_hungarian_matching_equals_brute_force():
    rng = np.random.default_rng(1)
    auc = rng.uniform(0.4, 1.0, (6, 4))
    m = hungarian_matching(auc, list("abcd"))
    best = max(itertools.permutations(range(6), 4), key=lambda p: sum(auc[p[c], c] for c in range(4)))
    assert m.concept.tolist() == list("abcd") and m.matched_unit.tolist() == list(best)
    assert np.allclose(m.matched_auroc, [auc[best[c], c] for c in range(4)])
    few = hungarian_matching(auc[:2], list("abcd"))                      # 2 units for 4 concepts
    assert (few.matched_unit >= 0).sum() == 2 and (few.matched_unit == -1).sum() == 2
    assert few.matched_unit.dtype.kind == "i" and few.matched_auroc.isna().sum() == 2
    pair = max(itertools.permutations(range(4), 2), key=lambda p: auc[0, p[0]] + auc[1, p[1]])
    assert [few.matched_unit.iloc[c] for c in pair] == [0, 1]
    lim = hungarian_matching(auc, list("abcd"), candidates=1)            # only each concept's top unit competes
    tops = set(np.argmax(auc, 0))
    assert set(lim.matched_unit[lim.matched_unit >= 0]) <= tops


def test_polysemanticity_by_hand():
    auc = np.array([[0.9, 0.2, 0.5], [0.5, 0.5, 0.5], [0.75, 0.6, 0.1], [0.74, 0.26, 0.5]])
    p = polysemanticity(auc, 0.75)
    assert polysemanticity(auc) == p                                   # 0.75 by default
    # unit 0: 0.9 and 1-0.2 -> 2 concepts; unit 1: none; unit 2: 0.75 and 0.9 -> 2; unit 3: 0.74 -> 1 - 0.26 = 0.74 no
    assert p == dict(units=4, responsive=2, mean_concepts=2.0, share_multi=1.0, max_concepts=2)
    q = polysemanticity(np.array([[0.8, 0.5], [0.5, 0.5], [0.1, 0.95]]), 0.75)
    assert q == dict(units=3, responsive=2, mean_concepts=1.5, share_multi=0.5, max_concepts=2)
    assert polysemanticity(np.full((2, 2), 0.5)) == dict(units=2, responsive=0, mean_concepts=0.0, share_multi=0.0,
                                                         max_concepts=0)
    assert polysemanticity(np.zeros((0, 2))) == dict(units=0, responsive=0, mean_concepts=0.0, share_multi=0.0,
                                                     max_concepts=0)


# ---------------------------------------------------------------------------------------------------------------
# phantom_concepts
# ---------------------------------------------------------------------------------------------------------------

def test_phantom_concepts_by_hand():
    from medsae.encoders import FINDING_PROMPTS
    n = 40
    rot = np.linspace(-19.5, 19.5, n)                                       # 28 with |rotation| > 6 degrees, 12 within
    gt = pd.DataFrame({"planted.Edema": np.r_[np.ones(12), np.zeros(28)],
                       "planted.No Finding": np.r_[np.zeros(12), np.ones(28)],
                       "planted.Fracture": np.r_[np.ones(9), np.zeros(31)],       # 9 positives < 10: dropped
                       "nuisance.view": ["AP"] * 15 + ["PA"] * 25,
                       "nuisance.marker": ["L"] * 10 + ["R"] * 10 + ["none"] * 20,
                       "nuisance.annotation": ["PORTABLE"] * 10 + [None] * 10 + ["none"] * 20,
                       "nuisance.rotation_deg": rot,
                       "nuisance.inspiration": [0.94] * 10 + [0.95] * 5 + [1.0] * 25,   # 0.95 is not below 0.95
                       "nuisance.exposure": [-0.3] * 10 + [-0.25] * 5 + [0.25] * 10 + [0.3] * 15,   # bounds excluded
                       "nuisance.contrast": np.arange(n, dtype=float)})
    c = phantom_concepts(gt, min_pos=10)
    assert c.names == ["Edema", "No Finding", "view AP", "patient rotation", "low lung volumes", "underpenetrated film",
                       "overexposed film", "marker L", "marker R", "text annotation", "high contrast"]
    assert c.kinds == ["finding"] * 2 + ["technical"] * 7 + ["nuisance"] * 2 and c.dropped == ["Fracture"]
    assert c.y.shape == (40, 11) and set(np.unique(c.y)) == {0.0, 1.0}
    col = lambda name: c.y[:, c.names.index(name)].tolist()
    assert col("Edema") == [1.0] * 12 + [0.0] * 28 and col("view AP") == [1.0] * 15 + [0.0] * 25
    assert col("patient rotation") == [1.0] * 14 + [0.0] * 12 + [1.0] * 14
    assert col("low lung volumes") == [1.0] * 10 + [0.0] * 30
    assert col("underpenetrated film") == [1.0] * 10 + [0.0] * 30 and col("overexposed film") == [0.0] * 25 + [1.0] * 15
    assert col("marker L") == [1.0] * 10 + [0.0] * 30 and col("marker R") == [0.0] * 10 + [1.0] * 10 + [0.0] * 20
    assert col("text annotation") == [1.0] * 10 + [0.0] * 30                  # None and "none": no annotation
    assert col("high contrast") == [0.0] * 30 + [1.0] * 10                    # other nuisance: the top quarter
    assert c.phrases["Edema"] == ["edema"] + FINDING_PROMPTS.get("Edema", [])
    assert c.phrases["No Finding"][0] == "no finding" and "normal chest" in c.phrases["No Finding"]
    assert c.phrases["view AP"] == ["AP view", "anteroposterior projection", "portable AP film", "AP portable view"]
    assert phantom_concepts(gt).names == c.names                       # min_pos 10 by default
    assert phantom_concepts(gt, 11).dropped == ["Fracture", "low lung volumes", "underpenetrated film", "marker L",
                                                "marker R", "text annotation", "high contrast"]
    assert c.phrases["No Finding"] == ["no finding", "no acute findings", "normal chest", "clear lungs"]
    odd = phantom_concepts(gt.assign(**{"planted.Pleural Thickening": np.r_[np.ones(12), np.zeros(28)]}))
    assert odd.phrases["Pleural Thickening"] == ["pleural thickening"]  # no prompts known: its own name only
    at_q = phantom_concepts(gt.assign(**{"nuisance.contrast": np.r_[np.zeros(29), np.ones(11)]}), 1)
    assert "high contrast" in at_q.dropped                              # the 75th percentile is 1: none above it
    assert c.phrases["patient rotation"] == ["rotated patient", "patient rotation", "rotation"]
    assert c.levels == {"view AP": "view PA"}                            # every film here is AP or PA
    assert set(c.phrases) == set(c.names) | {"view PA"} == set(c.patterns)   # the other level has its own phrases
    assert re.search(c.patterns["low lung volumes"], "Low lung volumes.", re.I)
    few_neg = gt.assign(**{"nuisance.view": ["AP"] * 31 + ["PA"] * 9})      # 9 negatives: dropped too
    assert "view AP" in phantom_concepts(few_neg, 10).dropped and "view AP" not in phantom_concepts(few_neg, 9).dropped
    with pytest.raises(MetricError) as e: phantom_concepts(gt.drop(columns=["nuisance.inspiration"]))
    assert str(e.value) == "ground-truth table lacks ['nuisance.inspiration']: is it a PhantomCXR ground_truth.csv?"


def test_compare_units_passes_the_mask_threshold_and_detector_rule_everywhere():
    "A mask, a threshold and a detector rule other than the defaults reach every number of the table."
    rng = np.random.default_rng(11)
    n = 90
    y = (rng.random((n, 3)) < 0.4).astype(float); y[0], y[1] = 1, 0
    mask = rng.random((n, 3)) < 0.8; mask[:2] = True
    sae = np.abs(rng.normal(size=(n, 5))) * (rng.random((n, 5)) < 0.6); sae[:, :3] += 1.5 * y
    noise = rng.normal(size=(n, 4)); noise[:, 0] += 0.9 * y[:, 0]       # a weak signal: the null is often as high
    emb = rng.normal(size=(n, 6))
    units = {"raw": noise, "sae": sae}
    sel = ({"raw": noise[::-1].copy(), "sae": sae[::-1].copy()}, y[::-1].copy(), mask[::-1].copy())
    tab, det = compare_units(units, y, LABS, mask, threshold=0.3, n_boot=6, n_perm=9, seed=2, detector_top=0.5,
                             ms_emb=emb, ms_sample=50, select_on=sel)
    t = tab.set_index("units")
    pd.testing.assert_frame_equal(det["bootstrap"], paired_bootstrap(units, y, LABS, mask, 6, 2, 0.3))
    pd.testing.assert_frame_equal(det["null"], permutation_null(units, y, LABS, mask, 9, 3, 0.3))
    for name, u in units.items():
        d = detection(u, y, mask, top=0.5)
        assert np.allclose(det[name]["detection"].f1, d.f1) and np.isclose(t.loc[name, "mean_max_f1"], d.f1.max(0).mean())
        m = monosemanticity(correlations(u, y, LABS, mask), 0.3)
        assert t.loc[name, "entering"] == len(m.entering)
        ms_sel = monosemanticity(correlations(sel[0][name], sel[1], LABS, sel[2]), 0.3)   # chosen under its mask
        r_here = correlations(u, y, LABS, mask).r
        assert np.isclose(t.loc[name, "heldout_mean_best_r"], r_here[ms_sel.best_unit, range(3)].mean())
    assert np.isfinite(t.loc["raw", "heldout_mean_best_r"])
    pure = rng.normal(size=(n, 4))                                      # no signal: the null is often as high
    tn, dn = compare_units({"noise": pure}, y, LABS, mask, threshold=0.3, n_boot=0, n_perm=9, seed=2)
    nv = dn["null"]["mean_max_r"].to_numpy()
    assert (nv >= tn.loc[0, "mean_max_r"]).sum() >= 1
    assert np.isclose(tn.loc[0, "mean_max_r_null_p"], (1 + (nv >= tn.loc[0, "mean_max_r"]).sum()) / 10)
    for k in ("ms_mean", "heldout_mean_best_r", "heldout_mean_best_entropy", "mean_max_f1"):
        assert np.isclose(t.loc["sae - raw", k], t.loc["sae", k] - t.loc["raw", k]), k


def test_compare_units_when_no_unit_enters():
    a, y, _ = _data(12, n=60)
    tab, _ = compare_units({"u": a}, y, LABS, threshold=0.99, n_boot=0, n_perm=0)
    assert tab.loc[0, "entering"] == 0 and tab.loc[0, "classes_without_unit"] == "A, B, C"
    assert tab.loc[0, "mean_best_unit_f1"] == 0.0 and np.isnan(tab.loc[0, "mean_best_entropy"])


def _decoy_under_mask(rng, n=80):
    "Labels A, a mask hiding images 40: and two units: unit 0 follows A everywhere, unit 1 strongly but only where masked."
    y = (rng.random((n, 1)) < 0.5).astype(float); y[0], y[1] = 1, 0
    mask = np.ones((n, 1), bool); mask[40:] = False
    a = rng.normal(size=(n, 2)); a[:, 0] += y[:, 0]; a[40:, 1] += 10 * y[40:, 0]
    return y, mask, a


def test_bootstrap_selects_units_under_the_mask():
    "Unit 1 follows label A only on images where A is masked out: on the defined images unit 0 is A's best."
    rng = np.random.default_rng(5)
    n = 80
    y, mask, a = _decoy_under_mask(rng, n)
    mono = monosemanticity(correlations(a, y, ["A"], mask), 0.2)
    assert list(mono.best_unit) == [0] and monosemanticity(correlations(a, y, ["A"]), 0.2).best_unit[0] == 1
    boot = paired_bootstrap({"u": a}, y, ["A"], mask, n_boot=3, seed=0)
    idx = np.sort(np.random.default_rng(0).integers(0, n, n))
    want = _reference_resample(a, y, mask, mono, idx)
    assert np.isclose(boot.mean_best_r.iloc[0], want["mean_best_r"])


def test_defaults_are_the_papers_1000_resamples_200_permutations_threshold_and_top_30():
    "The defaults, once, on a tiny set (the statistics' defaults are what the paper's table means)."
    a, y, rng = _data(13, n=40, m=4)
    units = {"raw": a + rng.normal(size=a.shape), "sae": a}
    tab, det = compare_units(units, y, LABS)
    assert len(det["bootstrap"]) == 2000 and len(det["null"]) == 400
    pd.testing.assert_frame_equal(det["bootstrap"], paired_bootstrap(units, y, LABS))
    first = lambda b: b[b["resample"] < 4].sort_values(["resample", "units"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(first(paired_bootstrap(units, y, LABS)), first(paired_bootstrap(units, y, LABS, None, 4, 0, 0.2)))
    pd.testing.assert_frame_equal(det["null"], permutation_null(units, y, LABS, None, 200, 1, 0.2))
    pd.testing.assert_frame_equal(permutation_null(units, y, LABS).iloc[:6], permutation_null(units, y, LABS, None, 3, 0, 0.2))
    t = tab.set_index("units")
    for name, u in units.items():
        assert t.loc[name, "entering"] == len(monosemanticity(correlations(u, y, LABS), 0.2).entering)
        assert np.isclose(t.loc[name, "mean_max_f1"], detection(u, y, top=0.3).f1.max(0).mean())


# ---------------------------------------------------------------------------------------------------------------
# phantom_concepts: patterns, phrases and types (mutation survivors of issue 19)
# ---------------------------------------------------------------------------------------------------------------

def _phantom_gt(n=40):
    "A small PhantomCXR ground-truth table whose planted findings are booleans, as pandas reads True/False."
    return pd.DataFrame({"planted.Edema": np.r_[np.ones(12), np.zeros(n - 12)].astype(bool),
                         "planted.No Finding": np.r_[np.zeros(12), np.ones(n - 12)].astype(bool),
                         "planted.Pleural Thickening": np.r_[np.ones(15), np.zeros(n - 15)].astype(bool),
                         "nuisance.view": ["AP"] * 15 + ["PA"] * (n - 15),
                         "nuisance.marker": ["L"] * 10 + ["R"] * 10 + ["none"] * (n - 20),
                         "nuisance.annotation": ["PORTABLE"] * 10 + [None] * 10 + ["none"] * (n - 20),
                         "nuisance.rotation_deg": np.linspace(-19.5, 19.5, n),
                         "nuisance.inspiration": [0.94] * 10 + [1.0] * (n - 10),
                         "nuisance.exposure": [-0.3] * 10 + [0.0] * (n - 25) + [0.3] * 15,
                         "nuisance.contrast": np.arange(n, dtype=float)})


def test_phantom_concepts_are_floats_even_from_boolean_columns():
    "y is 0/1 floats whatever the table's types: arithmetic such as 1 - y (the negatives) must work."
    c = phantom_concepts(_phantom_gt())
    assert c.y.dtype == np.float64
    assert (1 - c.y)[:, c.names.index("Edema")].tolist() == [0.0] * 12 + [1.0] * 28


def test_phantom_concepts_patterns_are_the_report_keywords():
    "A finding's pattern holds its report synonyms; No Finding its normality phrases; an unknown finding its name."
    c = phantom_concepts(_phantom_gt())
    assert re.search(c.patterns["Edema"], "mild vascular congestion", re.I)          # a synonym in reports.KEYWORDS
    assert re.search(c.patterns["Edema"], "Kerley B lines", re.I)
    nf = c.patterns["No Finding"]
    assert re.search(nf, "No acute cardiopulmonary process.", re.I) and re.search(nf, "Lungs are clear.", re.I)
    assert not re.search(nf, "pleural thickening", re.I)
    pt = c.patterns["Pleural Thickening"]                                            # not in KEYWORDS: its own name
    assert re.search(pt, "apical pleural thickening", re.I) and not re.search(pt, "no acute process", re.I)
    assert not re.search(pt, "normal chest", re.I) and not re.search(pt, "pleural", re.I)


def test_phantom_concepts_nuisance_phrases_and_patterns():
    "The annotation and the continuous nuisance factors carry the phrases and patterns their tables state."
    c = phantom_concepts(_phantom_gt())
    assert c.phrases["text annotation"] == ["text annotation", "burned-in text", "portable label", "supine label"]
    assert re.search(c.patterns["text annotation"], "burned-in text label", re.I)
    assert c.phrases["high contrast"] == ["high contrast film", "contrast"]
    assert re.search(c.patterns["high contrast"], "high contrast film", re.I)
    assert not re.search(c.patterns["high contrast"], "burned-in text", re.I)


def test_phantom_concepts_read_numbers_stored_as_text():
    "A continuous nuisance column read as text (e.g. dtype=str) gives the same top quarter as the numbers."
    gt = _phantom_gt()
    c = phantom_concepts(gt)
    t = phantom_concepts(gt.assign(**{"nuisance.contrast": gt["nuisance.contrast"].map(lambda v: f"{v:.1f}").astype(object)}))
    j = c.names.index("high contrast")
    assert t.names == c.names and (t.y == c.y).all()
    assert c.y[:, j].tolist() == [0.0] * 30 + [1.0] * 10                 # contrast 0..39: above the 75th percentile 29.25


# ---------------------------------------------------------------------------------------------------------------
# compare_units: defaults, the threshold of the bootstrap, held-out selection under a mask, ties of the null
# ---------------------------------------------------------------------------------------------------------------

def test_compare_units_monosemanticity_score_sample_is_2000_by_default():
    "With more than 2000 images the score is computed on 2000 of them, drawn without replacement by the seed."
    rng = np.random.default_rng(21)
    n = 2010
    y = (rng.random((n, 1)) < 0.5).astype(float)
    a = np.abs(rng.normal(size=(n, 3))); a[:, 0] += y[:, 0]
    emb = rng.normal(size=(n, 4))
    tab, det = compare_units({"u": a}, y, ["A"], n_boot=0, n_perm=0, ms_emb=emb)
    assert tab.loc[0, "ms_sample"] == 2000
    idx = np.sort(np.random.default_rng(0).choice(n, 2000, replace=False))
    assert len(np.unique(idx)) == 2000
    assert np.allclose(det["u_ms"], monosemanticity_score(a[idx], emb[idx]), equal_nan=True)


def test_compare_units_bootstrap_selects_with_the_given_threshold():
    "The bootstrap re-measures the units chosen at the table's threshold (0.45 here), not at the default 0.2."
    a, y, _ = _data(3, n=50)
    _, det = compare_units({"u": a}, y, LABS, threshold=0.45, n_boot=3, n_perm=0, seed=1)
    idx = np.sort(np.random.default_rng(1).integers(0, 50, 50))
    want = _reference_resample(a, y, None, monosemanticity(correlations(a, y, LABS), 0.45), idx)
    other = _reference_resample(a, y, None, monosemanticity(correlations(a, y, LABS), 0.2), idx)
    assert not np.isclose(want["mean_entropy"], other["mean_entropy"])            # the threshold matters here
    assert np.isclose(det["bootstrap"].mean_entropy.iloc[0], want["mean_entropy"])


def test_compare_units_held_out_choice_respects_the_selection_mask():
    "On the selection split unit 1 follows A only where A is masked out: under the mask unit 0 is chosen."
    rng = np.random.default_rng(5)
    n = 80
    sy, sm, sa = _decoy_under_mask(rng, n)
    y = (rng.random((n, 1)) < 0.5).astype(float)
    a = rng.normal(size=(n, 2)); a[:, 0] += 1.5 * y[:, 0]; a[:, 1] += 0.5 * y[:, 0]
    r = pearson(a, y)[:, 0]
    tab, _ = compare_units({"u": a}, y, ["A"], n_boot=0, n_perm=0, select_on=({"u": sa}, sy, sm))
    assert not np.isclose(r[0], r[1]) and np.isclose(tab.loc[0, "heldout_mean_best_r"], r[0])
    unmasked, _ = compare_units({"u": a}, y, ["A"], n_boot=0, n_perm=0, select_on=({"u": sa}, sy, None))
    assert np.isclose(unmasked.loc[0, "heldout_mean_best_r"], r[1])               # without the mask: unit 1


def test_compare_units_null_p_value_counts_ties_as_at_least_as_high():
    "Units: every 3-of-6 indicator. Any shuffle of a 3-positive label is one of them (r = 1): p = (1 + n) / (1 + n)."
    units = np.array([[1.0 if i in s else 0.0 for s in itertools.combinations(range(6), 3)] for i in range(6)])
    y = np.array([[1.0], [1.0], [1.0], [0.0], [0.0], [0.0]])
    tab, det = compare_units({"u": units}, y, ["A"], n_boot=0, n_perm=5, seed=3)
    assert tab.loc[0, "mean_max_r"] == 1.0 and (det["null"]["mean_max_r"] == 1.0).all()
    assert tab.loc[0, "mean_max_r_null_p"] == 1.0


def test_compare_units_table_layout():
    "A row: the set, its point estimates, the classes without a unit, then intervals and null columns."
    a, y, _ = _data(6, n=60)
    tab, _ = compare_units({"u": a}, y, LABS, n_boot=3, n_perm=2)
    summary = [k for k in monosemanticity(correlations(a, y, LABS), 0.2).summary() if k != "classes_without_unit"]
    head = ["units", *summary, "mean_max_f1", "mean_best_unit_f1", "classes_without_unit"]
    assert list(tab.columns[:len(head)]) == head
    assert list(tab.columns[len(head):len(head) + 3]) == ["mean_best_entropy_lo", "mean_best_entropy_hi", "mean_best_entropy_bias"]


# ---------------------------------------------------------------------------------------------------------------
# paired_bootstrap: input types, offsets, the mask of the selection, errors and the progress bar
# ---------------------------------------------------------------------------------------------------------------

def _stats(b):
    return b[["mean_entropy", "mean_best_r", "mean_best_entropy"]].to_numpy()


def test_paired_bootstrap_is_shift_invariant_per_unit():
    "r does not change when each unit is shifted by its own large constant (1e5 here): nor may the bootstrap."
    a, y, _ = _data(2, n=60)
    off = np.array([1e5, -3e5, 2e5, 5e4, -1e5, 4e5])
    b0 = paired_bootstrap({"u": a}, y, LABS, n_boot=4, seed=1)
    b1 = paired_bootstrap({"u": a + off}, y, LABS, n_boot=4, seed=1)
    assert np.isfinite(_stats(b0)).all() and np.allclose(_stats(b1), _stats(b0), rtol=0, atol=1e-9)


@pytest.mark.parametrize("sparse", [False, True])
def test_paired_bootstrap_float32_input_is_computed_in_float64(sparse):
    "float32 activations give exactly the numbers of their float64 copy (the sums are taken in float64)."
    a, y, _ = _data(2, n=60)
    a32 = np.where(a > 0.5, a, 0).astype(np.float32) if sparse else a.astype(np.float32)
    u32 = sp.csr_matrix(a32) if sparse else a32
    u64 = sp.csr_matrix(a32.astype(np.float64)) if sparse else a32.astype(np.float64)
    b32 = paired_bootstrap({"u": u32}, y, LABS, n_boot=4, seed=1)
    b64 = paired_bootstrap({"u": u64}, y, LABS, n_boot=4, seed=1)
    assert np.allclose(_stats(b32), _stats(b64), rtol=0, atol=1e-12, equal_nan=True)


def test_paired_bootstrap_chooses_units_on_the_defined_cells_only():
    "Unit 0 is A's best on the defined images; its noise where A is masked out must not count against it."
    rng = np.random.default_rng(9)
    n = 80
    y = (rng.random((n, 1)) < 0.5).astype(float); y[0], y[1] = 1, 0
    mask = np.ones((n, 1), bool); mask[40:] = False
    a = rng.normal(size=(n, 2)); a[:, 0] += 2.0 * y[:, 0]; a[:, 1] += 1.0 * y[:, 0]
    a[40:, 0] = 1.0 + 6 * rng.normal(size=40)                          # noise where A is undefined
    mono = monosemanticity(correlations(a, y, ["A"], mask), 0.2)
    zero_filled = monosemanticity(correlations(a, np.where(mask, y, 0.0), ["A"]), 0.2)
    assert list(mono.best_unit) == [0] and list(zero_filled.best_unit) == [1]
    boot = paired_bootstrap({"u": a}, np.where(mask, y, np.nan), ["A"], mask, n_boot=3, seed=0)
    idx = np.sort(np.random.default_rng(0).integers(0, n, n))
    want = _reference_resample(a, y, mask, mono, idx)
    assert np.isclose(boot.mean_best_r.iloc[0], want["mean_best_r"])


def test_paired_bootstrap_names_the_label_of_a_non_finite_cell():
    a, y, _ = _data(2, n=30)
    y = y.copy(); y[5, 1] = np.nan
    with pytest.raises(MetricError, match=r"^label 'B' is not finite at row 5"):
        paired_bootstrap({"u": a}, y, LABS, n_boot=2)


def test_paired_bootstrap_with_a_progress_bar_gives_the_same_frame():
    a, y, _ = _data(2, n=40)
    quiet = paired_bootstrap({"u": a}, y, LABS, n_boot=5, seed=4, block=2)
    shown = paired_bootstrap({"u": a}, y, LABS, n_boot=5, seed=4, block=2, progress=True)
    pd.testing.assert_frame_equal(quiet, shown)


# ---------------------------------------------------------------------------------------------------------------
# _weighted_r's lower bound; hungarian_matching's default candidates
# ---------------------------------------------------------------------------------------------------------------

def test_weighted_r_of_anti_correlated_units_never_below_minus_one():
    "Units c y + d with c < 0 have r = -1 exactly in theory; rounding may give -1 - 4e-16, which is clipped."
    rng = np.random.default_rng(0)
    n = 31
    y = (rng.random((n, 1)) < 0.5).astype(float); y[0], y[1] = 1, 0
    c = -np.abs(rng.normal(size=400)) * 10 ** rng.uniform(-3, 3, 400)
    d = rng.normal(size=400) * 10 ** rng.uniform(-3, 3, 400)
    a = y * c + d
    a = a - a.mean(0)
    W = np.c_[np.ones(n), np.bincount(rng.integers(0, n, n), minlength=n)].astype(float)
    R = _weighted_r(a, a * a, y, np.ones_like(y), W)
    assert np.allclose(R, -1.0, rtol=0, atol=1e-12) and (R >= -1.0).all()
    # the bound is needed: the unclipped formula on all images goes below -1 for some of these units
    s_a, s_aa, s_ay, s_y = a.sum(0), (a * a).sum(0), (a * y).sum(0), y.sum()
    raw = (n * s_ay - s_a * s_y) / np.sqrt((n * s_aa - s_a ** 2) * (n * s_y - s_y ** 2))
    assert (raw < -1.0).any()


def test_hungarian_matching_default_looks_at_each_concepts_top_50_units():
    "51 concepts share the same 50 best units: with the default 50 candidates one concept stays unmatched (-1)."
    auc = np.full((60, 51), 0.5)
    auc[:50] = 0.9 - 0.001 * np.arange(50)[:, None]                     # units 0..49: every concept's top 50
    auc[50:] = 0.6 - 0.001 * np.arange(10)[:, None]
    names = [f"c{i}" for i in range(51)]
    out = hungarian_matching(auc, names)
    assert (out.matched_unit == -1).sum() == 1 and set(out.matched_unit[out.matched_unit >= 0]) == set(range(50))
    wider = hungarian_matching(auc, names, candidates=51)
    assert (wider.matched_unit >= 0).all() and set(wider.matched_unit) == set(range(51))
