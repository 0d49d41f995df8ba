"Tests of the CheXpert data layer on the real CheXpert training table (torchxrayvision's copy, 223,414 rows)."
import csv
import gzip
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from medsae.config import CHEXPERT_LABELS
from medsae.data import (LabelPolicy, balanced_subset, chexpert_5x200, frontal_only, label_matrix,
                         label_value_counts, patient_ids, read_chexpert_csv, split_by_patient)


@pytest.fixture(scope="module")
def raw(chexpert_train):
    return read_chexpert_csv(chexpert_train)


@pytest.fixture(scope="module")
def direct_counts(chexpert_train):
    "Counts of the raw strings, by the csv module: independent of the loader's parsing."
    with gzip.open(chexpert_train, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    return len(rows), {c: Counter(r[c] for r in rows) for c in CHEXPERT_LABELS}, rows


def test_counts_equal_a_direct_count(raw, direct_counts):
    n, direct, _ = direct_counts
    assert n == len(raw) == 223414
    got = label_value_counts(raw)
    for c in CHEXPERT_LABELS:
        d = direct[c]
        assert set(d) <= {"1.0", "0.0", "-1.0", ""}, (c, set(d))
        assert got.loc[c].to_dict() == dict(positive=d["1.0"], negative=d["0.0"], uncertain=d["-1.0"], blank=d[""])


def test_columns_read_by_name_not_position(raw, direct_counts, tmp_path):
    "The real rows written with the columns shuffled (metadata among the labels): every cell still under its name."
    _, _, rows = direct_counts
    header = list(rows[0])
    order = [header[i] for i in np.random.default_rng(0).permutation(len(header))]
    assert all(order.index(c) != header.index(c) for c in ("Path", "Edema", "Lung Opacity", "Lung Lesion"))
    sample = rows[:3000] + rows[200000:201000]
    p = tmp_path / "shuffled.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=order); w.writeheader(); w.writerows(sample)
    got = read_chexpert_csv(p)
    assert list(got.columns[:5]) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
    assert got["Path"].tolist() == [r["Path"] for r in sample] and got["Sex"].tolist() == [r["Sex"] for r in sample]
    for c in CHEXPERT_LABELS:
        want = np.array([float(r[c]) if r[c] else np.nan for r in sample])
        assert np.array_equal(got[c].to_numpy(dtype=float), want, equal_nan=True), c
    # and the real file, in its own order, agrees with the csv module too
    for i in (1, 2, 1000, 200000):
        for c in ("Lung Opacity", "Lung Lesion"):
            want = float(rows[i][c]) if rows[i][c] else np.nan
            got_v = raw[c].iloc[i]
            assert (np.isnan(want) and np.isnan(got_v)) or want == got_v


@pytest.mark.parametrize("uncertain", ["u_zeros", "u_ones", "ignore"])
def test_policies_never_let_minus_one_through(raw, uncertain):
    y, mask = label_matrix(raw, policy=LabelPolicy(uncertain))
    v = raw[list(CHEXPERT_LABELS)].to_numpy()
    assert set(np.unique(y)) <= {0.0, 1.0}
    unc = v == -1
    if uncertain == "u_ones": assert (y[unc] == 1).all() and mask[unc].all()
    if uncertain == "u_zeros": assert (y[unc] == 0).all() and mask[unc].all()
    if uncertain == "ignore": assert not mask[unc].any()
    blank = np.isnan(v)
    assert blank.sum() > 1_000_000 and mask[blank].all()                  # blank: zero, the default, keeps them
    y2, m2 = label_matrix(raw, policy=LabelPolicy(uncertain, "ignore"))
    assert not m2[blank].any() and (m2[~blank] == mask[~blank]).all() and (y2 == y).all()


def test_balanced_subset_on_the_real_table(raw):
    front = frontal_only(raw)
    sub = balanced_subset(front, n_per_class=200, seed=0)
    y, m = label_matrix(sub)
    per_class = ((y == 1) & m).sum(0)
    assert (per_class <= 200).all()
    assert (per_class == 200).all()           # the real table allows 200 for every class
    assert (((y == 1) & m).sum(1) > 0).all()  # no image without a positive label
    again = balanced_subset(front, n_per_class=200, seed=0)
    assert sub["Path"].tolist() == again["Path"].tolist()
    assert sub["Path"].tolist() != balanced_subset(front, n_per_class=200, seed=1)["Path"].tolist()


def test_balanced_subset_reports_a_shortfall():
    rows = [{"Path": f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.jpg", "Sex": "Male", "Age": 50,
             "Frontal/Lateral": "Frontal", "AP/PA": "PA", **{c: np.nan for c in CHEXPERT_LABELS}} for i in range(300)]
    df = pd.DataFrame(rows)
    df.loc[:49, "Edema"] = 1.0           # only 50 Edema positives
    df.loc[50:, "Cardiomegaly"] = 1.0    # 250 Cardiomegaly positives
    with pytest.warns(UserWarning, match="ran out"):
        sub = balanced_subset(df, ["Edema", "Cardiomegaly"], n_per_class=100)
    assert (sub["Edema"] == 1).sum() == 50 and (sub["Cardiomegaly"] == 1).sum() == 100


def test_chexpert_5x200_is_exclusive(raw):
    s = chexpert_5x200(raw, seed=3)
    others = [c for c in CHEXPERT_LABELS if c != "No Finding"]
    for cls, g in s.groupby("5x200 class"):
        assert len(g) == 200 and (g[cls] == 1).all()
        rest = g[[c for c in others if c != cls]].fillna(0)
        assert (rest == 0).all().all()
    assert (s["Frontal/Lateral"] == "Frontal").all()


def test_patient_split_has_no_leak(raw):
    front = frontal_only(raw)
    split = split_by_patient(front, {"train": 0.7, "valid": 0.15, "test": 0.15}, seed=5)
    pid = patient_ids(front)
    assert (pid.groupby(split).nunique().sum()) == pid.nunique()
    frac = pid.groupby(split).nunique() / pid.nunique()
    assert abs(frac["train"] - 0.7) < 0.01
