"""Naming: the VLM namer and judge end to end (tiny Gemma 3 offline, a real local HTTP server), the cache, robust
parsing of answers, the offline namers and the naming-evaluation scores."""
import http.server
import json
import threading

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from medsae.naming import (EnrichmentNamer, NameCache, NamingItem, VLMNamer, VocabularyNamer, name_units,
                           naming_items, paper_examples)
from medsae.naming_eval import TextJudge, VLMJudge, score_names, summarise_scores
from medsae.vlm import OpenAIVLM, TransformersVLM, VLMResult, tiny_gemma3


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(80):
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(root / f"img{i:03d}.png")
    index = pd.DataFrame({"Path": [f"img{i:03d}.png" for i in range(80)]})
    codes = sp.csr_matrix(np.where(rng.random((80, 6)) < 0.5, rng.exponential(1, (80, 6)), 0))
    return root, index, codes


class Canned:
    "A VLMBackend that answers from a list and counts its calls."
    def __init__(self, answers): self.answers, self.calls, self.name = list(answers), 0, "canned"
    def generate(self, requests, progress=False):
        out = []
        for r in requests:
            self.calls += 1
            a = self.answers[(self.calls - 1) % len(self.answers)]
            out.append(VLMResult(text=a, error=None, seconds=0.01, backend=self.name))
        return out


def test_vlm_namer_parses_fenced_json_and_records_failures(images, tmp_path):
    root, index, codes = images
    items = naming_items(codes, index, root, [0, 1, 2], n=6, seed=0)
    assert all(len(it.paths) == 6 and it.image_ids[0].startswith("img") for it in items)
    be = Canned(['Sure!\n```json\n{"concept": "left lower lobe consolidation", "description": "Dense opacity."}\n```',
                 'I cannot tell.', '{"concept": "a"} then {"concept": "pleural effusion with meniscus", "description": "x"}'])
    res = name_units(VLMNamer(be), items, tmp_path / "c.jsonl", batch=2, progress=False)
    assert [r.ok for r in res] == [True, False, True]
    assert res[0].concept == "left lower lobe consolidation" and res[2].concept == "pleural effusion with meniscus"
    assert res[1].error and res[1].raw == "I cannot tell."                       # failure recorded, no crash
    assert "expert radiologist" in res[0].prompt and res[0].image_ids == items[0].image_ids
    again = name_units(VLMNamer(be), items, tmp_path / "c.jsonl", progress=False)  # cached: no new call
    assert be.calls == 3 and [r.concept for r in again] == [r.concept for r in res]
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["raw"].startswith("Sure!")


def test_medgemma_path_end_to_end_with_tiny_gemma3(images, tmp_path):
    root, index, codes = images
    vlm = TransformersVLM(tiny_gemma3(tmp_path / "tiny"), max_new_tokens=8, batch_size=2, local_files_only=True)
    items = naming_items(codes, index, root, [0, 3], n=4, seed=1)
    res = name_units(VLMNamer(vlm), items, tmp_path / "names.jsonl", progress=False)
    assert len(res) == 2 and all(r.raw is not None and r.seconds > 0 for r in res)
    assert all(r.ok == bool(r.concept) for r in res)            # a random model: parsed or recorded as a failure
    judge = VLMJudge(vlm, images_per_prompt=3)
    pred = judge.judge("effusion", "fluid", np.arange(7), items[0].paths[:4] + items[1].paths[:3], n_pos=3)
    assert pred.shape == (7,) and set(pred.tolist()) <= {-1, 0, 1}


class _Server(http.server.BaseHTTPRequestHandler):
    answers: list = []
    bodies: list = []
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        text = type(self).answers[(len(type(self).bodies) - 1) % len(type(self).answers)]
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
    def log_message(self, *a): pass


def test_server_namer_and_judge_against_local_http_server(images, tmp_path, monkeypatch):
    root, index, codes = images
    _Server.answers = ['{"concept": "pacemaker with leads", "description": "A device in the left chest."}',
                       "[1, 0, 1, 0, 1]", "Image 1: yes, image 2: no, image 3: yes, image 4: no, image 5: no"]
    _Server.bodies = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TEST_KEY", "sk-secret")
        be = OpenAIVLM(f"http://127.0.0.1:{srv.server_port}/v1", "medgemma", api_key_env="TEST_KEY", concurrency=1)
        item = naming_items(codes, index, root, [2], n=6, seed=0)
        r = name_units(VLMNamer(be), item, tmp_path / "n.jsonl", progress=False)[0]
        assert r.ok and r.concept == "pacemaker with leads"
        content = _Server.bodies[0]["messages"][1]["content"]
        assert sum(p["type"] == "image_url" for p in content) == 6 and "single concept" in content[-1]["text"]
        pred = VLMJudge(be, images_per_prompt=5).judge(r.concept, r.description, np.arange(10), item[0].paths[:5] * 2, 5)
        assert pred.tolist() == [1, 0, 1, 0, 1, 1, 0, 1, 0, 0]
        assert "sk-secret" not in json.dumps(r.__dict__) and "sk-secret" not in repr(be)
    finally:
        srv.shutdown()


def test_offline_namers_and_scores_on_a_planted_space(tmp_path):
    "A space where latent k fires on concept k's images and its decoder direction is concept k's text embedding."
    rng = np.random.default_rng(0)
    N, D, K = 400, 24, 4
    concepts = ["edema", "pleural effusion", "cardiomegaly", "pneumothorax"]
    text = {c: rng.normal(size=D) for c in concepts}
    lab = rng.integers(0, K, N)
    emb = np.stack([text[concepts[k]] for k in lab]) + 0.7 * rng.normal(size=(N, D))
    codes = sp.csr_matrix(np.column_stack([(lab == k) * rng.uniform(1, 2, N) for k in range(K)]))
    dirs = np.stack([text[c] for c in concepts])
    te = lambda t: np.stack([text[x] for x in t])
    items = [NamingItem(k, n_active=int((lab == k).sum())) for k in range(K)]
    voc = VocabularyNamer(dirs, concepts, te(concepts), center=False)
    assert [r.concept for r in voc.name_units(items)] == concepts
    att = pd.DataFrame({c: lab == k for k, c in enumerate(concepts)})
    enr = EnrichmentNamer(codes, att, n_top=50)
    assert [r.concept for r in enr.name_units(items)] == concepts
    names = pd.DataFrame({"unit_kind": "sae", "unit": range(K), "namer": "vocabulary", "concept": concepts,
                          "description": "", "ok": True})
    index = pd.DataFrame({"Path": [f"i{i}.png" for i in range(N)]})
    sc = score_names(names, codes, emb, index, tmp_path, TextJudge(te, emb), seed=0, cache=NameCache(tmp_path / "j.jsonl"),
                     progress=False)
    s = summarise_scores(sc).set_index("unit_kind")
    assert s.loc["sae", "accuracy"] >= 0.9 and s.loc["random", "accuracy"] <= 0.6
    assert len((tmp_path / "j.jsonl").read_text().splitlines()) == len(sc)     # judgements cached


def test_example_selection_needs_activating_images():
    assert len(paper_examples(np.zeros(100), 30)) == 0
    v = np.r_[np.zeros(10), np.arange(1, 91)]
    assert len(paper_examples(v, 30)) == 30 and (v[paper_examples(v, 30)] > 0).all()
