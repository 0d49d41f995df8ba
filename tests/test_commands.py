"""Every command that the README and the chapters' prose show: a `medsae` command is parsed by the CLI's own parser
(an unknown flag or command fails), the ones that need no data or GPU are run, a `make` target exists in the
Makefile, a script exists."""
import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from medsae.cli import build_parser

RUNS = {("--help",), ("config", "show"), ("config", "fields"), ("assets", "list")}
"Commands that run here as shown (no data, no GPU)."


def _prose() -> dict[str, str]:
    "{where: markdown text} of the README and every chapter's markdown cells."
    out = {"README.md": (ROOT / "README.md").read_text()}
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        out[f"nbs/{nb.name}"] = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return out


def shown_commands() -> list[tuple[str, str, str]]:
    """(where, command, kind) of each shell command: lines of ```bash blocks ("block"), and `medsae ...` / `make ...`
    inline code ("inline", which may name a command without its required arguments)."""
    out = []
    for where, text in _prose().items():
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            env = {}
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if m := re.match(r'^([A-Z_]+)="(.*)"$', line): env[m.group(1)] = m.group(2); continue   # S="--set ..."
                for k, v in env.items(): line = line.replace(f"${k}", v)
                if line and not line.startswith("#"): out += [(where, c.strip(), "block") for c in line.split("&&")]
        for span in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
            if re.match(r"(\.venv/bin/)?(medsae|make) ", span) and not re.search(r"[<{\[]|\.\.\.", span):
                out.append((where, span.strip(), "inline"))
    return out


def argv_of(command: str) -> list[str] | None:
    "The `medsae` arguments of a shell command (None for another program)."
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_]+=", words[0]): words = words[1:]      # VAR=value medsae ...
    if not words or Path(words[0]).name != "medsae": return None
    return words[1:]


COMMANDS = shown_commands()


def test_the_prose_shows_commands():
    where = {w for w, _, _ in COMMANDS}
    assert "README.md" in where and len([c for w, c, _ in COMMANDS if argv_of(c) is not None]) >= 20, COMMANDS


@pytest.mark.parametrize("where, command, kind", COMMANDS, ids=[f"{w}: {c[:60]}" for w, c, _ in COMMANDS])
def test_every_command_shown_is_valid(where, command, kind):
    argv = argv_of(command)
    if argv is not None:
        import contextlib, io
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                build_parser().parse_args(argv or ["--help"])
        except SystemExit as e:
            mention = kind == "inline" and "arguments are required" in err.getvalue()   # `medsae data summary`
            assert e.code == 0 or mention, f"{where}: `{command}` is not a valid medsae command: {err.getvalue()[-300:]}"
        if tuple(argv) in RUNS or not argv:
            r = run_cli(*(argv or ["--help"]), check=False)
            assert r.returncode == 0, f"{where}: `{command}` failed: {r.stderr[-500:]}"
        return
    words = shlex.split(command)
    if words[0] == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
        for t in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
            assert t in targets, f"{where}: `{command}`: no make target {t!r}"
    elif words[0] in ("python", "python3", "bash") and words[1:]:
        assert (ROOT / words[1]).exists() or words[1] == "-m", f"{where}: `{command}`: no {words[1]}"
