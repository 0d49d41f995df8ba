"""Metrics: properties (hypothesis), agreement with numpy/scipy/scikit-learn, and bad input."""
import re
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score

from medsae.config import ConfigError, load_config, resolve_labels
from medsae.evaluation import auroc_matrix, compare_units, paired_bootstrap, phantom_concepts
from medsae.metrics import MetricError, correlations, detection, entropy, monosemanticity, monosemanticity_score

LABS = ("A", "B", "C")

def _data(seed, n=120, m=12, k=3, density=0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.4).astype(float)
    y[0], y[1] = 1, 0                                      # every label has both values
    a = sp.random(n, m, density=density, random_state=seed, format="csr") * 3
    return a, y, rng

@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 100))
def test_positive_scaling_leaves_r_unchanged(seed, c):
    a, y, _ = _data(seed)
    r1 = correlations(a, y, LABS).r
    r2 = correlations(a * c, y, LABS).r
    assert np.allclose(r1, r2, atol=1e-9, equal_nan=True)

@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.permutations([0, 1, 2]))
def test_permuting_labels_permutes_columns(seed, perm):
    a, y, _ = _data(seed)
    r = correlations(a, y, LABS).r
    rp = correlations(a, y[:, perm], [LABS[p] for p in perm]).r
    assert np.allclose(rp, r[:, perm], equal_nan=True)
    assert np.allclose(entropy(rp), entropy(r), equal_nan=True)          # entropy does not depend on label order

@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 200), st.booleans())
def test_streaming_equals_scipy(seed, chunk, dense):
    a, y, rng = _data(seed)
    a = a.toarray() + 5.0 if dense else a                  # a large offset: the dense path must not cancel
    r = correlations(a, y, LABS, chunk=chunk).r
    ad = a.toarray() if sp.issparse(a) else a
    for j in range(ad.shape[1]):
        for c in range(3):
            if ad[:, j].std() == 0: assert np.isnan(r[j, c])
            else: assert r[j, c] == pytest.approx(pearsonr(ad[:, j], y[:, c]).statistic, abs=1e-9)

@settings(max_examples=20, deadline=None)
@given(arrays(np.float64, (40, 3), elements=st.floats(0, 10)), st.integers(0, 1000))
def test_auroc_equals_sklearn(vals, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((40, 2)) < 0.5).astype(float); y[0], y[1] = 1, 0
    vals = np.where(rng.random(vals.shape) < 0.5, 0, np.round(vals, 1))   # ties and zeros
    for a in (vals, sp.csr_matrix(vals)):
        auc = auroc_matrix(a, y)
        for j in range(3):
            for c in range(2): assert auc[j, c] == pytest.approx(roc_auc_score(y[:, c], vals[:, j]))

def test_masked_labels_never_enter_as_numbers():
    a, y, rng = _data(1)
    mask = rng.random(y.shape) > 0.3
    y_bad = np.where(mask, y, -1.0)                        # uncertain labels left as -1 where masked
    assert np.allclose(correlations(a, y_bad, LABS, mask=mask).r, correlations(a, y, LABS, mask=mask).r, equal_nan=True)
    with pytest.raises(MetricError, match="not finite"):
        correlations(a, np.where(mask, y, np.nan), LABS)   # a blank label without a mask is an error, not a NaN

def test_bad_input_is_named():
    a, y, _ = _data(2)
    with pytest.raises(MetricError, match="120 rows .* labels have 119"): correlations(a, y[:-1], LABS)
    with pytest.raises(MetricError, match="label names"): correlations(a, y, ("A", "B"))
    with pytest.raises(ValueError, match="unknown label"): resolve_labels(["Cardiomegaly", "Heart Attack"])
    with pytest.raises(ConfigError, match="metrics.labels"): load_config(None, ["metrics.labels=[Nope]"])
    with pytest.raises(MetricError, match="rows but embeddings"): monosemanticity_score(a, np.ones((3, 4)))

def test_constant_columns_are_reported_not_propagated():
    a, y, _ = _data(3)
    a = a.tolil(); a[:, 2] = 0; a[:, 5] = 7.0; a = a.tocsr()
    c = correlations(a, y, LABS)
    assert set(c.undefined_units) == {2, 5} and c.undefined_labels == ()
    m = monosemanticity(c, 0.0)
    assert m.n_undefined == 2 and 2 not in m.entering and 5 not in m.entering
    assert np.isfinite(m.unit_entropy).all() and np.isfinite(m.mean_best_entropy)
    y2 = y.copy(); y2[:, 1] = 1.0
    c2 = correlations(a, y2, LABS)
    assert c2.undefined_labels == ("B",)
    with pytest.raises(MetricError, match="'B'"): monosemanticity(c2)

def test_threshold_and_hand_computed_entropy():
    y = np.tile(np.array([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=float).T, (25, 1))   # two uncorrelated labels
    units = np.column_stack([y[:, 0], y[:, 0] + y[:, 1], 0.1 * y[:, 0] + np.tile([0, 0, 0, 0, 1, 1, 1, 1], 13)[:100]])
    c = correlations(units, y, ("A", "B"))
    m = monosemanticity(c, 0.5)
    assert list(m.entering) == [0, 1]                      # unit 2's max |r| is below 0.5
    assert np.allclose(m.unit_entropy, [0, np.log(2)])

def test_detector_counts_by_hand():
    acts = np.array([[0, 0.0], [1, 0], [2, 0], [3, 0], [4, 0], [5, 0], [6, 0], [7, 0], [8, 0], [9, 1.0]])
    y = np.array([[0], [0], [0], [0], [0], [0], [0], [1], [1], [1]], dtype=float)
    d = detection(acts, y, top=0.3)                        # 9 positive activations: k = int(0.7 * 9) = 6 -> fires > 6
    assert d.fires[0] == 3 and d.precision[0, 0] == 1.0 and d.recall[0, 0] == 1.0 and d.f1[0, 0] == 1.0
    assert d.fires[1] == 0 and d.f1[1, 0] == 0             # one positive activation: k = 1, fires > 1.0: never

def test_bootstrap_reproducible_and_paired():
    a, y, _ = _data(4, n=200, m=30, density=0.5)
    raw = a.toarray() @ np.random.default_rng(0).normal(size=(30, 5))
    b1 = paired_bootstrap({"raw": raw, "sae": a}, y, LABS, n_boot=12, seed=7, threshold=0.05)
    b2 = paired_bootstrap({"raw": raw, "sae": a}, y, LABS, n_boot=12, seed=7, threshold=0.05)
    b3 = paired_bootstrap({"raw": raw, "sae": a}, y, LABS, n_boot=12, seed=8, threshold=0.05)
    assert b1.equals(b2) and not b1.equals(b3)
    tab, _ = compare_units({"raw": raw, "sae": a}, y, LABS, threshold=0.05, n_boot=50, n_perm=10)
    assert list(tab.units) == ["raw", "sae", "sae - raw"]
    assert tab.loc[2, "mean_best_r"] == pytest.approx(tab.loc[1, "mean_best_r"] - tab.loc[0, "mean_best_r"])

def test_phantom_concepts_rules():
    import pandas as pd
    rng = np.random.default_rng(0)
    n = 200
    gt = pd.DataFrame({"planted.Edema": rng.random(n) < 0.3, "planted.Fracture": np.r_[np.ones(3), np.zeros(n - 3)],
                       "nuisance.view": rng.choice(["AP", "PA"], n), "nuisance.marker": rng.choice(["none", "L", "R"], n),
                       "nuisance.annotation": rng.choice(["none", "PORTABLE"], n), "nuisance.exposure": rng.normal(size=n),
                       "nuisance.rotation_deg": rng.normal(0, 6, size=n), "nuisance.inspiration": rng.uniform(0.9, 1.1, n),
                       "nuisance.contrast": rng.uniform(size=n)})
    c = phantom_concepts(gt, min_pos=10)
    assert "Fracture" in c.dropped and "Edema" in c.names and "view AP" in c.names
    # technical factors: the fixed rules the reports state (|rotation| > 6 degrees, inspiration < 0.95, ...)
    rot = np.abs(gt["nuisance.rotation_deg"].to_numpy())
    assert (c.y[:, c.names.index("patient rotation")] == (rot > 6)).all() and c.kinds[c.names.index("patient rotation")] == "technical"
    assert (c.y[:, c.names.index("low lung volumes")] == (gt["nuisance.inspiration"] < 0.95)).all()
    assert (c.y[:, c.names.index("underpenetrated film")] == (gt["nuisance.exposure"] < -0.25)).all()
    assert (c.y[:, c.names.index("marker R")] == (gt["nuisance.marker"] == "R")).all()
    # other nuisance factors: the top quartile
    j = c.names.index("high contrast")
    assert c.y[:, j].sum() == 50 and (c.y[:, j] == (gt["nuisance.contrast"] > np.quantile(gt["nuisance.contrast"], 0.75))).all()
    assert c.patterns["Edema"] and re.search(c.patterns["patient rotation"], "rotated patient")
    with pytest.raises(MetricError, match="ground-truth table lacks"): phantom_concepts(gt.drop(columns=["nuisance.view"]))
    # the view is a two-level factor (every film AP or PA); the marker may be absent, so "marker L" is not
    assert c.levels == {"view AP": "view PA"} and re.search(c.patterns["view PA"], "PA and lateral views")
    assert "view PA" in c.phrases and "view PA" not in c.names
    three = gt.assign(**{"nuisance.view": np.where(np.arange(n) < 20, "LL", gt["nuisance.view"])})   # a third value
    assert phantom_concepts(three, min_pos=10).levels == {}

def test_phantom_concepts_parts_from_the_ground_truth_columns():
    "Sides of a sided finding and kinds of device become parts (>= min_pos positives each, two parts at least)."
    import json
    import pandas as pd
    rng = np.random.default_rng(1)
    n = 300
    eff = rng.random(n) < 0.4
    side = np.where(eff, rng.choice(["left", "right"], n), None)
    dev = rng.random(n) < 0.5
    kinds = [json.dumps(sorted(rng.choice(["ecg", "ett", "pacemaker"], 1 + int(rng.integers(2)), replace=False).tolist()))
             if d else None for d in dev]
    fr = np.r_[np.ones(40), np.zeros(n - 40)].astype(bool)
    gt = pd.DataFrame({"planted.Pleural Effusion": eff, "Pleural Effusion.side": side, "planted.Support Devices": dev,
                       "Support Devices.devices": kinds, "planted.Fracture": fr,
                       "Fracture.side": np.where(fr, "left", None),                     # one side only: no split
                       "nuisance.view": rng.choice(["AP", "PA"], n), "nuisance.marker": rng.choice(["none", "L", "R"], n),
                       "nuisance.exposure": rng.normal(size=n), "nuisance.rotation_deg": rng.normal(0, 6, size=n),
                       "nuisance.inspiration": rng.uniform(0.9, 1.1, n), "nuisance.annotation": "none"})
    c = phantom_concepts(gt, min_pos=10)
    assert set(c.parts) == {"Pleural Effusion", "Support Devices"}
    assert list(c.parts["Pleural Effusion"]) == ["left", "right"]
    assert (c.parts["Pleural Effusion"]["left"] == (eff & (side == "left"))).all()
    assert sorted(c.parts["Support Devices"]) == ["ecg", "ett", "pacemaker"]
    want = np.array([k is not None and "ett" in json.loads(k) for k in kinds])
    assert (c.parts["Support Devices"]["ett"] == want).all()
    assert "Fracture" not in c.parts
