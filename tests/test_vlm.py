"Vision-language models: Gemma 3 prompts and batched greedy generation (tiny offline model), the server client against a local HTTP server, the answer parsers."
import base64
import http.server
import io
import json
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medsae.vlm import (ModelNotAvailableError, OpenAIVLM, TransformersVLM, VLMBackend, VLMRequest, VLMResult,
                        chat_messages, four_bit_problem, image_data_url, openai_messages, parse_binary_list,
                        parse_json_object, tiny_gemma3)

SYSTEM = "You are an expert radiologist."


def xrays(k, size=(40, 50)):
    return [Image.new("L", size, 20 + 40 * i) for i in range(k)]


# ---------------------------------------------------------------------------------------------------------------
# TransformersVLM on the tiny Gemma 3
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_gemma3(tmp_path_factory.mktemp("vlm") / "tiny-gemma3")


@pytest.fixture(scope="module")
def vlm(tiny):
    return TransformersVLM(tiny, max_new_tokens=6, batch_size=3, local_files_only=True)


def test_tiny_checkpoint_has_the_real_files_and_loads_through_auto_classes(tiny, vlm):
    names = {p.name for p in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
            "chat_template.jinja", "generation_config.json"} <= names
    assert type(vlm.model).__name__ == "Gemma3ForConditionalGeneration"
    assert type(vlm.processor).__name__ == "Gemma3Processor"
    assert vlm.device == "cpu" and str(vlm.dtype) == "torch.float32"
    assert isinstance(vlm, VLMBackend) and vlm.name == f"transformers:{tiny}"


def test_prompt_renders_system_image_tokens_and_user_text(vlm):
    req = VLMRequest(SYSTEM, "  Which concept do these share?  ", xrays(3))
    prompt = vlm.render(req)
    assert prompt == ("<bos><start_of_turn>user\n" + SYSTEM + "\n\n" + "<start_of_image>" * 3 +
                      "Which concept do these share?<end_of_turn>\n<start_of_turn>model\n")
    # the processor expands each image into <start_of_image>, 4 soft tokens, <end_of_image>
    tok = vlm.processor.tokenizer
    ids = vlm.encode([req])["input_ids"][0].tolist()
    assert ids.count(tok.convert_tokens_to_ids("<image_soft_token>")) == 3 * 4
    assert ids.count(tok.convert_tokens_to_ids("<start_of_image>")) == 3
    assert ids.count(tok.convert_tokens_to_ids("<end_of_image>")) == 3
    assert ids.count(tok.bos_token_id) == 1                      # the template's <bos>, not a second one
    text = tok.decode(ids)
    assert text.index(SYSTEM) < text.index("<start_of_image>") < text.index("Which concept")


def test_text_first_sends_the_instruction_before_the_images(vlm):
    "The published scripts' order: the user text, then the images, in the messages, the prompt and the model's input."
    req = VLMRequest(SYSTEM, "Which concept do these share?", xrays(2), text_first=True)
    assert [p["type"] for p in chat_messages(req)[1]["content"]] == ["text", "image", "image"]
    assert [p["type"] for p in openai_messages(req)[1]["content"]] == ["text", "image_url", "image_url"]
    assert vlm.render(req) == ("<bos><start_of_turn>user\n" + SYSTEM + "\n\nWhich concept do these share?" +
                               "<start_of_image>" * 2 + "<end_of_turn>\n<start_of_turn>model\n")
    text = vlm.processor.tokenizer.decode(vlm.encode([req])["input_ids"][0].tolist())
    assert text.index("Which concept") < text.index("<start_of_image>") < text.index("<image_soft_token>")
    ours = VLMRequest(SYSTEM, "Which concept do these share?", xrays(2))             # the default: images first
    assert [p["type"] for p in chat_messages(ours)[1]["content"]] == ["image", "image", "text"]
    assert vlm.render(ours).index("<start_of_image>") < vlm.render(ours).index("Which concept")


def test_batched_generation_greedy_and_left_padded(vlm):
    reqs = [VLMRequest(SYSTEM, "no image at all, a longer question", [], key="a"),
            VLMRequest(SYSTEM, "one", xrays(1), key="b"),
            VLMRequest(SYSTEM, "three images", xrays(3, (64, 30)), key="c")]
    enc = vlm.encode(reqs)
    assert enc["pixel_values"].shape == (4, 3, 32, 32)
    assert bool(enc["attention_mask"][:, -1].all())              # left padding: every row ends at the right edge
    assert not bool(enc["attention_mask"][:, 0].all())
    out = vlm.generate(reqs)
    assert len(out) == 3 and all(isinstance(r, VLMResult) for r in out)
    assert all(r.ok and isinstance(r.text, str) and r.error is None and r.backend == vlm.name for r in out)
    assert all(r.seconds > 0 for r in out) and len({r.seconds for r in out}) == 1   # batch time shared
    assert [r.text for r in vlm.generate(reqs)] == [r.text for r in out]            # greedy: deterministic
    assert [vlm.generate([r])[0].text for r in reqs] == [r.text for r in out]       # padding changes nothing


def test_max_new_tokens_is_respected(vlm):
    reqs = [VLMRequest(SYSTEM, f"question {i}", xrays(i)) for i in range(3)]
    long = vlm.generate(reqs)
    assert all(1 <= r.tokens <= 6 for r in long) and max(r.tokens for r in long) == 6
    gen = vlm.model.generate(**vlm.encode(reqs[:1]), do_sample=False, max_new_tokens=6)
    assert gen.shape[1] - vlm.encode(reqs[:1])["input_ids"].shape[1] <= 6
    old = vlm.max_new_tokens
    try:
        vlm.max_new_tokens = 2
        short = vlm.generate(reqs)
    finally:
        vlm.max_new_tokens = old
    assert all(r.tokens <= 2 for r in short) and max(r.tokens for r in short) == 2
    assert sum(len(r.text) for r in short) < sum(len(r.text) for r in long)


def test_a_bad_request_gets_an_error_not_an_exception(vlm):
    reqs = [VLMRequest(SYSTEM, "fine", xrays(1)), VLMRequest(SYSTEM, "bad", ["/not/an/image.png"]),
            VLMRequest(SYSTEM, "empty image", [Image.new("RGB", (0, 0))]), VLMRequest(SYSTEM, "fine too", [])]
    out = vlm.generate(reqs)
    assert out[0].ok and out[3].ok
    assert out[1].text is None and "not PIL" in out[1].error
    assert out[2].text is None and out[2].error
    assert vlm.generate([]) == []


def test_missing_model_says_what_to_download(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="huggingface-cli download google/medgemma-4b-it") as e:
        TransformersVLM(tmp_path / "no-such-model", local_files_only=True)
    assert "HF_TOKEN" in str(e.value) and "licence" in str(e.value)
    with pytest.raises(ModelNotAvailableError, match="huggingface-cli download google/medgemma-4b-it") as e:
        TransformersVLM("google/medgemma-4b-it", local_files_only=True)
    assert "HF_TOKEN" in str(e.value) and "Traceback" not in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_offline_environment_means_local_files_only(monkeypatch, tiny):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert TransformersVLM(tiny, max_new_tokens=1).local_files_only is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert TransformersVLM(tiny, max_new_tokens=1).local_files_only is False


def test_4bit_needs_cuda_and_bitsandbytes(tiny, monkeypatch):
    with pytest.raises(RuntimeError, match="CUDA"):
        TransformersVLM(tiny, load_in_4bit=True, device="cpu")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            TransformersVLM(tiny, load_in_4bit=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)    # pretend: the next check is the package
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(RuntimeError, match="pip install bitsandbytes"):
        TransformersVLM(tiny, load_in_4bit=True, device="cuda")
    assert "pip install bitsandbytes" in four_bit_problem("cuda") and "CUDA GPU" in four_bit_problem("cpu")


# ---------------------------------------------------------------------------------------------------------------
# OpenAIVLM against a real local HTTP server
# ---------------------------------------------------------------------------------------------------------------

KEY = "sk-test-SECRET-123456"


class Server:
    "A chat-completions server whose behaviour is picked by the user text: ok, 500once, 400, 429, slow, ..."

    def __init__(self):
        self.lock = threading.Lock()
        self.requests, self.attempts = [], {}
        self.inflight = self.max_inflight = 0
        self.meeting, self.at_release = 0, []            # "meet" requests: how many were inside when one round met
        self.barrier = threading.Barrier(3, action=lambda: self.at_release.append(self.meeting), timeout=120)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status, body: bytes, headers=()):
                try:
                    self.send_response(status)
                    for k, v in headers:
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:                                  # the client gave up (timeout)
                    pass

            def do_POST(self):
                with server.lock:
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    self.handle_chat()
                finally:
                    with server.lock:
                        server.inflight -= 1

            def handle_chat(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"][-1]["text"]
                with server.lock:
                    server.requests.append((self.path, dict(self.headers), body))
                    n = server.attempts[user] = server.attempts.get(user, 0) + 1
                ok = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"answer to {user}"}}]})
                mode = user.split(":")[0]
                if mode == "500once" and n == 1:
                    return self.reply(500, b"internal error")
                if mode == "400":
                    return self.reply(400, b'{"error": "bad request"}')
                if mode == "429":
                    return self.reply(429, b"slow down")
                if mode == "echoauth":                           # a careless server that echoes the header
                    return self.reply(500 if n == 1 else 401, self.headers.get("Authorization", "").encode())
                if mode == "slow":
                    time.sleep(1.0)
                if mode == "meet":                              # wait until three requests are here together
                    with server.lock:
                        server.meeting += 1
                    server.barrier.wait()
                    with server.lock:
                        server.meeting -= 1                      # before the reply: the client cannot send more yet
                if mode == "malformed":
                    return self.reply(200, b'{"choices": [{"message": ')
                if mode == "nocontent":
                    return self.reply(200, b'{"choices": []}')
                self.reply(200, ok.encode(), [("Content-Type", "application/json")])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1/"
        threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def client(server, **kw):
    kw = dict(api_key_env="MEDSAE_TEST_KEY", timeout=5.0, retries=2, backoff=0.01) | kw
    return OpenAIVLM(server.url, "google/medgemma-4b-it", **kw)


def test_server_request_body_and_answers(server, monkeypatch):
    monkeypatch.setenv("MEDSAE_TEST_KEY", KEY)
    api = client(server, max_tokens=123)
    assert isinstance(api, VLMBackend) and api.name == "openai:google/medgemma-4b-it"
    reqs = [VLMRequest(SYSTEM, f"ok:{i}", xrays(i, (20 + i, 30)), key=f"k{i}") for i in range(3)]
    out = api.generate(reqs)
    assert [r.text for r in out] == [f"answer to ok:{i}" for i in range(3)]
    assert all(r.ok and r.error is None and r.backend == api.name and r.seconds > 0 for r in out)
    assert len(server.requests) == 3
    for path, headers, body in server.requests:
        assert path == "/v1/chat/completions"
        assert headers["Authorization"] == f"Bearer {KEY}"
        assert body["model"] == "google/medgemma-4b-it" and body["max_tokens"] == 123 and body["temperature"] == 0.0
        system, user = body["messages"]
        assert system == {"role": "system", "content": SYSTEM} and user["role"] == "user"
        i = int(user["content"][-1]["text"].split(":")[1])
        assert user["content"][-1] == {"type": "text", "text": f"ok:{i}"}
        parts = user["content"][:-1]
        assert len(parts) == i and all(p["type"] == "image_url" for p in parts)
        for p in parts:
            url = p["image_url"]["url"]
            assert url.startswith("data:image/png;base64,")
            im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            assert im.format == "PNG" and im.size == (20 + i, 30)
        assert "key" not in json.dumps(body)


def test_no_key_no_authorization_header(server, monkeypatch):
    monkeypatch.delenv("MEDSAE_TEST_KEY", raising=False)
    assert client(server).generate([VLMRequest("s", "ok:x", [])])[0].ok
    assert "Authorization" not in server.requests[0][1]


def test_5xx_is_retried_4xx_is_not(server):
    out = client(server).generate([VLMRequest("s", "500once:a", []), VLMRequest("s", "400:b", []),
                                   VLMRequest("s", "429:c", [])])
    assert out[0].text == "answer to 500once:a" and out[0].error is None and server.attempts["500once:a"] == 2
    assert out[1].text is None and "400" in out[1].error and server.attempts["400:b"] == 1
    assert out[2].text is None and "429" in out[2].error and server.attempts["429:c"] == 3   # 1 + 2 retries


def test_timeout_is_recorded(server):
    out = client(server, timeout=0.25, retries=1).generate([VLMRequest("s", "slow:a", []), VLMRequest("s", "ok:b", [])])
    assert out[0].text is None and "timeout" in out[0].error.lower() and server.attempts["slow:a"] == 2
    assert out[1].ok


def test_malformed_answers_are_errors(server):
    out = client(server).generate([VLMRequest("s", "malformed:a", []), VLMRequest("s", "nocontent:b", [])])
    assert out[0].text is None and "not JSON" in out[0].error and server.attempts["malformed:a"] == 1
    assert out[1].text is None and "choices[0].message.content" in out[1].error


def test_connection_errors_are_retried_and_recorded():
    with socket.socket() as s:                                  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = OpenAIVLM(f"http://127.0.0.1:{port}", "m", api_key_env=None, retries=1, backoff=0.01, timeout=2)
    (r,) = api.generate([VLMRequest("s", "u", [])])
    assert r.text is None and "connection" in r.error.lower() and "2 attempts" in r.error


def test_concurrency_is_bounded_and_order_kept(server):
    """The server lets requests through three at a time (a barrier): nine requests complete only if three are in
    flight together, and when each three meet no fourth is inside. No sleeps, no timing: no race to win."""
    out = client(server, concurrency=3, timeout=120).generate([VLMRequest("s", f"meet:{i}", []) for i in range(9)])
    assert [r.text for r in out] == [f"answer to meet:{i}" for i in range(9)]
    assert server.at_release == [3, 3, 3]


def test_the_key_never_leaks(server, monkeypatch):
    monkeypatch.setenv("MEDSAE_TEST_KEY", KEY)
    api = client(server, retries=1)
    assert KEY not in repr(api) and KEY not in str(vars(api))
    out = api.generate([VLMRequest("s", "echoauth:a", []), VLMRequest("s", "400:b", []), VLMRequest("s", "ok:c", []),
                        VLMRequest("s", "bad", [123])])
    assert server.requests[0][1]["Authorization"] == f"Bearer {KEY}"  # it was sent...
    assert out[0].error and "401" in out[0].error                    # ...echoed back by the server...
    assert all(KEY not in repr(r) for r in out)                       # ...and kept out of every result


# ---------------------------------------------------------------------------------------------------------------
# The parsers
# ---------------------------------------------------------------------------------------------------------------

def test_parse_json_object_cases():
    d = {"concept": "Pulmonary edema", "description": "Bilateral haziness."}
    assert parse_json_object(json.dumps(d)) == d
    assert parse_json_object(f"```json\n{json.dumps(d, indent=2)}\n```", ["concept", "description"]) == d
    assert parse_json_object(f"Here you go: {json.dumps(d)}. I ignored image 3.") == d
    many = '{"concept": "first"} no, better: {"concept": "second", "description": "x"} and {"unrelated": 1}'
    assert parse_json_object(many, ["concept"]) == {"concept": "second", "description": "x"}
    assert parse_json_object(many) == {"unrelated": 1}
    nested = '{"concept": "a", "description": "b", "meta": {"images": [1, {"x": {}}]}}'
    assert parse_json_object("x " + nested + " y", ["concept"])["meta"] == {"images": [1, {"x": {}}]}
    tricky = '{"concept": "brace } and { in text", "description": "quote \\" and }"}'
    assert parse_json_object(tricky, ["concept", "description"])["concept"] == "brace } and { in text"
    assert parse_json_object('{"answer": {"concept": "c", "description": "d"}}', ["concept", "description"]) == \
        {"concept": "c", "description": "d"}
    assert parse_json_object('{"concept": "c", "description": "d",}', ["concept"]) == {"concept": "c", "description": "d"}
    for bad in (None, "", "garbage", "{", "}{", "{'single': 'quotes'}", '{"a": }', "[1, 2]", 42):
        assert parse_json_object(bad) is None
    assert parse_json_object(json.dumps(d), ["concept", "missing"]) is None


def test_parse_binary_list_cases():
    assert parse_binary_list("[1, 0, 1, 1, 0]", 5) == [1, 0, 1, 1, 0]
    assert parse_binary_list("1,0,1", 3) == [1, 0, 1]
    assert parse_binary_list("Answer: 1 0 1", 3) == [1, 0, 1]
    assert parse_binary_list("```json\n[0, 1]\n```", 2) == [0, 1]
    assert parse_binary_list("The list is [true, false, true] as requested.", 3) == [1, 0, 1]
    assert parse_binary_list('{"answers": [1, 0]}', 2) == [1, 0]
    assert parse_binary_list('{"result": {"answers": ["yes", "no", "yes"]}}', 3) == [1, 0, 1]
    assert parse_binary_list('{"image 1": "yes", "image 2": "no"}', 2) == [1, 0]
    assert parse_binary_list("Image 1: yes, it shows edema.\nImage 2: no.\nImage 3: Yes", 3) == [1, 0, 1]
    assert parse_binary_list("**Image 1:** 1\n**Image 2:** 0", 2) == [1, 0]
    assert parse_binary_list("1. Yes\n2. No\n3. No", 3) == [1, 0, 0]
    assert parse_binary_list("Yes, no, yes.", 3) == [1, 0, 1]
    assert parse_binary_list("draft [0, 0] final [1, 1]", 2) == [1, 1]        # the last list
    for bad, n in (("[1, 0, 1]", 2), ("[1, 2, 0]", 3), ("I cannot tell.", 3), ("", 1), (None, 2), ("1,0", 0),
                   ("Image 1: yes", 2), ("garbage {", 3)):
        assert parse_binary_list(bad, n) is None


@settings(max_examples=200, deadline=None)
@given(d=st.dictionaries(st.text(), st.text(), max_size=6),
       pre=st.text(alphabet=st.characters(blacklist_characters="{}")),
       post=st.text(alphabet=st.characters(blacklist_characters="{}")),
       ascii_only=st.booleans())
def test_json_object_embedded_in_prose_is_recovered(d, pre, post, ascii_only):
    assert parse_json_object(pre + json.dumps(d, ensure_ascii=ascii_only) + post) == d


@settings(max_examples=200, deadline=None)
@given(bits=st.lists(st.integers(0, 1), min_size=1, max_size=30),
       pre=st.text(alphabet=st.characters(blacklist_characters="{}[]0123456789")),
       post=st.text(alphabet=st.characters(blacklist_characters="{}[]0123456789")))
def test_binary_list_embedded_in_prose_is_recovered(bits, pre, post):
    assert parse_binary_list(pre + json.dumps(bits) + post, len(bits)) == bits


def test_parsers_never_raise_on_arbitrary_text():
    import random
    rng = random.Random(0)
    alphabet = '{}[]",:01 yesnoImage\n\\'
    for _ in range(500):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        parse_json_object(s, ["a"])
        out = parse_binary_list(s, 3)
        assert out is None or (len(out) == 3 and set(out) <= {0, 1})


def test_image_data_url_roundtrip():
    im = Image.new("RGB", (13, 7), (1, 2, 3))
    url = image_data_url(im)
    back = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert back.format == "PNG" and back.size == (13, 7) and back.getpixel((0, 0)) == (1, 2, 3)
