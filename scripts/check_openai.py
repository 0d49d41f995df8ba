"""Check that the requests medsae's `OpenAIVLM` sends are what the official `openai` client sends, and that both read
the same answer (the OpenAI chat-completions format medsae claims to speak).

The `openai` package is not in the project's lock: it runs from a throwaway venv (as in check_saelens.py):

    .venv/bin/python scripts/check_openai.py setup [VENV]          # VENV (default /tmp/medsae-openai-venv) with openai
    VENV/bin/python scripts/check_openai.py send BODY.json URL      # the official client sends BODY's parameters

`send` checks BODY (the JSON medsae sends) against the official request types (every key known, the required ones
there, literals such as "image_url" and the roles right; exit 1 naming the first breaches), sends it with
`openai.OpenAI(base_url=URL).chat.completions.create(**BODY)` and prints the parsed answer's content as JSON.
tests/test_naming.py::test_requests_are_what_the_official_openai_client_sends runs both against a local server.
"""
import json
import sys
from pathlib import Path

OPENAI_VERSION = "3.57.0"
DEFAULT_VENV = Path("/tmp/medsae-openai-venv")


def setup(venv: Path = DEFAULT_VENV) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from check_saelens import throwaway_venv
    return throwaway_venv(venv, f"openai=={OPENAI_VERSION}", f"import openai; assert openai.__version__ == {OPENAI_VERSION!r}")


def conforms(value, tp, path="body") -> list[str]:
    """Where `value` breaks the official request type `tp`: unknown or missing keys of a TypedDict, a wrong literal,
    a wrong scalar type (pydantic alone accepts extra keys and any member of a union of TypedDicts)."""
    import collections.abc
    import types
    import typing
    import typing_extensions as te
    origin, args = te.get_origin(tp), te.get_args(tp)
    if tp is typing.Any: return []
    if origin in (te.Required, te.NotRequired, te.Annotated, typing.Annotated): return conforms(value, args[0], path)
    if origin in (typing.Union, types.UnionType):
        tries = [conforms(value, a, path) for a in args]
        return [] if any(not t for t in tries) else min(tries, key=len)
    if origin in (typing.Literal, te.Literal): return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if te.is_typeddict(tp):
        if not isinstance(value, dict): return [f"{path}: not an object"]
        hints = te.get_type_hints(tp, include_extras=True)
        bad = [f"{path}: unknown key {k!r}" for k in value if k not in hints]
        bad += [f"{path}: missing key {k!r}" for k in tp.__required_keys__ if k not in value]
        return bad + [e for k, v in value.items() if k in hints for e in conforms(v, hints[k], f"{path}.{k}")]
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence, typing.List):
        if not isinstance(value, list): return [f"{path}: not a list"]
        return [e for i, v in enumerate(value) for e in conforms(v, args[0], f"{path}[{i}]")]
    if origin in (dict, typing.Dict, collections.abc.Mapping): return [] if isinstance(value, dict) else [f"{path}: not an object"]
    if tp is type(None): return [] if value is None else [f"{path}: not null"]
    if tp is float: return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else [f"{path}: not a number"]
    if tp in (str, int, bool): return [] if type(value) is tp else [f"{path}: not {tp.__name__}"]
    return []


def send(body_file: Path, url: str):
    import openai
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
    body = json.loads(Path(body_file).read_text())
    bad = conforms(body, CompletionCreateParamsNonStreaming)
    if bad: sys.exit("the body breaks the official request type: " + "; ".join(bad))
    client = openai.OpenAI(base_url=url, api_key="sk-check", max_retries=0, timeout=60)
    out = client.chat.completions.create(**body)
    print(json.dumps({"content": out.choices[0].message.content, "openai": openai.__version__}))


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "setup":
        try: print(setup(Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_VENV))
        except RuntimeError as e:
            print(f"check_openai setup: {e}", file=sys.stderr); sys.exit(2)
    elif mode == "send": send(Path(sys.argv[2]), sys.argv[3])
    else: sys.exit(__doc__)
