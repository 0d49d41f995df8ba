"""The CheXpert reader and the label policies on small hand-written tables, each expected value written out by hand
(the mutation tests of medsae.data: `make mutate`; they need no downloaded asset)."""
import warnings

import numpy as np
import pandas as pd
import pytest

from medsae.config import CHEXPERT_LABELS
from medsae.data import (DataError, LabelPolicy, balanced_subset, frontal_only, label_matrix, label_value_counts,
                         read_chexpert_csv)

META = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
nan = np.nan


def _write(path, rows: list[dict], columns: list[str]):
    "A CSV with exactly these columns in this order; cells as given (strings), missing cells blank."
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(i, **lab):
    return {"Path": f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.jpg", "Sex": "Female",
            "Age": 40 + i, "Frontal/Lateral": "Frontal", "AP/PA": "AP", **lab}


# ---------------------------------------------------------------------------------------------------------------
# read_chexpert_csv
# ---------------------------------------------------------------------------------------------------------------

def test_reader_takes_labels_by_name_from_a_table_in_shuffled_column_order(tmp_path):
    "Columns in an order unlike CHEXPERT_LABELS (reversed labels, metadata last, an extra column between)."
    cols = list(reversed(CHEXPERT_LABELS))[:7] + ["Extra"] + list(reversed(CHEXPERT_LABELS))[7:] + META[::-1]
    rows = [_row(1, **{"Edema": "1.0", "Cardiomegaly": "-1.0", "No Finding": "0.0", "Extra": "9"}),
            _row(2, **{"Edema": "0", "Pneumonia": "1", "Support Devices": "-1", "Extra": "9"}),
            _row(3, **{"Lung Opacity": " 1.0 ", "Lung Lesion": "0.0", "Extra": "9"})]
    df = read_chexpert_csv(_write(tmp_path / "t.csv", rows, cols))
    assert list(df.columns) == META + list(CHEXPERT_LABELS)           # our order, whatever the file's
    want = {1: {"Edema": 1.0, "Cardiomegaly": -1.0, "No Finding": 0.0},
            2: {"Edema": 0.0, "Pneumonia": 1.0, "Support Devices": -1.0},
            3: {"Lung Opacity": 1.0, "Lung Lesion": 0.0}}
    for i, w in want.items():
        for c in CHEXPERT_LABELS:
            got = df[c].iloc[i - 1]
            assert (np.isnan(got) if c not in w else got == w[c]), (i, c, got)
    assert all(df[c].dtype == np.float32 for c in CHEXPERT_LABELS)
    assert df["Age"].tolist() == [41.0, 42.0, 43.0] and df["Sex"].tolist() == ["Female"] * 3
    assert df["Path"].iloc[1].endswith("patient00002/study1/view1_frontal.jpg")
    assert df.attrs["source"] == str(tmp_path / "t.csv")


def test_reader_with_a_label_subset_reads_only_those(tmp_path):
    cols = META + ["Pneumothorax", "Edema"]                           # only two observations in the file
    p = _write(tmp_path / "t.csv", [_row(1, Edema="-1.0", Pneumothorax="1.0"), _row(2)], cols)
    df = read_chexpert_csv(p, ["Edema", "Pneumothorax"])
    assert list(df.columns) == META + ["Edema", "Pneumothorax"]
    assert df["Edema"].tolist()[0] == -1.0 and df["Pneumothorax"].tolist()[0] == 1.0
    assert np.isnan(df["Edema"].iloc[1]) and np.isnan(df["Pneumothorax"].iloc[1])
    with pytest.raises(DataError) as e:
        read_chexpert_csv(p)                                          # all 14 asked for: 12 are missing
    assert str(e.value).startswith(f"{p}: missing column(s) ['No Finding', 'Enlarged Cardiomediastinum', ")
    assert str(e.value).endswith(f"; found columns {cols}")


def test_reader_blank_age_is_nan_and_a_word_is_an_error_naming_the_line(tmp_path):
    cols = META + list(CHEXPERT_LABELS)
    rows = [_row(1), _row(2), _row(3), _row(4)]
    rows[1]["Age"] = ""
    rows[2]["Age"] = " 7 "
    df = read_chexpert_csv(_write(tmp_path / "ok.csv", rows, cols))
    assert np.isnan(df["Age"].iloc[1]) and df["Age"].tolist()[2] == 7.0 and df["Age"].iloc[3] == 44.0
    rows[3]["Age"] = "old"
    p = _write(tmp_path / "bad.csv", rows, cols)
    with pytest.raises(DataError) as e: read_chexpert_csv(p)
    assert str(e.value) == f"{p}: line 5, column 'Age': 'old' is not a number"


def test_reader_unknown_label_value_names_line_column_value_and_count(tmp_path):
    cols = META + list(CHEXPERT_LABELS)
    rows = [_row(1, Edema="1.0"), _row(2, Edema="2"), _row(3, Edema="yes"), _row(4, Edema="0.0")]
    p = _write(tmp_path / "bad.csv", rows, cols)
    with pytest.raises(DataError) as e: read_chexpert_csv(p)
    assert str(e.value) == (f"{p}: line 3, column 'Edema': unknown label value '2' "
                            "(expected 1, 0, -1 or blank; 2 such cell(s) in this column)")
    rows[1]["Edema"] = "-1"                                           # "-1" and "-1.0" are both the uncertain code
    rows[2]["Edema"] = "-1.0"
    assert read_chexpert_csv(_write(tmp_path / "ok.csv", rows, cols))["Edema"].tolist() == [1.0, -1.0, -1.0, 0.0]


def test_reader_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError) as e: read_chexpert_csv(tmp_path / "none.csv")
    assert str(e.value) == f"{tmp_path / 'none.csv'}: file not found"
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(DataError, match=r"bin\.csv: cannot be read as CSV \("): read_chexpert_csv(p)



def _error(path) -> str:
    with pytest.raises(DataError) as e: read_chexpert_csv(path)
    return str(e.value)


def test_reader_names_every_malformed_file_in_one_exact_line(tmp_path):
    "A folder, an empty file, a header alone, a row with too many fields: each message written out here."
    cols = META + list(CHEXPERT_LABELS)
    assert _error(tmp_path) == f"{tmp_path}: not a file"
    (empty := tmp_path / "empty.csv").write_text("")
    assert _error(empty) == f"{empty}: the file is empty (no header, no rows)"
    header = _write(tmp_path / "header.csv", [], cols)
    assert _error(header) == f"{header}: a header and no rows"
    wide = _write(tmp_path / "wide.csv", [_row(1), _row(2)], cols)
    wide.write_text(wide.read_text() + ",".join(["x"] * (len(cols) + 1)) + "\n")
    msg = f"Error tokenizing data. C error: Expected {len(cols)} fields in line 4, saw {len(cols) + 1}"
    assert _error(wide) == f"{wide}: cannot be read as CSV ({msg})"        # pandas' message, on one line


def test_reader_empty_and_duplicate_paths_name_their_lines(tmp_path):
    "Lines count from the header (line 1); the first offending row is named, with the count or the first twin."
    cols = META + list(CHEXPERT_LABELS)
    rows = [_row(i) for i in range(1, 7)]
    rows[2]["Path"] = ""; rows[4]["Path"] = "   "                         # data rows 2 and 4 (lines 4 and 6)
    p = _write(tmp_path / "blank.csv", rows, cols)
    assert _error(p) == f"{p}: line 4, column 'Path': empty (2 such row(s))"
    rows = [_row(i) for i in range(1, 7)]
    rows[3]["Path"] = rows[1]["Path"]; rows[5]["Path"] = rows[0]["Path"]   # twins of lines 3 and 2, at lines 5 and 7
    p = _write(tmp_path / "dup.csv", rows, cols)
    assert _error(p) == f"{p}: line 5, column 'Path': {rows[1]['Path']!r} is also on line 3"


# ---------------------------------------------------------------------------------------------------------------
# label_value_counts, LabelPolicy, label_matrix
# ---------------------------------------------------------------------------------------------------------------

# one label column per case: 1, 0, -1 and blank in known numbers
TABLE = pd.DataFrame({"Edema": [1, 1, 0, -1, nan, -1, 1], "Pneumonia": [0, 0, 0, nan, nan, nan, -1],
                      "Atelectasis": [1, 0, -1, -1, -1, 1, nan]}, dtype="float32")


def test_label_value_counts_by_hand():
    c = label_value_counts(TABLE, ["Pneumonia", "Edema", "Atelectasis"])
    assert c.index.name == "label" and list(c.index) == ["Pneumonia", "Edema", "Atelectasis"]
    assert list(c.columns) == ["positive", "negative", "uncertain", "blank"]
    assert c.loc["Edema"].tolist() == [3, 1, 2, 1]
    assert c.loc["Pneumonia"].tolist() == [0, 3, 1, 3]
    assert c.loc["Atelectasis"].tolist() == [2, 1, 3, 1]


# Edema column [1, 1, 0, -1, nan, -1, 1] under every policy: (y, mask), written out
EDEMA = {
    ("u_zeros", "zero"): ([1, 1, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1]),
    ("u_ones", "zero"): ([1, 1, 0, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1]),
    ("ignore", "zero"): ([1, 1, 0, 0, 0, 0, 1], [1, 1, 1, 0, 1, 0, 1]),
    ("published", "zero"): ([1, 1, 0, -1, 0, -1, 1], [1, 1, 1, 1, 1, 1, 1]),
    ("u_zeros", "ignore"): ([1, 1, 0, 0, 0, 0, 1], [1, 1, 1, 1, 0, 1, 1]),
    ("u_ones", "ignore"): ([1, 1, 0, 1, 0, 1, 1], [1, 1, 1, 1, 0, 1, 1]),
    ("ignore", "ignore"): ([1, 1, 0, 0, 0, 0, 1], [1, 1, 1, 0, 0, 0, 1]),
    ("published", "ignore"): ([1, 1, 0, -1, 0, -1, 1], [1, 1, 1, 1, 0, 1, 1]),
}


@pytest.mark.parametrize("uncertain, blank", list(EDEMA))
def test_label_matrix_every_policy_by_hand(uncertain, blank):
    y, m = label_matrix(TABLE, ["Atelectasis", "Edema"], LabelPolicy(uncertain, blank))
    assert y.dtype == np.float32 and m.dtype == bool and y.shape == m.shape == (7, 2)
    want_y, want_m = EDEMA[(uncertain, blank)]
    assert y[:, 1].tolist() == want_y and m[:, 1].astype(int).tolist() == want_m
    assert y[:, 0].tolist() == [1, 0, {"u_ones": 1, "published": -1}.get(uncertain, 0) * 1.0,
                                *[{"u_ones": 1, "published": -1}.get(uncertain, 0) * 1.0] * 2, 1, 0]


def test_label_matrix_of_an_object_table():
    "Labels held as Python objects (a table built from lists with None) give the same matrix."
    obj = TABLE.astype(object).where(TABLE.notna(), None)
    for pol in (LabelPolicy("u_ones", "ignore"), LabelPolicy("ignore", "zero")):
        y, m = label_matrix(obj, ["Edema", "Pneumonia", "Atelectasis"], pol)
        y0, m0 = label_matrix(TABLE, ["Edema", "Pneumonia", "Atelectasis"], pol)
        assert (y == y0).all() and (m == m0).all() and y.dtype == np.float32


def test_blank_ignore_masks_blank_cells_and_only_them():
    y, m = label_matrix(TABLE, ["Pneumonia", "Edema"], LabelPolicy("u_zeros", "ignore"))
    assert m.tolist() == [[True, True], [True, True], [True, True], [False, True], [False, False], [False, True],
                          [True, True]]
    y0, m0 = label_matrix(TABLE, ["Pneumonia", "Edema"], LabelPolicy("u_zeros", "zero"))
    assert m0.all() and (y0 == y).all()                              # blank: zero keeps them, as negatives


def test_policy_refuses_unknown_settings_and_records_itself():
    with pytest.raises(ValueError) as e: LabelPolicy("zeros")
    assert str(e.value) == "uncertain policy 'zeros': expected u_zeros, u_ones, ignore or published"
    with pytest.raises(ValueError) as e: LabelPolicy("u_ones", "one")
    assert str(e.value) == "blank policy 'one': expected zero or ignore"
    for u in ("u_zeros", "u_ones", "ignore", "published"):
        for b in ("zero", "ignore"): assert LabelPolicy(u, b).as_dict() == {"uncertain": u, "blank": b}
    assert LabelPolicy() == LabelPolicy("u_zeros", "zero")


def test_frontal_only():
    df = pd.DataFrame({"Path": list("abcde"), "Frontal/Lateral": ["Frontal", "Lateral", " frontal ", "FRONTAL", nan]})
    assert frontal_only(df)["Path"].tolist() == ["a", "c", "d"]
    no_view = pd.DataFrame({"Path": ["a", "b"]})
    assert frontal_only(no_view) is no_view


# ---------------------------------------------------------------------------------------------------------------
# balanced_subset
# ---------------------------------------------------------------------------------------------------------------

def _table(labels: dict[str, list]) -> pd.DataFrame:
    n = len(next(iter(labels.values())))
    return pd.DataFrame({"Path": [f"p{i}" for i in range(n)], **{k: np.asarray(v, dtype="float32") for k, v in labels.items()}})


def test_balanced_subset_walk_in_table_order_by_hand():
    # row:          0  1  2  3  4  5  6  7  8
    df = _table({"Edema":        [1, 1, 0, 1, 0, 1, 0, 0, 1],
                 "Pneumonia":    [0, 1, 0, 0, 1, 0, 1, 1, 0],
                 "Atelectasis":  [0, 0, 0, 0, 0, 0, 0, 1, 1]})
    # cap 2: row 0 (E1) row 1 (E2 P1) row 2 no positive; row 3 E full: skip; row 4 (P2); row 5 E full; row 6 P full;
    # row 7 P full (though A is not); row 8 E full (though A is not): A never reaches 2 -> a warning
    with pytest.warns(UserWarning) as w:
        sub = balanced_subset(df, ["Edema", "Pneumonia", "Atelectasis"], 2, order="table")
    assert sub["Path"].tolist() == ["p0", "p1", "p4"]
    assert str(w[0].message) == "balanced subset: the table ran out before 2 positives for {'Atelectasis': 0}"
    assert sub.attrs["subset"] == "balanced-3x2" and sub.attrs["seed"] == 0
    assert sub.attrs["policy"] == {"uncertain": "u_zeros", "blank": "zero"}


def test_balanced_subset_stops_once_every_class_is_full():
    df = _table({"Edema": [1, 0, 1, 0, 1, 1], "Pneumonia": [0, 1, 0, 1, 1, 0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                 # no shortfall: no warning
        sub = balanced_subset(df, ["Edema", "Pneumonia"], 2, order="table")
    assert sub["Path"].tolist() == ["p0", "p1", "p2", "p3"]
    # a class full before the others must not stop the walk: Edema is full at row 2, Pneumonia only at row 3
    df2 = _table({"Edema": [1, 1, 0, 0, 0], "Pneumonia": [0, 0, 1, 0, 1]})
    assert balanced_subset(df2, ["Edema", "Pneumonia"], 2, order="table")["Path"].tolist() == ["p0", "p1", "p2", "p4"]


def test_balanced_subset_counts_positives_after_the_policy():
    df = _table({"Edema": [-1, 1, -1, nan], "Pneumonia": [1, -1, 0, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ones = balanced_subset(df, ["Edema", "Pneumonia"], 3, LabelPolicy("u_ones"), order="table")
    assert ones["Path"].tolist() == ["p0", "p1", "p2", "p3"]          # uncertain counts as positive under u_ones
    with pytest.warns(UserWarning) as w:
        zeros = balanced_subset(df, ["Edema", "Pneumonia"], 3, LabelPolicy("u_zeros"), order="table")
    assert zeros["Path"].tolist() == ["p0", "p1", "p3"]
    assert "{'Edema': 1, 'Pneumonia': 2}" in str(w[0].message)
    with pytest.raises(ValueError) as e: balanced_subset(df, ["Edema"], 3, order="random")
    assert str(e.value) == "order 'random': expected shuffled or table"


def test_balanced_subset_default_is_the_papers_200_per_class():
    df = _table({"Edema": [1.0] * 229 + [0.0], "Pneumonia": [0.0] * 229 + [1.0]})
    with pytest.warns(UserWarning, match=r"\{'Pneumonia': 1\}"):
        sub = balanced_subset(df, ["Edema", "Pneumonia"], order="table")
    assert len(sub) == 201 and (sub["Edema"] == 1).sum() == 200 and sub.attrs["subset"] == "balanced-2x200"


def test_balanced_subset_shuffled_walks_the_seeded_permutation():
    rng = np.random.default_rng(11)
    df = _table({"Edema": (rng.random(60) < 0.3).astype(float), "Pneumonia": (rng.random(60) < 0.3).astype(float)})
    df.attrs["source"] = "t.csv"
    a = balanced_subset(df, ["Edema", "Pneumonia"], 5, seed=3)
    assert a.attrs["seed"] == 3 and a.attrs["source"] == "t.csv"
    perm = list(np.random.default_rng(3).permutation(60))
    pos = [perm.index(i) for i in a.index]
    assert pos == sorted(pos)                                          # taken in the order of the seeded shuffle
    first = perm[pos[0]]
    assert all(df.loc[perm[k], ["Edema", "Pneumonia"]].sum() == 0 for k in range(pos[0]))   # nothing skipped before
    assert first == a.index[0] and a["Path"].tolist() == balanced_subset(df, ["Edema", "Pneumonia"], 5, seed=3)["Path"].tolist()
    assert a["Path"].tolist() != balanced_subset(df, ["Edema", "Pneumonia"], 5, seed=4)["Path"].tolist()
    y = a[["Edema", "Pneumonia"]].to_numpy()
    assert (y.sum(0) == 5).all() and (y.sum(1) > 0).all()
