"The `medsae` console script, end to end, as a user calls it."
import json

import pandas as pd
import pytest

from conftest import ROOT, run_cli
from medsae.data import make_image_fixtures


def test_help_documents_every_subcommand():
    out = run_cli("--help").stdout
    from medsae.stages import COMMANDS
    for cmd in ("config", "assets", "data", "reproduce", "pipeline", *COMMANDS): assert cmd in out
    for action in ("summary", "subset", "split", "check"):
        h = run_cli("data", action, "--help").stdout
        assert "--config" in h and "--set" in h and "--uncertain" in h


def test_config_show_applies_overrides_and_rejects_bad_fields():
    out = run_cli("config", "show", "--config", "configs/paper.yaml", "--set", "sae.l1=1e-4").stdout
    assert "l1: 0.0001" in out and "medgemma" in out
    r = run_cli("config", "show", "--set", "data.uncertian=u_ones", check=False)
    assert r.returncode == 2 and "data.uncertian" in r.stderr


def test_data_summary_writes_tables_and_subsets(tmp_path, chexpert_train):
    from medsae.layout import LabelsFolder
    out = run_cli("data", "summary", "--csv", chexpert_train, "--uncertain", "ignore", "--labels", "Edema,Cardiomegaly",
                  "--seed", "4", "--out", tmp_path / "sum").stdout
    assert "'uncertain': 'ignore'" in out
    d = LabelsFolder(tmp_path / "sum")
    counts = pd.read_csv(d.counts, index_col=0)
    assert list(counts.index) == ["Edema", "Cardiomegaly"]
    sub = pd.read_csv(d.balanced(2, 200))
    assert (sub["Edema"] == 1).sum() == 200 and (sub["Cardiomegaly"] == 1).sum() == 200
    assert d.counts_figure.exists()


def test_subset_split_and_check(tmp_path, chexpert_train):
    run_cli("data", "subset", "--csv", chexpert_train, "--kind", "5x200", "--out", tmp_path / "s.csv")
    assert len(pd.read_csv(tmp_path / "s.csv")) == 1000
    run_cli("data", "split", "--csv", chexpert_train, "--fractions", "a=0.5,b=0.5", "--out", tmp_path / "sp.csv")
    sp = pd.read_csv(tmp_path / "sp.csv")
    assert set(sp["split"]) == {"a", "b"}
    make_image_fixtures(tmp_path / "img")
    csv = tmp_path / "img" / "CheXpert-v1.0-small" / "train.csv"
    out = run_cli("data", "check", "--csv", csv, "--root", tmp_path / "img", "--out", tmp_path / "skipped.csv").stdout
    assert "3 images ok, 2 skipped" in out
    assert len(pd.read_csv(tmp_path / "skipped.csv")) == 2
    r = run_cli("data", "check", "--csv", csv, "--root", tmp_path / "img", "--strict", check=False)
    assert r.returncode == 2 and "row 3" in r.stderr


def test_bad_table_fails_with_the_column_named(tmp_path, chexpert_train):
    df = pd.read_csv(chexpert_train, nrows=20).drop(columns=["Fracture"])
    df.to_csv(tmp_path / "bad.csv", index=False)
    r = run_cli("data", "summary", "--csv", tmp_path / "bad.csv", "--out", tmp_path / "sum", check=False)
    assert r.returncode == 2 and "Fracture" in r.stderr and "bad.csv" in r.stderr
    assert not (tmp_path / "sum").exists()                         # nothing partial looks complete
