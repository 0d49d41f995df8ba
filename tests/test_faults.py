"""Faults survived, measured (issue 15, point 5).

A tiny run is made once without interruption. Then each of extraction, SAE training, naming and the Papermill
pipeline (its SAE and evaluate notebooks) is started again from the same upstream results and SIGKILLed, with every
process it started, at seeded random times, KILLS times in a row, each attempt resuming what the one before left;
a last attempt runs to the end. The results must equal the uninterrupted run's: embeddings bit for bit with every row
once, SAE weights and checkpoints, the names with each unit once in the answer cache, the metrics tables and codes.
Naming asks a chat-completions server on 127.0.0.1 (a deterministic stand-in for a VLM, 40 ms an answer) besides the
offline enrichment namer, so that answers arrive one batch at a time, as with MedGemma.

A kill time is a seeded offset from the moment the attempt's work shows (extraction, pipeline: its stage folder
exists; SAE: a new checkpoint; naming: a new answer), drawn in the stage's work window read from the uninterrupted
run's files and shrunk to the share of the work still to do, so that most kills land mid-work whatever the imports and
the machine's load cost. Where a kill lands still depends on the machine's speed; the verdict does not: a kill that
lands after the attempt ended is a kill survived too. Each kill is classified by what it left on disk, and
`test_table` prints the counts.

The calls are forked from a zygote that imported torch, pandas, Papermill and medsae once (`tinyrun.Zygote`): each
attempt is its own process, killed like any job, without paying the imports again."""
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tinyrun import Zygote, make_dataset, make_weights, run_args

KILLS = 3
SEED = 15
SET = ["encoder.batch_size=8", "sae.expansion=1", "sae.epochs=120", "sae.checkpoint_every=24",
       "naming.namers=[enrichment, openai]", "naming.max_latents=40", "naming.batch_size=4", "naming.concurrency=1",
       "naming.retries=0"]
"""The tiny run of tinyrun, with 4 extraction commits (chunks of 64 rows), 240 SAE steps with a checkpoint every 24,
and 40 latents named by the server, cached 4 at a time."""
RESULTS: dict[str, dict] = {}


class VLMServer:
    "A chat-completions server whose answer is a function of the request (images and text): a deterministic VLM."
    def __init__(self, delay: float = 0.04):
        import hashlib
        import http.server
        import threading
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                h = hashlib.sha256(json.dumps(json.loads(body)["messages"], sort_keys=True).encode()).hexdigest()
                time.sleep(delay)
                answer = json.dumps({"concept": f"concept {h[:6]}", "description": f"images of {h[:12]}"})
                out = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(out)))
                self.end_headers(); self.wfile.write(out)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()

    def close(self): self.httpd.shutdown(); self.httpd.server_close()


def anchored(job, begun) -> float:
    "Wait until `begun()` (the attempt's work has begun) or the job ended; returns that moment (time.time())."
    while not begun() and not job.done and job.alive(): time.sleep(0.02)
    return time.time()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The uninterrupted run (extract, labels, sae, evaluate, name, timed), the kill windows read from its files, the
    VLM server and the zygote the attempts are forked from."""
    d = tmp_path_factory.mktemp("faults")
    data, weights = make_dataset(d / "data"), make_weights(d / "w" / "encoder.safetensors")
    server = VLMServer()
    t0 = time.monotonic()
    z = Zygote()
    z.run(["--version"], d / "logs")                   # the zygote has imported everything: times are the stages'
    times, begun = {"imports": time.monotonic() - t0}, {}
    clean = d / "clean"
    extra = [f"naming.base_url={server.url}"]
    C = clean / "default"
    marks = dict(sae=C / "sae.partial" / "checkpoints", name=C / "cache" / "names.jsonl")   # the first checkpoint, answer
    for stage in ("extract", "labels", "sae", "evaluate", "name"):
        t0 = time.monotonic()
        j = z.start([stage, *argv(clean, data, weights, extra)], d / "logs")
        begun[stage] = anchored(j, marks.get(stage, C / f"{stage}.partial").exists)
        j.wait(600)
        times[stage] = time.monotonic() - t0
        assert j.rc == 0, j.log.read_text()[-3000:]
        times[stage + " work"] = time.time() - begun[stage]
    t0 = time.monotonic()                              # the pipeline finds them up to date: its own overhead
    j = z.run(["pipeline", "--only", "05", "--only", "06", *argv(clean, data, weights, extra)], d / "logs")
    times["pipeline overhead"] = time.monotonic() - t0
    assert j.rc == 0 and "[evaluate] up to date" in _notebook_text(clean, "06_evaluate"), j.log.read_text()[-3000:]
    # The work windows, in seconds from the work's first sign, read from the uninterrupted run's files: extraction
    # from its stage folder to the end; the SAE from its first checkpoint to its last; naming from its first answer to
    # its last; the pipeline from the SAE notebook's stage folder, its two stages and the evaluate kernel's imports.
    last_ck = max(p.stat().st_mtime for p in (C / "sae" / "checkpoints").glob("ckpt-*[0-9]")) - begun["sae"]
    answered = (C / "cache" / "names.jsonl").stat().st_mtime - begun["name"]
    pipeline = times["sae work"] + times["evaluate work"] + times["imports"] / 2
    windows = dict(extract=(0.0, times["extract work"]), sae=(0.0, last_ck), name=(0.0, answered), pipeline=(0.0, pipeline))
    yield dict(d=d, data=data, weights=weights, clean=clean / "default", times=times, windows=windows, z=z, extra=extra)
    z.close()
    server.close()


def argv(out_root, data, weights, extra):
    return [*run_args(out_root, data, weights, *SET, *extra), "--figures", Path(out_root) / "figures"]


def _notebook_text(out_root, name):
    nb = json.loads((Path(out_root) / "default" / "notebooks" / f"{name}.ipynb").read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


def start_from(run, stages, name) -> Path:
    "A new out root holding copies of the uninterrupted run's `stages`."
    root = run["d"] / name
    for s in stages: shutil.copytree(run["clean"] / s, root / "default" / s)
    return root


def kill_loop(run, args, name, begins, where, left) -> dict:
    """KILLS attempts, each SIGKILLed (with its children) at a seeded offset from the moment its work begins
    (`begins()`, called before the attempt starts, returns the test of that), in the stage's work window shrunk to the
    fraction of the work still to do (`left()`, read from disk), each resuming what the last left; then one attempt to
    the end. `where()` says what a kill left. Returns the counts."""
    rng = random.Random(f"{SEED}-{name}")
    landed, logs = [], run["d"] / "logs" / name
    for k in range(KILLS):
        lo, hi = run["windows"][name]
        t = lo + rng.random() * (hi - lo) * max(left(), 0.05)
        begun = begins()
        job = run["z"].start(args, logs)
        t += anchored(job, begun) - time.time()
        if job.wait(timeout=600, until=max(t, 0.0)) or not job.kill():
            assert job.rc == 0, job.log.read_text()[-3000:]
            landed.append("after the end")
        else: landed.append(where())
    job = run["z"].run(args, logs)
    assert job.rc == 0, job.log.read_text()[-3000:]
    return dict(kills=KILLS, landed=landed, resumed=KILLS, finished=job.rc == 0)


def test_extraction_survives_kills(run):
    from medsae.extract import EmbeddingStore
    root = start_from(run, [], "extract")
    part = root / "default" / "extract.partial" / "store"
    def rows():
        p = part / "progress-0-of-1.json"
        return 240 if (root / "default" / "extract").exists() else json.loads(p.read_text())["rows_done"] if p.exists() else 0
    def where():
        if (root / "default" / "extract").exists(): return "complete, before the kill"
        if not (part / "store.json").exists(): return "before the store"
        return f"{rows()} of 240 rows committed" if not EmbeddingStore(part).complete else "store done, stage not"
    rec = kill_loop(run, ["extract", *argv(root, run["data"], run["weights"], run["extra"])], "extract",
                    lambda: (root / "default" / "extract.partial").exists, where, lambda: 1 - rows() / 240)
    a, b = EmbeddingStore(run["clean"] / "extract" / "store"), EmbeddingStore(root / "default" / "extract" / "store")
    ia, ib = a.index(), b.index()
    same = (np.array_equal(a.embeddings(), b.embeddings())                      # bit for bit
            and (a.files.embeddings.read_bytes() == b.files.embeddings.read_bytes()) and ia.equals(ib)
            and np.array_equal(a.ok(), b.ok()))
    assert ib["Path"].is_unique and len(ib) == 240 and ib["row"].tolist() == list(range(240))   # every row once
    assert ib["ok"].all() and b.meta["skipped"] == 0                                              # nothing lost
    assert same
    RESULTS["extraction"] = dict(rec, identical=same)


def test_sae_training_survives_kills(run):
    import torch
    from safetensors.torch import load_file
    root = start_from(run, ["extract"], "sae")
    part = root / "default" / "sae.partial"
    def step():
        if (root / "default" / "sae").exists(): return 240
        cks = sorted((part / "checkpoints").glob("ckpt-*[0-9]")) if part.exists() else []
        return int(cks[-1].name.split("-")[1]) if cks else 0
    def where():
        if (root / "default" / "sae").exists(): return "complete, before the kill"
        if not step(): return "before the first checkpoint"
        return f"after step {step()} of 240" if step() < 240 else "trained, exporting"
    rec = kill_loop(run, ["sae", *argv(root, run["data"], run["weights"], run["extra"])], "sae",
                    lambda: (lambda s0=step(): step() > s0), where, lambda: 1 - step() / 240)
    A, B = run["clean"] / "sae", root / "default" / "sae"
    wa, wb = load_file(str(A / "saelens" / "sae_weights.safetensors")), load_file(str(B / "saelens" / "sae_weights.safetensors"))
    same = sorted(wa) == sorted(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
    for ck in ("sae.safetensors", "optimizer.safetensors"):                 # the final checkpoint, optimizer included
        ca, cb = (load_file(str(sorted((x / "checkpoints").glob("ckpt-*[0-9]"))[-1] / ck)) for x in (A, B))
        same &= sorted(ca) == sorted(cb) and all(torch.equal(ca[k], cb[k]) for k in ca)
    la, lb = (pd.read_csv(x / "training_log.csv").drop(columns=["samples_per_s", "system_s", "minor_faults"]) for x in (A, B))
    same &= la.equals(lb)
    assert lb["step"].is_unique and lb["step"].is_monotonic_increasing                 # no step logged twice
    sa, sb = (json.loads((x / "summary.json").read_text())["valid"] for x in (A, B))
    same &= sa == sb
    assert same
    RESULTS["SAE training"] = dict(rec, identical=same)


def test_naming_survives_kills(run):
    from medsae.layout import NamesFolder
    from medsae.naming import NameResult
    root = start_from(run, ["extract", "sae", "activations", "evaluate"], "name")
    cache = root / "default" / "cache" / "names.jsonl"
    total = len((run["clean"] / "cache" / "names.jsonl").read_text().splitlines())   # latents and raw dimensions
    def answers(): return len(cache.read_text().splitlines()) if cache.exists() else 0
    def where():
        if (root / "default" / "name").exists(): return "complete, before the kill"
        return f"{answers()} of {total} answers cached" if answers() else "no answer cached"
    rec = kill_loop(run, ["name", *argv(root, run["data"], run["weights"], run["extra"])], "name",
                    lambda: (lambda n0=answers(): answers() > n0), where, lambda: 1 - answers() / total)
    na, nb = (pd.read_csv(x / "name" / "names.csv") for x in (run["clean"], root / "default"))
    lines = cache.read_text().splitlines()
    keys = [NameResult(**json.loads(l)).key for l in lines]                  # every line an answer: none torn
    want = [NameResult(**json.loads(l)).key for l in (run["clean"] / "cache" / "names.jsonl").read_text().splitlines()]
    assert len(set(keys)) == len(keys) and sorted(keys) == sorted(want)      # each unit once, none lost
    same = na.equals(nb)
    ta, tb = (pd.read_csv(NamesFolder(x / "name").named) for x in (run["clean"], root / "default"))
    same &= ta.equals(tb)
    assert same
    RESULTS["naming"] = dict(rec, identical=same)


def test_pipeline_survives_kills(run):
    "`medsae pipeline --only 05 --only 06` (Papermill: the SAE and evaluate notebooks, one kernel each)."
    root = start_from(run, ["extract", "labels"], "pipeline")
    L = root / "default"
    def where():
        done = [s for s in ("sae", "activations", "evaluate") if (L / s).exists()]
        part = [s for s in ("sae", "activations", "evaluate") if (L / f"{s}.partial").exists()]
        if len(done) == 3: return "complete, before the kill"
        return f"done: {', '.join(done) or '-'}; begun: {', '.join(part) or '-'}"
    rec = kill_loop(run, ["pipeline", "--only", "05", "--only", "06", *argv(root, run["data"], run["weights"], run["extra"])],
                    "pipeline", lambda: (L / "sae.partial").exists, where,
                    lambda: 1 - sum(0.5 for s in ("sae", "evaluate") if (L / s).exists()))
    A, B = run["clean"], L
    same = True
    for f in ("monosemanticity.csv", "monosemanticity_full.csv", "best_units.csv", "bootstrap.csv", "null.csv",
              "summary.json"):
        same &= (A / "evaluate" / f).read_bytes() == (B / "evaluate" / f).read_bytes()
    for split in ("train", "valid", "test"):
        ca, cb = (np.load(x / "activations" / split / "codes.npz") for x in (A, B))
        same &= sorted(ca.files) == sorted(cb.files) and all(np.array_equal(ca[k], cb[k]) for k in ca.files)
    same &= (A / "sae" / "saelens" / "sae_weights.safetensors").read_bytes() == (B / "sae" / "saelens" / "sae_weights.safetensors").read_bytes()
    assert "[evaluate]" in _notebook_text(root, "06_evaluate")                # the executed notebook is there
    assert same
    RESULTS["Papermill pipeline"] = dict(rec, identical=same)


def test_table(run, capsys):
    "The counts of the issue: per stage, kills, where they landed, resumes, results identical to the uninterrupted run."
    with capsys.disabled():
        print("\nuninterrupted (s): " + ", ".join(f"{k} {v:.1f}" for k, v in run["times"].items()))
        print("kill windows (s): " + ", ".join(f"{k} {a:.1f}-{b:.1f}" for k, (a, b) in run["windows"].items()))
        print("| stage | kills | landed | resumed | identical |\n|---|---|---|---|---|")
        for k, r in RESULTS.items():
            print(f"| {k} | {r['kills']} | {'; '.join(r['landed'])} | {r['resumed']} | {'yes' if r['identical'] else 'NO'} |")
    assert len(RESULTS) == 4 and all(r["identical"] and r["finished"] for r in RESULTS.values())
