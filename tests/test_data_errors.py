"Bad input: tables and images."
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from medsae.config import CHEXPERT_LABELS
from medsae.data import (ChexpertImages, DataError, LabelPolicy, balanced_subset, collate_skipping, label_matrix,
                         make_image_fixtures, read_chexpert_csv, write_skipped)


def _table(n=4):
    return pd.DataFrame([{"Path": f"CheXpert-v1.0-small/valid/patient{i:05d}/study1/view1_frontal.jpg", "Sex": "Male",
                          "Age": 40 + i, "Frontal/Lateral": "Frontal", "AP/PA": "AP",
                          **{c: "" for c in CHEXPERT_LABELS}} for i in range(n)])


def test_missing_column_names_column_and_file(tmp_path):
    p = tmp_path / "valid.csv"
    _table().drop(columns=["AP/PA"]).to_csv(p, index=False)
    with pytest.raises(DataError, match=r"AP/PA") as e: read_chexpert_csv(p)
    assert str(p) in str(e.value)


def test_unknown_label_value_names_line_and_column(tmp_path):
    t = _table()
    t.loc[2, "Pleural Other"] = "yes"
    p = tmp_path / "valid.csv"
    t.to_csv(p, index=False)
    with pytest.raises(DataError, match=r"line 4, column 'Pleural Other'.*'yes'"): read_chexpert_csv(p)


def test_bad_age_and_unreadable_file(tmp_path):
    t = _table()
    t["Age"] = t["Age"].astype(str)
    t.loc[0, "Age"] = "old"
    p = tmp_path / "valid.csv"
    t.to_csv(p, index=False)
    with pytest.raises(DataError, match="line 2, column 'Age'"): read_chexpert_csv(p)
    with pytest.raises(DataError, match="file not found"): read_chexpert_csv(tmp_path / "nope.csv")


def test_dataset_skips_bad_images_and_records_them(tmp_path):
    df = make_image_fixtures(tmp_path)
    table = read_chexpert_csv(tmp_path / "CheXpert-v1.0-small" / "train.csv")
    ds = ChexpertImages(table, tmp_path, policy=LabelPolicy("ignore"))
    batch = collate_skipping([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (3, 1, 224, 224) and batch["index"].tolist() == [0, 1, 2]
    assert not batch["mask"][1, CHEXPERT_LABELS.index("Edema")]        # the uncertain Edema is masked
    out = write_skipped(batch["skipped"], tmp_path / "skipped.csv")
    assert pd.read_csv(tmp_path / "skipped.csv")["path"].tolist() == df["Path"].tolist()[3:]
    assert out["reason"].str.len().gt(10).all()
    with pytest.raises(DataError, match="row 3"):
        ChexpertImages(table, tmp_path, strict=True)[3]


def test_sixteen_bit_keeps_precision(tmp_path):
    from PIL import Image
    from medsae.data import MedCLIPTransform, load_image
    a = np.tile(np.arange(0, 65536, 256, dtype=np.uint16), (256, 1))   # a fine horizontal ramp
    Image.fromarray(a).save(tmp_path / "ramp.png")
    im = load_image(tmp_path / "ramp.png")
    assert im.mode == "F" and abs(np.asarray(im).max() - a.max() / 65535) < 1e-6
    x = MedCLIPTransform()(im)
    assert len(np.unique(x.numpy().round(6))) > 200                        # more than 8-bit levels survive


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000), st.lists(st.lists(st.sampled_from([1.0, 0.0, -1.0, np.nan]),
                                                                         min_size=3, max_size=3), min_size=1, max_size=60))
def test_balanced_subset_properties(n, seed, cells):
    labels = ["Edema", "Cardiomegaly", "Fracture"]
    df = pd.DataFrame([{"Path": f"p{i}", **dict(zip(labels, row))} for i, row in enumerate(cells)])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sub = balanced_subset(df, labels, n_per_class=n, seed=seed)
        again = balanced_subset(df, labels, n_per_class=n, seed=seed)
    y, m = label_matrix(sub, labels)
    assert (((y == 1) & m).sum(0) <= n).all() and (((y == 1) & m).sum(1) >= 1).all()
    assert sub.index.tolist() == again.index.tolist()
    # maximal: every skipped image with a positive label would push some class past n
    y_all, _ = label_matrix(df, labels)
    counts = y.sum(0)
    for i in set(range(len(df))) - set(sub.index):
        pos = y_all[i] == 1
        assert not pos.any() or (counts[pos] >= n).any()
