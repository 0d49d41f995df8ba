"""The metrics against formulas written out here: entropy of unequal |r|, masked Pearson r by numpy on the defined
rows, the detector rule and the Monosemanticity Score as double sums (the mutation tests of medsae.metrics:
`make mutate`)."""
import numpy as np
import pytest
import scipy.sparse as sp

from medsae.metrics import (CorrelationStats, MetricError, correlations, detection, detector_thresholds, entropy,
                            monosemanticity, monosemanticity_score)

LABS = ("A", "B", "C")


def H(p):
    "Shannon entropy (nats) of a probability vector, zeros skipped."
    p = np.asarray(p, dtype=float)
    return float(-sum(x * np.log(x) for x in p if x > 0))


def pearson_masked(a: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    "r (m, k) by numpy's corrcoef on each label's defined rows; NaN where either side is constant there."
    out = np.full((a.shape[1], y.shape[1]), np.nan)
    for c in range(y.shape[1]):
        rows = mask[:, c].astype(bool)
        for j in range(a.shape[1]):
            u, v = a[rows, j], y[rows, c]
            if u.std() > 0 and v.std() > 0: out[j, c] = np.corrcoef(u, v)[0, 1]
    return out


# ---------------------------------------------------------------------------------------------------------------
# entropy
# ---------------------------------------------------------------------------------------------------------------

def test_entropy_of_unequal_magnitudes_is_on_abs_r():
    r = np.array([[0.6, -0.3, 0.1], [0.5, 0.0, -0.5], [0.2, 0.2, 0.2], [-0.9, 0.0, 0.0], [0.0, 0.0, 0.0],
                  [0.4, np.nan, 0.1], [0.3, np.inf, 0.1]])
    h = entropy(r)
    assert np.isclose(h[0], H([0.6, 0.3, 0.1]))                        # |r| / sum |r|, not r^2 / sum r^2
    assert not np.isclose(h[0], H(np.array([0.36, 0.09, 0.01]) / 0.46))
    assert np.isclose(h[1], np.log(2)) and np.isclose(h[2], np.log(3)) and h[3] == 0.0
    assert np.isnan(h[4:]).all()                                      # all zero, a NaN, an infinity: undefined
    assert h.dtype == np.float64 and h.shape == (7,)
    h32 = entropy(np.array([[0.25, 0.75]], dtype=np.float32))             # computed in float64 whatever the input
    assert h32.dtype == np.float64 and abs(h32[0] - H([0.25, 0.75])) < 1e-15


# ---------------------------------------------------------------------------------------------------------------
# correlations (streaming, masked) and monosemanticity
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("chunk", [7, 1000])
def test_masked_correlations_equal_numpy_on_the_defined_rows(sparse, chunk):
    rng = np.random.default_rng(3)
    n = 50
    y = (rng.random((n, 3)) < 0.4).astype(float); y[0], y[1] = 1, 0
    a = np.abs(rng.normal(size=(n, 5))) * (rng.random((n, 5)) < 0.6) + (0 if sparse else 4.0)
    a[:, 4] = 2.0 if not sparse else 0.0                              # a constant unit
    mask = rng.random((n, 3)) < 0.8; mask[:2] = True
    y_left = np.where(mask, y, np.nan)                                # undefined cells: NaN is allowed there
    c = correlations(sp.coo_matrix(a) if sparse else a, y_left, LABS, mask=mask, chunk=chunk)
    want = pearson_masked(a, y, mask)
    assert np.allclose(c.r, want, atol=1e-10, equal_nan=True)
    assert c.labels == LABS and c.n_images == n and list(c.undefined_units) == [4] and c.undefined_labels == ()
    assert list(c.defined) == [True, True, True, True, False]
    with pytest.raises(MetricError) as e: correlations(a, y, LABS, mask=mask[:, :2])
    assert str(e.value) == "label mask shape (50, 2) differs from labels (50, 3)"


@pytest.mark.parametrize("sparse", [False, True])
def test_float32_inputs_are_computed_in_float64(sparse):
    "Activations, labels and masks of other dtypes give float64 sums: the same r as the float64 reference, to 1e-12."
    rng = np.random.default_rng(9)
    a = (np.abs(rng.normal(size=(400, 3))) * (rng.random((400, 3)) < 0.5) + 7.3).astype(np.float32)
    y = (rng.random((400, 2)) < 0.3).astype(np.float32); y[0], y[1] = 1, 0
    mask = (rng.random((400, 2)) < 0.9); mask[:2] = True
    want = pearson_masked(a.astype(np.float64), y.astype(np.float64), mask)
    got = correlations(sp.csr_matrix(a) if sparse else a, y, ("A", "B"), mask=mask).r
    assert np.abs(got - want).max() < 1e-12
    score = rng.random((400, 1)).astype(np.float32)                   # a continuous float32 score, no mask
    want = pearson_masked(a.astype(np.float64), score.astype(np.float64), np.ones((400, 1), bool))
    assert np.abs(correlations(sp.csr_matrix(a) if sparse else a, score, ["s"]).r - want).max() < 1e-12


@pytest.mark.parametrize("sparse", [False, True])
def test_an_empty_first_chunk_leaves_no_shift_behind(sparse):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20, 2)) + 3.0
    y = (rng.random((20, 1)) < 0.5).astype(float); y[0], y[1] = 1, 0
    conv = sp.csr_matrix if sparse else np.asarray
    with np.errstate(all="raise"):                                     # no mean of zero rows is taken
        st = CorrelationStats(2, 1).update(conv(a[:0]), y[:0]).update(conv(a), y)
    assert st.shift.shape == (2,)
    assert np.allclose(st.shift, 0.0) and np.allclose(st.r(), pearson_masked(a, y, np.ones_like(y)), atol=1e-10)


def test_correlation_stats_accumulate_chunks_and_the_first_chunk_sets_the_shift():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(30, 2)) + 100.0
    y = (rng.random((30, 2)) < 0.5).astype(float); y[0], y[1] = 1, 0
    st = CorrelationStats(2, 2)
    assert st.shift is None and st.n.shape == (2,) and st.s_ay.shape == (2, 2)
    st.update(a[:10], y[:10]).update(a[10:], y[10:])
    assert np.allclose(st.shift, a[:10].mean(0))
    assert np.allclose(st.n, [30, 30]) and np.allclose(st.s_y, y.sum(0)) and np.allclose(st.s_yy, (y * y).sum(0))
    assert np.allclose(st.s_a, ((a - st.shift).sum(0))[:, None] * np.ones(2))
    assert np.allclose(st.s_ay, (a - st.shift).T @ y)
    assert np.allclose(st.r(), pearson_masked(a, y, np.ones_like(y)), atol=1e-10)
    with pytest.raises(MetricError) as e: st.update(a[:, :1], y)
    assert str(e.value) == "chunk has 1 units, expected 2"
    b = a - 100
    sp_st = CorrelationStats(2, 2).update(sp.csr_matrix(b[:13]), y[:13]).update(sp.csr_matrix(b[13:]), y[13:])
    assert np.allclose(sp_st.shift, b[:13].mean(0)) and np.allclose(sp_st.r(), st.r(), atol=1e-10)
    assert np.allclose(sp_st.s_aa, ((b - sp_st.shift) ** 2).T @ np.ones((30, 2)))
    assert np.allclose(sp_st.s_ay, (b - sp_st.shift).T @ y)


def test_constant_units_and_labels_are_undefined_despite_rounding():
    y = np.array([[1.0], [0.0], [1.0], [0.0], [1.0], [0.0], [0.0], [1.0], [0.0], [0.0]])
    a = np.c_[np.full(10, 0.1), np.arange(10.0), np.full(10, 3.0)]
    r = correlations(sp.csr_matrix(a), y, ["A"]).r                   # sparse sums: 0.1 is not exact in binary
    assert np.isnan(r[0, 0]) and np.isclose(r[1, 0], np.corrcoef(a[:, 1], y[:, 0])[0, 1]) and np.isnan(r[2, 0])
    assert np.isnan(correlations(a, y, ["A"]).r[[0, 2], 0]).all()
    assert np.isnan(correlations(a[:, 1:2], np.full((10, 1), 0.1), ["A"]).r).all()
    strong = correlations(np.c_[y[:, 0] * 3 + 1e-3 * np.arange(10)], y, ["A"]).r
    assert 0.999 < strong[0, 0] <= 1.0
    big = np.full((10, 1), 12345.678)                                 # a large constant: rounding, not variance
    assert np.isnan(correlations(sp.csr_matrix(big), y, ["A"]).r).all()
    assert np.isnan(correlations(a[:, 1:2], np.full((10, 1), 12345.678), ["A"]).r).all()
    tiny = 1e-6 * np.arange(1.0, 11.0)[:, None]                        # a tiny scale is not a constant
    want = np.corrcoef(tiny[:, 0], y[:, 0])[0, 1]
    assert np.isclose(correlations(sp.csr_matrix(tiny), y, ["A"]).r[0, 0], want)
    assert np.isclose(correlations(a[:, 1:2], 1e-6 * y, ["A"]).r[0, 0], np.corrcoef(a[:, 1], y[:, 0])[0, 1])


def test_exactly_linear_units_have_r_of_one_never_more():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(10, 40))
        y = (rng.random((n, 1)) < 0.5).astype(float); y[0], y[1] = 1, 0
        c, b = rng.uniform(0.1, 10), rng.uniform(-5, 5)
        units = np.c_[c * y + b, -c * y + b]
        for u in (units, sp.csr_matrix(units)):
            r = correlations(u, y, ["A"]).r
            assert np.allclose(r[:, 0], [1.0, -1.0]) and (np.abs(r) <= 1.0).all()


def test_monosemanticity_by_hand():
    "Units with known r: who enters (max |r| > threshold), the best unit per class by r, their entropies."
    from medsae.metrics import Correlations
    r = np.array([[0.5, -0.1, 0.1],     # enters
                  [-0.7, 0.2, 0.1],     # enters by |r|; never best (r negative for A)
                  [0.2, 0.15, 0.1],     # max |r| 0.2: not above the threshold 0.2
                  [0.1, 0.6, np.nan],   # undefined: never enters
                  [0.05, 0.3, 0.25]])   # enters; best for B and C
    c = Correlations(r, LABS, 40, np.array([3]), ())
    m = monosemanticity(c, 0.2)
    assert list(m.entering) == [0, 1, 4] and m.n_undefined == 1 and m.n_units == 5 and m.threshold == 0.2
    assert np.allclose(m.unit_entropy, [H([0.5 / 0.7, 0.1 / 0.7, 0.1 / 0.7]), H([0.7, 0.2, 0.1]),
                                        H(np.array([0.05, 0.3, 0.25]) / 0.6)])
    assert list(m.best_unit) == [0, 4, 4] and np.allclose(m.best_r, [0.5, 0.3, 0.25])
    assert np.allclose(m.best_entropy, m.unit_entropy[[0, 2, 2]])
    assert np.isclose(m.mean_best_entropy, m.unit_entropy[[0, 2, 2]].mean())
    none = monosemanticity(c, 0.9)
    assert len(none.entering) == 0 and list(none.best_unit) == [-1, -1, -1] and np.isnan(none.best_r).all()
    assert none.classes_without_unit == list(LABS) and np.isnan(none.mean_best_entropy)
    assert list(monosemanticity(c).entering) == [0, 1, 4]               # the paper's threshold, 0.2, by default
    assert list(monosemanticity(c, 0.25).entering) == [0, 1, 4] and list(monosemanticity(c, 0.3).entering) == [0, 1]
    with pytest.raises(MetricError) as e:
        monosemanticity(Correlations(r[:, :2], ("A", "B"), 40, np.array([]), ("B",)))
    assert str(e.value) == ("label(s) ['B'] are constant over the 40 images (no positive or no negative example), so "
                            "no correlation with them exists: use a label set without them")


def test_correlations_of_a_constant_label_and_no_units():
    rng = np.random.default_rng(5)
    y = np.c_[(rng.random(20) < 0.5), np.ones(20), (rng.random(20) < 0.5)].astype(float)
    y[0, [0, 2]], y[1, [0, 2]] = 1, 0
    c = correlations(rng.normal(size=(20, 3)), y, LABS)
    assert c.undefined_labels == ("B",) and list(c.undefined_units) == []      # units judged on the other labels
    empty = correlations(np.zeros((20, 0)), y, LABS)
    assert empty.r.shape == (0, 3) and empty.undefined_labels == ("B",)     # the label's own variance, units or not


@pytest.mark.parametrize("sparse", [False, True])
def test_constant_units_never_make_the_labels_undefined(sparse):
    "Every unit constant: the units are listed, the labels (which vary) are not blamed, and monosemanticity says so."
    rng = np.random.default_rng(8)
    y = (rng.random((30, 3)) < 0.5).astype(float); y[0], y[1] = 1, 0
    a = np.c_[np.zeros(30), np.full(30, 2.5)]
    c = correlations(sp.csr_matrix(a) if sparse else a, y, LABS)
    assert c.undefined_labels == () and list(c.undefined_units) == [0, 1] and np.isnan(c.r).all()
    m = monosemanticity(c)
    assert m.n_undefined == 2 and len(m.entering) == 0


@pytest.mark.parametrize("chunk", [7, 1000])
def test_sparse_units_far_from_zero_are_centred_like_dense(chunk):
    "Values near 1e5 with a spread of 1, some stored, some implicit zeros, and masks: r by numpy on the defined rows."
    rng = np.random.default_rng(9)
    n = 60
    y = (rng.random((n, 3)) < 0.4).astype(float); y[0], y[1] = 1, 0
    mask = rng.random((n, 3)) > 0.2; mask[:2] = True
    a = 1e5 + rng.normal(size=(n, 4))
    a[rng.random(n) < 0.3, 2] = 0.0                                     # a unit with implicit zeros among far values
    a[:, 3] = 0.0; a[::5, 3] = 1e5 + rng.normal(size=12)                # mostly zero, far when it fires
    want = pearson_masked(a, y, mask)
    assert np.isfinite(want).all()
    got = correlations(sp.csr_matrix(a), y, LABS, mask=mask, chunk=chunk)
    assert np.allclose(got.r, want, atol=1e-8) and got.undefined_labels == () and len(got.undefined_units) == 0
    assert np.allclose(correlations(a, y, LABS, mask=mask, chunk=chunk).r, want, atol=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# the detector rule
# ---------------------------------------------------------------------------------------------------------------

def thr_ref(col: np.ndarray, top: float) -> float:
    v = np.sort(col[col > 1e-7])
    return np.inf if not len(v) else v[max(1, int((1 - top) * len(v))) - 1]


def _acts():
    rng = np.random.default_rng(6)
    a = np.round(rng.exponential(1, (40, 6)), 2) * (rng.random((40, 6)) < 0.5)
    a[:, 3] = 0.0; a[5, 3] = 2.0                                       # one positive activation
    a[:, 4] = -a[:, 4]; a[[1, 2, 3, 4], 4] = [1e-8, 0.5, 0.7, 1e-7]    # negatives and tiny values are not positive
    a[:, 5] = 0.0                                                      # never positive (the last column)
    return a


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("top", [0.3, 0.55])
def test_detector_thresholds_equal_the_sorted_positives(sparse, top):
    a = _acts()
    thr = detector_thresholds(sp.csr_matrix(a) if sparse else a, top)
    assert thr.shape == (6,)
    for j in range(6): assert thr[j] == thr_ref(a[:, j], top), (j, thr[j], thr_ref(a[:, j], top))
    assert thr[3] == 2.0 and thr[4] == 0.5 and thr[5] == np.inf
    if top == 0.3: assert (detector_thresholds(sp.csr_matrix(a) if sparse else a) == thr).all()   # the published 30%


@pytest.mark.parametrize("sparse", [False, True])
def test_detection_counts_against_loops(sparse):
    a = _acts()
    rng = np.random.default_rng(7)
    y = (rng.random((40, 2)) < 0.4).astype(float)
    mask = rng.random((40, 2)) < 0.85
    d = detection(sp.csr_matrix(a) if sparse else a, y, mask, top=0.3)
    for j in range(6):
        fire = a[:, j] > thr_ref(a[:, j], 0.3)
        assert d.fires[j] == fire.sum()
        for c in range(2):
            m = mask[:, c]
            tp = (fire & m & (y[:, c] == 1)).sum(); nf = (fire & m).sum(); npos = (m & (y[:, c] == 1)).sum()
            p = tp / nf if nf else 0.0
            rc = tp / npos if npos else 0.0
            f1 = 2 * p * rc / (p + rc) if p + rc else 0.0
            assert np.isclose(d.precision[j, c], p) and np.isclose(d.recall[j, c], rc) and np.isclose(d.f1[j, c], f1), (j, c)
    assert d.fires.dtype.kind == "i" and d.precision.shape == (6, 2)
    full = detection(a, y, None, top=0.3)
    assert np.allclose(full.recall[0], [((a[:, 0] > thr_ref(a[:, 0], 0.3)) & (y[:, c] == 1)).sum() / y[:, c].sum()
                                        for c in range(2)])
    none = detection(a, np.zeros((40, 1)), None)                       # no positive image: recall and F1 are 0
    assert (none.recall == 0).all() and (none.f1 == 0).all() and (none.precision == 0).all()
    one = np.zeros((40, 1)); one[np.argmax(a[:, 0])] = 1               # a single positive, on unit 0's peak
    d1 = detection(a, one)                                             # the published top 30% by default
    n_fire = int((a[:, 0] > thr_ref(a[:, 0], 0.3)).sum())
    assert d1.recall[0, 0] == 1.0 and np.isclose(d1.precision[0, 0], 1 / n_fire) and n_fire > 1
    assert np.isclose(d1.f1[0, 0], 2 * (1 / n_fire) / (1 / n_fire + 1))
    d55 = detection(a, y, top=0.55)
    assert [int((a[:, j] > thr_ref(a[:, j], 0.55)).sum()) for j in range(6)] == d55.fires.tolist() != d.fires.tolist()
    with pytest.raises(MetricError, match="label mask shape"): detection(a, y, mask[:, :1])
    yn = np.where(mask, y, np.nan)                                     # NaN where undefined: allowed under the mask
    assert np.allclose(detection(a, yn, mask).f1, detection(a, y, mask).f1)


# ---------------------------------------------------------------------------------------------------------------
# the Monosemanticity Score
# ---------------------------------------------------------------------------------------------------------------

def ms_ref(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    "MS of every unit as the double sum over image pairs i != j of a'_i a'_j cos(e_i, e_j) / a'_i a'_j."
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    cos = e @ e.T
    out = []
    for j in range(a.shape[1]):
        v = a[:, j]
        if v.max() == v.min(): out.append(np.nan); continue
        s = (v - v.min()) / (v.max() - v.min())
        w = np.outer(s, s); np.fill_diagonal(w, 0)
        out.append((w * cos).sum() / w.sum() if w.sum() > 1e-12 else np.nan)
    return np.array(out)


@pytest.mark.parametrize("sparse", [False, True])
def test_monosemanticity_score_equals_the_double_sum(sparse):
    rng = np.random.default_rng(8)
    n = 30
    e = rng.normal(size=(n, 4)); e[3] *= 5.0                          # lengths differ: cosines, not dot products
    a = np.round(rng.exponential(1, (n, 6)), 3) * (rng.random((n, 6)) < 0.5)
    a[:, 1] = rng.uniform(0.5, 2.0, n)                                # never zero: its own minimum
    a[:, 2] = 0.0                                                     # silent: undefined
    a[:, 3] = 0.0; a[4, 3] = 1.5                                      # one image: no pair, undefined
    a[:, 4] = 0.0; a[[4, 9], 4] = [1.0, 3.0]                          # two images
    a[:, 5] = a[:, 5] - 0.5 * (a[:, 5] > 0)                           # negative values
    a = np.c_[a, np.zeros((n, 5))]
    a[::3, 6] = np.linspace(0.1, 0.5, 10)                             # a range below 1
    a[:, 7] = rng.uniform(-3.0, 1.0, n); a[0, 7], a[1, 7] = -3.0, 1.0  # max + min < 0
    a[7, 8] = -1.0                                                    # one negative value among implicit zeros
    a[[2, 6], 9] = [1e-13, 1.0]                                       # a second image at 1e-13: not a pair
    # column 10: silent, the last one
    e32, a32 = e.astype(np.float32), a.astype(np.float32)             # computed in float64 whatever the input
    got = monosemanticity_score(sp.csr_matrix(a32) if sparse else a32, e32)
    want = ms_ref(a32.astype(np.float64), e32.astype(np.float64))
    assert np.abs(np.nan_to_num(got, nan=9) - np.nan_to_num(want, nan=9)).max() < 1e-12
    assert np.isnan(got[[2, 3, 9, 10]]).all() and np.isfinite(got[[0, 1, 4, 5, 6, 7, 8]]).all()
    c = e[4] / np.linalg.norm(e[4]) @ (e[9] / np.linalg.norm(e[9]))
    assert np.isclose(got[4], c)                                      # two images: their cosine
    assert np.isclose(got[8], ms_ref(np.c_[a[:, 8] + 1.0], e)[0])     # the lone negative: the others are its peak
    with pytest.raises(MetricError) as err: monosemanticity_score(a, e[:-1])
    assert str(err.value) == "activations have 30 rows but embeddings 29"
