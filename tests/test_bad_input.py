"""Every bad input gets one line and exit status 2, never a traceback (issue 15, point 4).

Hypothesis generates malformed label tables, configs, embedding stores, checkpoints (encoder weights and SAE training
checkpoints) and answer caches; each is fed to the `medsae` command that consumes it, called in this process through
`medsae.cli.main` (the console script's entry point). Each must end with status 2 and exactly one line on stderr that
names the file (and the line, column or field where there is one), no traceback, and nothing of the failed stage that
looks complete: no stage folder under its final name, no provenance. The cases the issue lists are explicit examples.
`test_counts` prints how many examples each class ran and how many tracebacks were seen (0)."""
import collections
import contextlib
import io
import json
import os
import pickle
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings, strategies as st

from tinyrun import make_dataset, make_weights, run_args

TRIED = collections.Counter()                    # examples run per bad-input class
TRACEBACKS = collections.Counter()               # exceptions that escaped main() per class (each is a traceback)
CURRENT = ["other"]

def tried(cls: str):
    CURRENT[0] = cls
    TRIED[cls] += 1
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAMING = ["naming.namers=[enrichment]"]


def cli(*argv, cwd=None):
    "`medsae ARGV` in this process: (status, stdout, stderr). An exception escaping `main` is a traceback: counted, raised."
    from medsae.cli import main
    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    try:
        if cwd: os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try: rc = main([str(a) for a in argv])
            except SystemExit as e: rc = e.code
            except Exception:
                TRACEBACKS[CURRENT[0]] += 1
                raise
    finally: os.chdir(old)
    return rc, out.getvalue(), err.getvalue()


def one_line(result, command, *names):
    "Status 2, one stderr line `medsae COMMAND: error: ...` naming each of `names`, no traceback; returns the line."
    rc, out, err = result
    assert "Traceback" not in err + out, err
    assert rc == 2, (rc, out[-2000:], err)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith(f"medsae {command}: error: "), lines[0]
    for n in names: assert str(n) in lines[0], (str(n), lines[0])
    return lines[0]


def nothing_complete(out_root, *stages):
    "No stage folder of `stages` under its final name and no provenance of it anywhere in the run."
    run = Path(out_root) / "default"
    for s in stages:
        assert not (run / s).exists(), f"{run / s} exists after a failure"
        assert not (run / f"{s}.partial" / "provenance.json").exists()


@pytest.fixture(scope="module", autouse=True)
def quiet(tmp_path_factory):
    "Progress bars off (they write to stderr) and a private hash cache."
    import tqdm.auto
    class Quiet(tqdm.auto.tqdm):
        def __init__(self, *a, **k): super().__init__(*a, **{**k, "disable": True})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tqdm.auto, "tqdm", Quiet)
        mp.setenv("MEDSAE_CACHE", str(tmp_path_factory.mktemp("hashcache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, quiet):
    "A tiny run made once: dataset, weights, and the extract, sae, evaluate and name stages under `base`."
    d = tmp_path_factory.mktemp("bad")
    data, weights = make_dataset(d / "data"), make_weights(d / "w" / "encoder.safetensors")
    base = d / "base"
    for stage in ("extract", "sae", "evaluate", "name"):
        rc, out, err = cli(stage, *run_args(base, data, weights, *NAMING), "--figures", d / "fig")
        assert rc == 0, (stage, out[-1000:], err[-3000:])
    return dict(d=d, data=data, weights=weights, base=base)


def fresh_run(tiny, stages=()):
    "A new out root holding copies of the base run's `stages`; returns its path (a temporary folder)."
    root = Path(tempfile.mkdtemp(dir=tiny["d"]))
    for s in stages: shutil.copytree(tiny["base"] / "default" / s, root / "default" / s)
    return root


def args(tiny, root, *extra):
    return [*run_args(root, tiny["data"], tiny["weights"], *NAMING, *extra), "--figures", root / "figures"]

# ---------------------------------------------------------------------------------------------------------------------
# Label tables


def _bad_value(ok: set):
    return (st.text(alphabet=string.ascii_letters + string.digits + " .-+_/", min_size=1, max_size=8)
            .filter(lambda v: v.strip() and v.strip() not in ok))

def _not_a_number(v: str) -> bool:
    return bool(v.strip()) and bool(pd.isna(pd.to_numeric(pd.Series([v.strip()]), errors="coerce")[0]))

@st.composite
def bad_tables(draw):
    "(file bytes, what the message must name besides the file) of a malformed CheXpert table."
    from medsae.config import CHEXPERT_LABELS
    from medsae.data import META_COLUMNS
    rows = draw(st.integers(1, 12))
    df = pd.DataFrame([{"Path": f"Tiny/train/patient{i:05d}/study1/view1_frontal.png", "Sex": "Male", "Age": "50",
                        "Frontal/Lateral": "Frontal", "AP/PA": "AP", **{c: "" for c in CHEXPERT_LABELS}}
                       for i in range(rows)])
    kind = draw(st.sampled_from(["drop column", "label value", "age", "empty path", "duplicate path", "empty file",
                                 "blank file", "header only", "garbage", "ragged row", "semicolons"]))
    i = draw(st.integers(0, rows - 1))
    if kind == "drop column":
        col = draw(st.sampled_from([*META_COLUMNS, *CHEXPERT_LABELS]))
        return df.drop(columns=[col]).to_csv(index=False).encode(), [col]
    if kind == "label value":
        col = draw(st.sampled_from(CHEXPERT_LABELS))
        df.loc[i, col] = draw(_bad_value({"1", "1.0", "0", "0.0", "-1", "-1.0"}))
        return df.to_csv(index=False).encode(), [f"line {i + 2}", col]
    if kind == "age":
        df.loc[i, "Age"] = draw(_bad_value(set()).filter(_not_a_number))
        return df.to_csv(index=False).encode(), [f"line {i + 2}", "'Age'"]
    if kind == "empty path":
        df.loc[i, "Path"] = draw(st.sampled_from(["", " ", "  "]))
        return df.to_csv(index=False).encode(), [f"line {i + 2}", "'Path'"]
    if kind == "duplicate path":
        if rows == 1: df = pd.concat([df, df], ignore_index=True); i = 1
        j = draw(st.integers(0, len(df) - 1).filter(lambda j: j != i))
        df.loc[max(i, j), "Path"] = df.loc[min(i, j), "Path"]
        return df.to_csv(index=False).encode(), [f"line {max(i, j) + 2}", "'Path'"]
    if kind == "empty file": return b"", ["empty"]
    if kind == "blank file": return draw(st.sampled_from([b"\n", b"\n\n", b"   \n"])), []
    if kind == "header only": return df.head(0).to_csv(index=False).encode(), ["no rows"]
    if kind == "garbage": return draw(st.binary(min_size=1, max_size=200)), []
    if kind == "ragged row":
        text = df.to_csv(index=False).splitlines()
        text[i + 1] += ",extra,cells"
        return ("\n".join(text) + "\n").encode(), []
    return df.to_csv(index=False, sep=";").encode(), ["missing column"]


@settings(max_examples=25, **SETTINGS)
@given(bad_tables(), st.booleans())
@example((b"", ["empty"]), True)                      # the issue: an empty CSV did not name the file
@example((b"Path,Sex,Age,Frontal/Lateral,AP/PA\n", ["missing column"]), False)
def test_bad_tables(tiny, bad, through_stage):
    "A malformed table: `medsae data summary --csv F`, or `medsae extract` on a dataset whose train.csv it is."
    content, names = bad
    tried("label tables")
    root = fresh_run(tiny)
    if not through_stage:
        f = root / "table.csv"
        f.write_bytes(content)
        one_line(cli("data", "summary", "--csv", f, "--out", root / "summary"), "data", f, *names)
        assert not (root / "summary").exists()
        return
    data = root / "data"
    data.mkdir()
    for s in ("valid", "test"): shutil.copy(tiny["data"] / f"{s}.csv", data / f"{s}.csv")
    (data / "train.csv").write_bytes(content)
    res = cli("extract", *run_args(root, data, tiny["weights"], *NAMING), "--figures", root / "figures")
    one_line(res, "extract", data / "train.csv", *names)
    nothing_complete(root, "extract")


def test_header_only_table_fails_with_the_file(tmp_path, tiny):
    "The issue: a header-only table passed with status 0."
    f = tmp_path / "h.csv"
    pd.read_csv(tiny["data"] / "valid.csv").head(0).to_csv(f, index=False)
    one_line(cli("data", "summary", "--csv", f), "data", f, "no rows")
    one_line(cli("data", "split", "--csv", f, "--out", tmp_path / "s.csv"), "data", f)
    assert not (tmp_path / "s.csv").exists()


def test_fractions_without_equals(tmp_path, tiny):
    "The issue: `--fractions train0.8` said 'not enough values to unpack'."
    one_line(cli("data", "split", "--csv", tiny["data"] / "train.csv", "--fractions", "train0.8", "--out",
                 tmp_path / "s.csv"), "data", "'train0.8' is not name=fraction")
    assert not (tmp_path / "s.csv").exists()


def test_relative_data_path_is_not_doubled(tmp_path, tiny):
    "The issue: a relative --data path appeared twice in the message (`mini2/mini2/valid.csv`)."
    (tmp_path / "mini2").mkdir()
    for s in ("train", "test"): shutil.copy(tiny["data"] / f"{s}.csv", tmp_path / "mini2" / f"{s}.csv")
    (tmp_path / "mini2" / "valid.csv").write_text("")
    line = one_line(cli("extract", *run_args("runs", "mini2", tiny["weights"], *NAMING), cwd=tmp_path), "extract",
                    "mini2/valid.csv", "empty")
    assert "mini2/mini2" not in line
    (tmp_path / "mini2" / "valid.csv").unlink()
    line = one_line(cli("extract", *run_args("runs", "mini2", tiny["weights"], *NAMING), cwd=tmp_path), "extract",
                    "'valid' is not a split of mini2")
    assert "mini2/mini2" not in line
    chex = ["--set", "data.dataset=chexpert", "--set", "metrics.split=train"]
    line = one_line(cli("extract", *run_args("runs", "mini2", tiny["weights"], *NAMING), *chex, cwd=tmp_path),
                    "extract", "data.valid_csv: mini2/valid.csv not found")
    assert "mini2/mini2" not in line

# ---------------------------------------------------------------------------------------------------------------------
# Configs


def _fields():
    from medsae.config import Config
    out = {}
    for sec, f in Config.model_fields.items():
        for name, g in f.annotation.model_fields.items(): out[f"{sec}.{name}"] = g
    return out

def _outside(g):
    "A value just outside a field's numeric bounds (None when it has none)."
    for m in g.metadata:
        for attr, step in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
            if getattr(m, attr, None) is not None: return getattr(m, attr) + step
    return None

SKIP = {"run.out_root"}        # the test's own --set run.out_root would repair it

@st.composite
def bad_configs(draw):
    "(YAML text, what the message must name besides the file) of an invalid config file."
    from medsae.config import Config, config_to_dict
    fields = _fields()
    d = config_to_dict(Config())
    kind = draw(st.sampled_from(["unknown key", "wrong type", "out of range", "bad choice", "broken yaml",
                                 "not a mapping", "section scalar"]))
    if kind == "unknown key":
        sec = draw(st.sampled_from([None, *d]))
        key = draw(st.from_regex(r"[a-z][a-z_]{2,10}", fullmatch=True).filter(lambda k: k not in d and f"{sec}.{k}" not in fields))
        if sec is None: return yaml.safe_dump({key: 1}), [key]
        return yaml.safe_dump({sec: {key: 1}}), [f"{sec}.{key}"]
    if kind == "wrong type":
        key = draw(st.sampled_from(sorted(set(fields) - SKIP)))
        value = draw(st.sampled_from([{"a": 1}, [{"a": 1}], "not a number or choice"]))
        ann = str(fields[key].annotation)
        if isinstance(value, str) and ("str" in ann or "Path" in ann): value = {"a": 1}
        sec, name = key.split(".")
        return yaml.safe_dump({sec: {name: value}}), [key]
    if kind == "out of range":
        key = draw(st.sampled_from(sorted(k for k, g in fields.items() if _outside(g) is not None and k not in SKIP)))
        sec, name = key.split(".")
        return yaml.safe_dump({sec: {name: _outside(fields[key])}}), [key]
    if kind == "bad choice":
        key = draw(st.sampled_from(sorted(k for k, g in fields.items() if "Literal" in str(g.annotation))))
        sec, name = key.split(".")
        return yaml.safe_dump({sec: {name: draw(st.from_regex(r"zz[a-z]{1,6}", fullmatch=True))}}), [key]
    if kind == "broken yaml":
        lines = yaml.safe_dump(d, sort_keys=False).splitlines()
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = lines[i] + draw(st.sampled_from([": [unclosed", " {", ": : x", "\n\tbad: tab", " ]", ": '"]))
        text = "\n".join(lines) + "\n"
        try: yaml.safe_load(text)
        except yaml.YAMLError: return text, ["not valid YAML: line"]
        return "sae: {\n", ["not valid YAML: line"]
    if kind == "not a mapping": return draw(st.sampled_from(["- 1\n- 2\n", "3\n", "just text\n"])), ["mapping"]
    sec = draw(st.sampled_from(sorted(d)))
    return yaml.safe_dump({sec: draw(st.sampled_from([3, "x", [1, 2]]))}), [sec]


@settings(max_examples=30, **SETTINGS)
@given(bad_configs(), st.sampled_from(["config", "extract", "sae", "pipeline"]))
@example(("sae:\n  expansion: many\n  l1: -1\n", ["sae.expansion", "sae.l1"]), "config")   # every bad field, one line
def test_bad_configs(tiny, bad, command):
    "An invalid config file given to `medsae config show` or to a stage command (which must start nothing)."
    text, names = bad
    tried("configs")
    root = fresh_run(tiny)
    f = root / "bad.yaml"
    f.write_text(text)
    argv = ["config", "show"] if command == "config" else [command, "--figures", root / "figures"]
    one_line(cli(*argv, "--config", f, "--set", f"run.out_root={root}"), command, f, *names)
    assert not (root / "default").exists() and not (root / "figures").exists()


@pytest.mark.parametrize("override, expect", [("sae", "not of the form key=value"), ("sae.l1=[", "value is not valid YAML"),
                                              ("sae.l1.x=1", "sae.l1"), ("nosuch.key=1", "nosuch"),
                                              ("data.uncertain=maybe", "data.uncertain")])
def test_bad_overrides(override, expect):
    tried("configs")
    one_line(cli("config", "show", "--set", override), "config", expect)

# ---------------------------------------------------------------------------------------------------------------------
# Embedding stores


STORE_DAMAGE = ["truncate embeddings", "pad embeddings", "embeddings float64", "embeddings other shape", "flip a byte",
                "embeddings not npy", "no ok", "ok wrong length", "ok int8", "no store.json", "store.json garbage",
                "store.json rows", "index drop rows", "index garbage", "index no ok column", "index ok flipped",
                "no index", "no embeddings"]

@settings(max_examples=25, **SETTINGS)
@given(st.sampled_from(STORE_DAMAGE), st.data())
def test_bad_stores(tiny, damage, data):
    "A damaged embedding store: `medsae sae` (the first stage that reads it) names the file and trains nothing."
    from medsae.layout import StoreFolder
    root = fresh_run(tiny, ["extract"])
    f = StoreFolder(root / "default" / "extract" / "store")
    n, dim = json.loads(f.meta.read_text())["rows"], json.loads(f.meta.read_text())["dim"]
    draw = data.draw
    size = f.embeddings.stat().st_size
    name = {"store.json": f.meta.name, "ok": f.ok.name, "index": f.index.name}.get(damage.split()[1] if damage.startswith("no ") else "", None)
    if damage == "truncate embeddings":
        os.truncate(f.embeddings, draw(st.integers(0, size - 1))); name = f.embeddings.name
    elif damage == "pad embeddings":
        with open(f.embeddings, "ab") as fh: fh.write(b"\0" * draw(st.integers(1, 64)))
        name = f.embeddings.name
    elif damage == "embeddings float64": np.save(f.embeddings, np.load(f.embeddings).astype(np.float64)); name = f.embeddings.name
    elif damage == "embeddings other shape":
        r, c = draw(st.sampled_from([(n - 1, dim), (n + 1, dim), (n, dim - 1), (dim, n)]))
        np.save(f.embeddings, np.zeros((r, c), np.float32)); name = f.embeddings.name
    elif damage == "flip a byte":
        b = bytearray(f.embeddings.read_bytes())
        i = draw(st.integers(200, len(b) - 1)); b[i] ^= 0xFF
        f.embeddings.write_bytes(bytes(b)); name = f.embeddings.name
    elif damage == "embeddings not npy": f.embeddings.write_bytes(draw(st.binary(min_size=0, max_size=300))); name = f.embeddings.name
    elif damage == "no embeddings": f.embeddings.unlink(); name = f.embeddings.name
    elif damage == "no ok": f.ok.unlink(); name = f.ok.name
    elif damage == "ok wrong length": np.save(f.ok, np.ones(n + draw(st.sampled_from([-1, 1, 5])), bool)); name = f.ok.name
    elif damage == "ok int8": np.save(f.ok, np.load(f.ok).astype(np.int8)); name = f.ok.name
    elif damage == "no store.json": f.meta.unlink(); name = f.meta.name
    elif damage == "store.json garbage": f.meta.write_bytes(draw(st.binary(max_size=100)).replace(b"{", b"")); name = f.meta.name
    elif damage == "store.json rows":
        m = json.loads(f.meta.read_text())
        m["rows"] = n + draw(st.sampled_from([-1, 1, 100]))
        f.meta.write_text(json.dumps(m)); name = "store.json says"
    elif damage == "index drop rows":
        pd.read_csv(f.index).drop(index=draw(st.integers(0, n - 1))).to_csv(f.index, index=False); name = f.index.name
    elif damage == "index garbage": f.index.write_bytes(draw(st.binary(max_size=200))); name = f.index.name
    elif damage == "index no ok column": pd.read_csv(f.index).drop(columns=["ok"]).to_csv(f.index, index=False); name = f.index.name
    elif damage == "index ok flipped":
        idx = pd.read_csv(f.index); k = draw(st.integers(0, n - 1)); idx.loc[k, "ok"] = not idx.loc[k, "ok"]
        idx.to_csv(f.index, index=False); name = f.index.name
    elif damage == "no index": f.index.unlink(); name = f.index.name
    tried("stores")
    res = cli("sae", *args(tiny, root))
    one_line(res, "sae", name)
    nothing_complete(root, "sae")


@pytest.mark.parametrize("damage, name", [("truncate", "embeddings.npy: 20000 bytes, expected"), ("no ok", "ok.npy: missing")])
def test_store_cases_of_the_issue(tiny, damage, name):
    "The issue: a truncated embeddings.npy said 'mmap length is greater than file size'; a store without ok.npy trained."
    tried("stores")
    root = fresh_run(tiny, ["extract"])
    store = root / "default" / "extract" / "store"
    if damage == "truncate": os.truncate(store / "embeddings.npy", 20000)
    else: (store / "ok.npy").unlink()
    line = one_line(cli("sae", *args(tiny, root)), "sae", store / name.split(":")[0], name)
    assert "mmap" not in line
    nothing_complete(root, "sae")

# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints: the encoder's weights, the SAE trainer's checkpoints


ENCODER_DAMAGE = ["random bytes", "truncated", "pickle of objects", "torch.save of a tensor", "wrong keys",
                  "wrong shapes", "empty file", "zip of junk", "json garbage", "json no training", "json missing",
                  "a folder"]

@settings(max_examples=20, **SETTINGS)
@given(st.sampled_from(ENCODER_DAMAGE), st.data())
def test_bad_encoder_weights(tiny, damage, data):
    "A damaged default-encoder checkpoint given to `medsae extract --weights F` names F (or F.json)."
    import torch
    from safetensors.torch import load_file, save_file
    root = fresh_run(tiny)
    w = root / "w" / "encoder.safetensors"
    w.parent.mkdir()
    shutil.copy(tiny["weights"], w); shutil.copy(tiny["weights"].with_suffix(".json"), w.with_suffix(".json"))
    name = w
    if damage == "random bytes": w.write_bytes(data.draw(st.binary(min_size=1, max_size=4000)))
    elif damage == "truncated": os.truncate(w, data.draw(st.integers(0, w.stat().st_size - 1)))
    elif damage == "pickle of objects": w.write_bytes(pickle.dumps({"w": Path("x"), "n": data.draw(st.integers())}))
    elif damage == "torch.save of a tensor": torch.save({"w": torch.zeros(3)}, w)
    elif damage in ("wrong keys", "wrong shapes"):
        sd = load_file(str(w))
        k = data.draw(st.sampled_from(sorted(sd)))
        if damage == "wrong keys": sd[k + ".renamed"] = sd.pop(k)
        else: sd[k] = torch.zeros(*[s + 1 for s in sd[k].shape]) if sd[k].dim() else torch.zeros(2)
        save_file(sd, str(w))
    elif damage == "empty file": w.write_bytes(b"")
    elif damage == "zip of junk":
        import zipfile
        with zipfile.ZipFile(w, "w") as z: z.writestr("pytorch_model.bin", data.draw(st.binary(max_size=100)))
    elif damage == "json garbage": w.with_suffix(".json").write_text("{" + data.draw(st.text(max_size=20))); name = w.with_suffix(".json")
    elif damage == "json no training": w.with_suffix(".json").write_text(json.dumps({"other": 1})); name = w.with_suffix(".json")
    elif damage == "json missing": w.with_suffix(".json").unlink(); name = w.with_suffix(".json")
    elif damage == "a folder": w.unlink(); w.mkdir()
    tried("checkpoints")
    res = cli("extract", *run_args(root, tiny["data"], w, *NAMING), "--figures", root / "figures")
    line = one_line(res, "extract", name)
    assert "weights_only" not in line
    nothing_complete(root, "extract")


def test_weights_not_a_checkpoint_medclip_resnet50(tmp_path, tiny):
    "The issue: a weights file that is not a zip or a checkpoint gave an UnpicklingError advising weights_only=False."
    tried("checkpoints")
    junk = tmp_path / "medclip-pretrained.bin"
    junk.write_bytes(np.random.default_rng(0).bytes(3000))
    res = cli("extract", *run_args(tmp_path, tiny["data"], junk, *NAMING), "--encoder", "medclip-resnet50",
              "--figures", tmp_path / "figures")
    line = one_line(res, "extract", junk)
    assert "weights_only" not in line and "Unpickling" not in line
    nothing_complete(tmp_path, "extract")


SAE_CKPT_DAMAGE = ["sae random bytes", "sae truncated", "optimizer missing", "state garbage", "state no step",
                   "state other data", "another SAE", "optimizer wrong shapes"]

@settings(max_examples=15, **SETTINGS)
@given(st.sampled_from(SAE_CKPT_DAMAGE), st.data())
def test_bad_sae_checkpoints(tiny, damage, data):
    "A damaged training checkpoint in `sae.partial/checkpoints`: `medsae sae` names it and does not train on."
    import torch
    from safetensors.torch import load_file, save_file
    from medsae.layout import CheckpointFolder
    root = fresh_run(tiny, ["extract"])
    ck_src = sorted((tiny["base"] / "default" / "sae" / "checkpoints").glob("ckpt-*"))[-1]
    ck = root / "default" / "sae.partial" / "checkpoints" / "ckpt-0000002"
    shutil.copytree(ck_src, ck)
    f = CheckpointFolder(ck)
    if damage == "sae random bytes": f.model.write_bytes(data.draw(st.binary(max_size=500)))
    elif damage == "sae truncated": os.truncate(f.model, data.draw(st.integers(0, f.model.stat().st_size - 1)))
    elif damage == "optimizer missing": f.optimizer.unlink()
    elif damage == "state garbage": f.state.write_text(data.draw(st.text(max_size=30)).replace("{", "") + "[")
    elif damage == "state no step":
        s = json.loads(f.state.read_text()); s.pop("step"); f.state.write_text(json.dumps(s))
    elif damage == "state other data":
        s = json.loads(f.state.read_text()); s["data_hash"] = "0" * 16; f.state.write_text(json.dumps(s))
    elif damage == "another SAE":
        sd = load_file(str(f.model)); k = data.draw(st.sampled_from(sorted(sd)))
        sd[k] = torch.zeros(*[s + 1 for s in sd[k].shape]) if sd[k].dim() else torch.zeros(2)
        save_file(sd, str(f.model))
    elif damage == "optimizer wrong shapes":
        ot = load_file(str(f.optimizer)); k = data.draw(st.sampled_from(sorted(k for k in ot if ot[k].dim())))
        ot[k] = torch.zeros(3, 3)
        save_file(ot, str(f.optimizer))
    tried("checkpoints")
    one_line(cli("sae", *args(tiny, root)), "sae", ck)
    nothing_complete(root, "sae")

# ---------------------------------------------------------------------------------------------------------------------
# Answer caches


@st.composite
def bad_cache_lines(draw, good: str):
    rec = json.loads(good)
    kind = draw(st.sampled_from(["garbage", "array", "missing fields", "extra field", "unit not a number", "kind not text",
                                 "not utf-8", "number"]))
    if kind == "garbage": return draw(st.text(alphabet=string.printable.replace("\n", "").replace("\r", "").replace("\x0b", "").replace("\x0c", ""), min_size=1, max_size=40).filter(lambda t: t.strip() and not _json_ok(t)))
    if kind == "array": return json.dumps([rec["unit"], rec["namer"]])
    if kind == "missing fields":
        drop = draw(st.sampled_from(["unit", "unit_kind", "namer", "prompt_hash"]))
        return json.dumps({k: v for k, v in rec.items() if k != drop})
    if kind == "extra field": return json.dumps(dict(rec, **{draw(st.from_regex(r"x[a-z]{1,5}", fullmatch=True)): 1}))
    if kind == "unit not a number": return json.dumps(dict(rec, unit=draw(st.sampled_from(["one", "", "1.5x"]))))
    if kind == "kind not text": return json.dumps(dict(rec, unit_kind=draw(st.sampled_from([1, None, [1]]))))
    if kind == "not utf-8": return b"\xff\xfe garbage".decode("latin-1")
    return draw(st.integers().map(str))

def _json_ok(t):
    try: json.loads(t); return True
    except ValueError: return False


@settings(max_examples=15, **SETTINGS)
@given(st.data())
def test_bad_answer_caches(tiny, data):
    "A line of runs/<name>/cache/names.jsonl that is not an answer (not the torn last one): `medsae name` names the line."
    root = fresh_run(tiny, ["extract", "sae", "activations", "evaluate", "cache"])
    cache = root / "default" / "cache" / "names.jsonl"
    lines = cache.read_text().splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    bad = data.draw(bad_cache_lines(lines[0]))
    lines.insert(i, bad)
    raw = ("\n".join(lines) + "\n").encode("latin-1" if "\xff" in bad else "utf-8")
    cache.write_bytes(raw)
    tried("answer caches")
    line = one_line(cli("name", *args(tiny, root)), "name", cache)
    assert "\xff" in bad or f"line {i + 1}" in line, line
    nothing_complete(root, "name")


def test_torn_last_cache_line_is_survived(tiny):
    "A crash mid-write leaves a torn last line: the next run drops it, asks that unit again, and names as before."
    root = fresh_run(tiny, ["extract", "sae", "activations", "evaluate", "cache"])
    cache = root / "default" / "cache" / "names.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    rc, out, err = cli("name", *args(tiny, root))
    assert rc == 0, err[-2000:]
    got = pd.read_csv(root / "default" / "name" / "names.csv")
    want = pd.read_csv(tiny["base"] / "default" / "name" / "names.csv")
    pd.testing.assert_frame_equal(got, want)
    from medsae.naming import NameResult
    keys = lambda ls: sorted(NameResult(**json.loads(l)).key for l in ls)
    after = cache.read_text().splitlines()
    assert len(after) == len(lines) and keys(after) == keys(lines)        # each answer once, the torn one asked again

# ---------------------------------------------------------------------------------------------------------------------
# The remaining cases of the issue


def test_strict_failure_in_a_loading_worker_names_the_image(tiny):
    "The issue: `--set data.strict=true` hid the cause behind 'Caught DataError in DataLoader worker process 0'."
    tried("label tables")
    root = fresh_run(tiny)
    data = root / "data"
    shutil.copytree(tiny["data"], data)
    bad = pd.read_csv(data / "train.csv")["Path"][3]
    (data / bad).write_bytes(b"not a png")
    res = cli("extract", *run_args(root, data, tiny["weights"], *NAMING, "data.strict=true", "encoder.workers=1"),
              "--figures", root / "figures")
    line = one_line(res, "extract", bad, "unreadable image")
    assert "DataLoader" not in line and "Caught" not in line
    nothing_complete(root, "extract")


def test_failed_train_leaves_no_result_folders(tiny):
    "The issue: a failed `train` left empty output folders. Only `sae.partial/FAILED` (the traceback) remains."
    root = fresh_run(tiny, ["extract"])
    os.truncate(root / "default" / "extract" / "store" / "embeddings.npy", 1000)
    one_line(cli("train", *args(tiny, root)), "train", "embeddings.npy")
    assert sorted(p.name for p in (root / "default").iterdir()) == ["extract", "sae.partial"]
    assert [p.name for p in (root / "default" / "sae.partial").iterdir()] == ["FAILED"]
    assert not (root / "figures").exists()


def test_unknown_split_fails_before_any_work(tiny):
    "The issue: `evaluate --split nosuch` computed every code before it failed."
    root = fresh_run(tiny, ["extract", "sae"])
    one_line(cli("evaluate", *args(tiny, root), "--split", "nosuch"), "evaluate", "metrics.split", "'nosuch'")
    assert sorted(p.name for p in (root / "default").iterdir()) == ["extract", "sae"]


def test_counts(capsys):
    "The table of the issue: bad-input classes tried (examples each) and tracebacks seen (must be 0)."
    classes = ("label tables", "configs", "stores", "checkpoints", "answer caches")
    with capsys.disabled():
        print("\n| bad-input class | examples | tracebacks |\n|---|---|---|")
        for k in classes: print(f"| {k} | {TRIED[k]} | {TRACEBACKS[k]} |")
    assert sum(TRACEBACKS.values()) == 0, TRACEBACKS
    assert all(TRIED[k] >= 10 for k in classes), TRIED
