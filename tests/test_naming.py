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
    tj = TextJudge(te, emb)
    class Refuse:                                                               # a rerun asks the judge nothing
        name, prompt_hash = tj.name, tj.prompt_hash
        def judge(self, *a): raise AssertionError("judge called for a cached judgement")
    again = score_names(names, codes, emb, index, tmp_path, Refuse(), seed=0, cache=NameCache(tmp_path / "j.jsonl"),
                        progress=False)
    pd.testing.assert_frame_equal(sc, again)


def test_example_selection_needs_activating_images():
    assert len(paper_examples(np.zeros(100), 30)) == 0
    v = np.r_[np.zeros(10), np.arange(1, 91)]
    assert len(paper_examples(v, 30)) == 30 and (v[paper_examples(v, 30)] > 0).all()


# ---------------------------------------------------------------------------------------------------------------
# naming.protocol: heldout (ours) and published (the published scripts' choices)
# ---------------------------------------------------------------------------------------------------------------

# The openings and closings of the published prompts, typed here from src/assign_names_VLM.py and src/naming_eval.py
# of EIDOSLAB/medsae (not read from medsae's constants).
NAMER_OPENING = ("\nBelow I provide you with a sequence of chest X-ray images. Your task is to identify and describe the "
                 "shared concept among these images.")
NAMER_MIDDLE = "Be as specific as possible\u2014it is fine if it doesn\u2019t fit all images. Please be precise and creative."
NAMER_CLOSING = ('{"concept": "main concept summary", "description": "longer description of the shared concept"}. '
                 "The images follow now.\n")
JUDGE_OPENING = ('\n    You will receive a specific concept and a description, such as "Pulmonary edema and pleural '
                 'effusions in a patient with a central line" or "Technical Artifacts and/or Equipment-Related Anomalies."'
                 "\n    Following this, you will be presented with multiple image examples.\n")
JUDGE_CLOSING = "\n\n    Concept: {c}\n    Description: {d}\n    Image examples:\n    "


class Recording(Canned):
    "A Canned backend that keeps the requests it was sent."
    def __init__(self, answers):
        super().__init__(answers)
        self.requests = []
    def generate(self, requests, progress=False):
        self.requests += list(requests)
        return super().generate(requests, progress)


def test_published_prompts_are_verbatim_and_come_before_the_images(images, tmp_path):
    from medsae.naming import vlm_namer
    from medsae.naming_eval import vlm_judge
    from medsae.vlm import chat_messages, openai_messages
    root, index, codes = images
    items = naming_items(codes, index, root, [0], n=6, seed=0, selection="published")
    be = Recording(['{"concept": "effusion", "description": "fluid"}'])
    r = name_units(vlm_namer(be, "published"), items, tmp_path / "n.jsonl", progress=False)[0]
    req = be.requests[0]
    for content in (chat_messages(req)[1]["content"], openai_messages(req)[1]["content"]):
        assert content[0]["type"] == "text" and len(content) == 7 and all(p["type"] != "text" for p in content[1:])
        text = content[0]["text"]
        assert text.startswith(NAMER_OPENING) and NAMER_MIDDLE in text and text.endswith(NAMER_CLOSING)
    assert chat_messages(req)[0]["content"][0]["text"] == "You are an expert radiologist."
    assert r.ok and r.prompt.startswith("[system] You are an expert radiologist.\n[user] " + NAMER_OPENING)
    ours = Recording(['{"concept": "effusion"}'])
    name_units(vlm_namer(ours), items, tmp_path / "o.jsonl", progress=False)
    assert chat_messages(ours.requests[0])[1]["content"][-1]["type"] == "text"          # ours: images first
    jb = Recording(["[1, 0, 1, 0, 1]", "[0, 1]"])
    pred = vlm_judge(jb, "published", 5).judge("effusion", "fluid", np.arange(7), items[0].paths + items[0].paths[:1], 5)
    assert pred.tolist() == [1, 0, 1, 0, 1, 0, 1]
    for q in jb.requests:
        content = chat_messages(q)[1]["content"]
        assert content[0]["type"] == "text" and [p["type"] for p in content[1:]] == ["image"] * len(q.images)
        assert content[0]["text"].startswith(JUDGE_OPENING)
        assert content[0]["text"].endswith(JUDGE_CLOSING.format(c="effusion", d="fluid"))
        assert "formatted strictly as a valid Python list of length 5.\n" in content[0]["text"]   # 5, as published
    assert chat_messages(jb.requests[0])[0]["content"][0]["text"] == "Act as a precise and analytical radiologist.\n"


def test_published_candidates_are_a_latents_top_100(images, tmp_path):
    "500 activating images: the top two thirds would reach rank 334; the published script shows ranks 1-15 and 86-100."
    rng = np.random.default_rng(3)
    v = np.r_[np.zeros(100), rng.permutation(np.linspace(1, 50, 500))]
    codes = sp.csr_matrix(np.column_stack([v, v[::-1]]))
    index = pd.DataFrame({"Path": [f"i{i}.png" for i in range(len(v))]})
    rank = {f"i{i}.png": r for i, r in enumerate(np.argsort(np.argsort(-v)))}
    shown = set()
    for seed in range(5):
        it = naming_items(codes, index, tmp_path, [0], n=30, seed=seed, selection="published")[0]
        ranks = sorted(rank[p] for p in it.image_ids)
        assert ranks == list(range(15)) + list(range(85, 100)), ranks
        shown |= set(ranks)
    assert max(shown) < 100
    ours = naming_items(codes, index, tmp_path, [0], n=30, seed=0, selection="paper")[0]
    assert max(rank[p] for p in ours.image_ids) == 333                  # ours: the bottom of the top two thirds


def test_published_detection_pads_a_rare_unit_to_30_shown_positives(tmp_path):
    "12 activating images: 30 shown as activating (18 of them with activation 0) and 30 others; 12 true positives."
    from medsae.naming_eval import eval_set, published_positives
    rng = np.random.default_rng(0)
    v = np.zeros(300); v[rng.choice(300, 12, replace=False)] = rng.uniform(1, 3, 12)
    shown = published_positives(v, 30)
    assert len(shown) == 30 and (v[shown] == 0).sum() == 18 and (v[shown] > 0).sum() == 12
    idx, truth = eval_set(v, 30, 30, seed=4, published=True)
    assert len(idx) == 60 and truth.sum() == 12 and (truth == (v[idx] > 0)).all()
    assert all(list(idx).count(i) >= 1 for i in shown)
    idx_o, truth_o = eval_set(v, 30, 30, seed=4)
    assert len(idx_o) == 42 and truth_o.sum() == 12                    # ours: only the 12 as positives

    class Seen:                                                        # a judge that records what it was shown
        name, prompt_hash, rows = "seen", "s1", []
        def judge(self, concept, description, rows, paths, n_pos):
            Seen.rows.append(np.asarray(rows)); return np.ones(len(rows), dtype=int)
    codes = sp.csr_matrix(v[:, None])
    names = pd.DataFrame({"unit_kind": ["sae"], "unit": [0], "namer": ["x"], "concept": ["c"], "description": [""],
                          "ok": [True]})
    index = pd.DataFrame({"Path": [f"i{i}.png" for i in range(300)]})
    pub = score_names(names, codes, np.zeros((300, 2)), index, tmp_path, Seen(), progress=False, protocol="published")
    assert pub.n_images.tolist() == [60] and pub.positives.tolist() == [12] and (v[Seen.rows[-1]] == 0).sum() == 48
    ours = score_names(names, codes, np.zeros((300, 2)), index, tmp_path, Seen(), progress=False)
    assert ours.n_images.tolist() == [42] and ours.positives.tolist() == [12]


def test_heldout_refuses_to_judge_names_on_the_images_that_made_them():
    from medsae.config import ConfigError, load_config
    for split in (["naming.split=valid"], ["naming.split=train", "naming.eval_split=train"]):
        with pytest.raises(ConfigError) as e:
            load_config(None, split)
        line = [l for l in str(e.value).splitlines() if "heldout protocol" in l]
        assert len(line) == 1 and "naming.split and naming.eval_split are both" in line[0]
    with pytest.raises(ConfigError, match="naming.protocol: published names and judges on the validation split"):
        load_config(None, ["naming.protocol=published"])                 # published, but names on train
    cfg = load_config(None, ["naming.protocol=published", "naming.split=valid"])
    assert cfg.naming.split == cfg.naming.eval_split == "valid"
    assert load_config(None).naming.protocol == "heldout"               # ours is the default


def test_4bit_where_it_cannot_load_fails_before_any_work(tmp_path):
    from medsae.config import ConfigError, NamingConfig
    from medsae.naming import naming_stage_run
    from medsae.naming_eval import naming_eval_stage_run
    cfg = NamingConfig(namers=["medgemma"], judge="medgemma", load_in_4bit=True, device="cpu", model=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="^naming.load_in_4bit: 4-bit MedGemma needs a CUDA GPU"):
        naming_stage_run(tmp_path / "no-activations", tmp_path, tmp_path / "out", cfg, [], None)
    assert not (tmp_path / "out").exists()


def _store(folder, emb, index):
    "An embedding store on disk, as the extract stage leaves it."
    from medsae.layout import StoreFolder
    f = StoreFolder(folder); f.path.mkdir(parents=True)
    np.save(f.embeddings, emb.astype(np.float32)); np.save(f.ok, np.ones(len(emb), bool))
    index.reset_index(drop=True).assign(ok=True).rename_axis("row").reset_index().to_csv(f.index, index=False)
    f.meta.write_text(json.dumps({"complete": True, "rows": len(emb), "dim": emb.shape[1]}))


@pytest.mark.parametrize("protocol", ["published", "heldout"])
def test_protocol_end_to_end_with_tiny_gemma3_and_stage_records(images, tmp_path, protocol):
    "Both stages through TransformersVLM on CPU; their records state the protocol, the splits and the prompt hashes."
    from medsae.activations import load_activations, save_activations
    from medsae.config import Config, NamingConfig
    from medsae.layout import ActivationsFolder
    from medsae.naming import build_vlm, naming_stage_run, vlm_namer
    from medsae.naming_eval import naming_eval_stage_run, vlm_judge
    from medsae.stages import _judge
    root, index, _ = images
    rng = np.random.default_rng(1)
    train, valid = index.iloc[:30].reset_index(drop=True), index.iloc[30:].reset_index(drop=True)   # 30 / 50 images
    def codes_of(n, active):                                   # latent k active on active[k] random images
        c = np.zeros((n, len(active)))
        for k, a in enumerate(active): c[rng.choice(n, a, replace=False), k] = rng.uniform(1, 2, a)
        return sp.csr_matrix(c)
    acts = ActivationsFolder(tmp_path / "acts")
    save_activations(acts.split("train"), codes_of(30, [20, 25, 15]), train, {})
    save_activations(acts.split("valid"), codes_of(50, [12, 40, 20]), valid, {})
    _store(tmp_path / "store", rng.normal(size=(80, 4)), pd.concat([train.assign(split="train"), valid.assign(split="valid")]))
    split = "valid" if protocol == "published" else "train"
    cfg = NamingConfig(protocol=protocol, split=split, namers=["vocabulary", "medgemma"], judge="medgemma",
                       model=str(tiny_gemma3(tmp_path / "tiny")), device="cpu", max_new_tokens=2, batch_size=8,
                       min_active=8, n_examples=6, eval_units=2, eval_positive=15, eval_negative=5)
    phrases = ["effusion", "edema", "pacemaker", "fracture"]
    vecs = {p: rng.normal(size=4) for p in phrases}
    rec = naming_stage_run(acts.path, root, tmp_path / "names", cfg, [], None, text_encode=lambda t: np.stack([vecs[x] for x in t]),
                           directions=rng.normal(size=(3, 4)), vocabulary=phrases, cache_path=tmp_path / "names.jsonl",
                           progress=False)
    assert rec["protocol"] == protocol and rec["split"] == split and rec["judged_on"] == "valid"
    assert rec["prompt_hashes"]["medgemma"] == vlm_namer(None, protocol).prompt_hash
    assert vlm_namer(None, "published").prompt_hash != vlm_namer(None, "heldout").prompt_hash
    made = [json.loads(l) for l in (tmp_path / "names.jsonl").read_text().splitlines()]
    vlm_made = [r for r in made if r["namer"].startswith("transformers:")]
    named_on = set((valid if protocol == "published" else train).Path)
    assert vlm_made and all(r["image_ids"] and set(r["image_ids"]) <= named_on for r in vlm_made)
    vlm = build_vlm(cfg, "medgemma")
    item = naming_items(load_activations(acts.split(split))[0], valid if protocol == "published" else train, root, [1],
                        n=6)
    prompt = vlm.render(vlm_namer(vlm, protocol).requests(item)[0])
    first_text = prompt.index("Below I provide" if protocol == "published" else "chest X-ray images above")
    assert (first_text < prompt.index("<start_of_image>")) == (protocol == "published")
    judge = _judge(Config(naming=cfg))                                 # the score-names stage's judge
    srec = naming_eval_stage_run(tmp_path / "names" / "names.csv", acts.path, tmp_path / "store", root, tmp_path / "scores",
                                 cfg, judge, cache_path=tmp_path / "judged.jsonl", progress=False,
                                 same_split_judge=judge)
    assert srec["protocol"] == protocol and srec["names_split"] == split and srec["eval_split"] == "valid"
    assert srec["judge_prompt_hash"] == vlm_judge(None, protocol).prompt_hash
    sc = pd.read_csv(tmp_path / "scores" / "scores.csv")
    rare = sc[(sc.unit_kind == "sae") & (sc.unit == 0)]                 # active on 12 validation images
    if protocol == "published":                                      # 15 shown as activating (3 padded) + 5 others
        assert rare.n_images.tolist() == [20] and rare.positives.tolist() == [12]
    else:                                                            # ours: named on train, judged on 12 + 5
        assert rare.n_images.tolist() == [17] and rare.positives.tolist() == [12]
    judged = [json.loads(l) for l in (tmp_path / "judged.jsonl").read_text().splitlines()]
    on_valid = [r for r in judged if set(r["image_ids"]) <= set(valid.Path)]
    on_train = [r for r in judged if set(r["image_ids"]) <= set(train.Path)]
    assert on_valid and len(on_valid) + len(on_train) == len(judged)
    same = tmp_path / "scores" / "same_split.csv"                     # the same-split row: heldout runs only
    assert same.exists() == (protocol == "heldout") and bool(on_train) == (protocol == "heldout")
    if protocol == "heldout":
        t = pd.read_csv(same)
        assert set(t.unit_kind) == {"sae", "random"} and all(r["unit_kind"] in ("judge:sae", "judge:random") for r in on_train)
        held = sc[sc.unit_kind == "sae"].groupby("namer").accuracy.mean()
        h, o = "accuracy, held out (valid)", "accuracy, same split (train)"
        for _, r in t[t.unit_kind == "sae"].iterrows():
            assert np.isclose(r[h], held[r.namer], atol=1e-4) and np.isclose(r.inflation, r[o] - r[h], atol=1e-4)
