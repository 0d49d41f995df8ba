"""Mutation testing of the scientific core with mutmut (`make mutate`; not part of `make test`).

For each module of `[tool.medsae.mutate]` in pyproject.toml this builds a scratch copy of the package and of the
module's test files in build/mutate/<module>/, mutates only the listed functions of that module (mutmut mutates the
exported `medsae/<module>.py`; the notebooks are its source), and runs, for each mutant, only those of the module's
tests that call the mutated function. It prints one line per module (mutants, killed, survived, % killed) and every
survivor with its diff, marked `equivalent` when tests/mutation_survivors.md lists it with a reason.

    python scripts/mutate.py                      # every core module
    python scripts/mutate.py metrics data -j 1    # some modules, one worker
    python scripts/mutate.py --report             # the table of the last run, without running again
    python scripts/mutate.py data --rerun         # only the last run's survivors, against the tests as they are now

Exit status 1 when a module kills fewer than `--min-score` percent of its mutants (default 90) or a survivor is not
listed as equivalent.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "mutate"
SURVIVORS = ROOT / "tests" / "mutation_survivors.md"
SEP = "\u01c1"                                     # mutmut's class separator in mutant names: x\u01c1Class\u01c1method

# Statuses of mutmut's exit codes (mutmut.stats.status_by_exit_code): a timeout or a crash of the tests is a kill.
KILLED = {1, 3, 24, -24, 152, 255, 36, -11, -9}
SURVIVED = {0}
NO_TESTS = {5, 33}

CONFTEST_ADDITION = '''

# ---- added by scripts/mutate.py: hypothesis runs derandomised, without shrinking or an example database ----
from hypothesis import Phase as _Phase, settings as _settings
_settings.register_profile("mutate", derandomize=True, database=None, deadline=None,
                           phases=(_Phase.explicit, _Phase.reuse, _Phase.generate))
_settings.load_profile("mutate")
'''


def load_config() -> tuple[dict, dict]:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    return tool["mutmut"], tool["medsae"]["mutate"]


def mangled(module: str, func: str) -> str:
    "The mutmut name prefix of `func` ('f', 'Class.method' or 'Class.*') in medsae/<module>.py."
    if "." in func:
        cls, meth = func.split(".", 1)
        return f"medsae.{module}.x{SEP}{cls}{SEP}{meth}"
    return f"medsae.{module}.x_{func}"


def globs(module: str, funcs: list[str]) -> list[str]:
    return [mangled(module, f) + ("" if f.endswith("*") else "__mutmut_*") for f in funcs]


def toml_value(v) -> str:
    if isinstance(v, bool): return "true" if v else "false"
    if isinstance(v, (int, float)): return repr(v)
    if isinstance(v, str): return json.dumps(v)
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


def prepare(module: str, spec: dict, base: dict, fresh: bool = True) -> Path:
    "build/mutate/<module>/: the package, conftest and the module's test files, and a mutmut config for them."
    work = BUILD / module
    if fresh:
        if work.exists(): shutil.rmtree(work)
        (work / "tests").mkdir(parents=True)
        shutil.copytree(ROOT / "medsae", work / "medsae", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "settings.ini", work / "settings.ini")   # medsae finds its project root by it
    else:
        shutil.rmtree(work / "tests"); (work / "tests").mkdir()
    (work / "tests" / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text() + CONFTEST_ADDITION)
    for t in spec["tests"]:
        f = t.split("::")[0]
        if not (work / f).exists(): shutil.copy(ROOT / f, work / f)
    cfg = dict(base, only_mutate=[f"medsae/{module}.py"], pytest_add_cli_args_test_selection=list(spec["tests"]))
    (work / "pyproject.toml").write_text("[tool.mutmut]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in cfg.items()))
    return work


def run_module(module: str, spec: dict, base: dict, jobs: int, rerun: bool = False) -> float:
    names = None
    if rerun:                                       # the last run's mutants that were not killed, with today's tests
        work = BUILD / module
        if (ROOT / "medsae" / f"{module}.py").read_text() != (work / "medsae" / f"{module}.py").read_text():
            raise SystemExit(f"medsae/{module}.py changed since the last run: run it again without --rerun")
        r = results(module, spec)
        names = r["survived"] + r["no_tests"] + r["other"]
        if not names: print(f"== {module}: nothing to rerun"); return 0.0
        prepare(module, spec, base, fresh=False)
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)   # new tests: map tests to functions again
    else:
        work = prepare(module, spec, base)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # the scratch copy, never another checkout
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONHASHSEED="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    mutmut = Path(sys.executable).parent / "mutmut"
    t0 = time.time()
    print(f"== {module}: mutmut on {', '.join(spec['functions'])}\n   tests: {', '.join(spec['tests'])}", flush=True)
    with open(work / "mutmut.log", "w") as log:
        r = subprocess.run([str(mutmut), "run", "--max-children", str(jobs), *(names or globs(module, spec["functions"]))],
                           cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    secs = time.time() - t0
    if not rerun: (work / "seconds").write_text(f"{secs:.0f}\n")
    if r.returncode != 0:
        tail = (work / "mutmut.log").read_text(errors="replace").replace("\r", "\n").splitlines()[-30:]
        print("\n".join(tail))
        raise SystemExit(f"mutmut failed on {module} (exit {r.returncode}); log: {work / 'mutmut.log'}")
    return secs


def results(module: str, spec: dict) -> dict:
    "Counts and survivors of the listed functions from mutmut's record of the last run."
    work = BUILD / module
    meta = work / "mutants" / "medsae" / f"{module}.py.meta"
    if not meta.exists(): return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    pats = [re.compile(g.replace("*", ".*") + "$") for g in globs(module, spec["functions"])]
    mine = {k: v for k, v in codes.items() if any(p.match(k) for p in pats)}
    out = dict(mutants=len(mine), killed=sum(v in KILLED for v in mine.values()),
               survived=sorted((k for k, v in mine.items() if v in SURVIVED), key=natural),
               no_tests=sorted((k for k, v in mine.items() if v in NO_TESTS), key=natural),
               other=sorted(k for k, v in mine.items() if v not in KILLED | SURVIVED | NO_TESTS),
               seconds=int((work / "seconds").read_text()) if (work / "seconds").exists() else None)
    return out


def natural(name: str):
    head, _, num = name.rpartition("__mutmut_")
    return head, int(num) if num.isdigit() else 0


def equivalent_listed() -> dict[str, str]:
    "Survivors listed in tests/mutation_survivors.md: `mutant name`, then the reason, on one table row."
    out = {}
    if SURVIVORS.exists():
        for line in SURVIVORS.read_text().splitlines():
            m = re.match(r"\|\s*`([^`]+)`\s*\|(.*)\|\s*$", line)
            if m: out[m.group(1)] = m.group(2).strip(" |")
    return out


def diff(module: str, name: str) -> str:
    mutmut = Path(sys.executable).parent / "mutmut"
    r = subprocess.run([str(mutmut), "show", name], cwd=BUILD / module, capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if l.startswith(("-", "+")) and not l.startswith(("---", "+++"))]
    return "\n".join("      " + l for l in lines)


def main(argv=None) -> int:
    base, modules = load_config()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {', '.join(modules)})")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="mutants tested in parallel (default 2)")
    ap.add_argument("--report", action="store_true", help="report the last run without running again")
    ap.add_argument("--rerun", action="store_true", help="rerun only the last run's surviving mutants (tests changed, "
                    "the module did not); the table then mixes both runs")
    ap.add_argument("--min-score", type=float, default=90.0, help="the lowest %% killed accepted per module")
    ap.add_argument("--no-diffs", action="store_true", help="list survivors without their diffs")
    a = ap.parse_args(argv)
    chosen = a.modules or list(modules)
    unknown = [m for m in chosen if m not in modules]
    if unknown: ap.error(f"unknown module(s) {unknown}; configured: {list(modules)}")
    t0 = time.time()
    if not a.report:
        for m in chosen: run_module(m, modules[m], base, a.jobs, a.rerun)
    eq = equivalent_listed()
    rows, bad = [], False
    print("\n| module | mutants | killed | survived (equivalent) | no tests | % killed | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m in chosen:
        r = results(m, modules[m])
        if not r: print(f"| {m} | (not run) | | | | | |"); bad = True; continue
        n_eq = sum(s in eq for s in r["survived"])
        score = 100.0 * r["killed"] / max(r["mutants"], 1)
        print(f"| {m} | {r['mutants']} | {r['killed']} | {len(r['survived'])} ({n_eq}) | {len(r['no_tests'])} | "
              f"{score:.1f} | {r['seconds'] if r['seconds'] is not None else ''} |")
        rows.append((m, r))
        bad |= score < a.min_score or n_eq < len(r["survived"]) or bool(r["no_tests"]) or bool(r["other"])
    for m, r in rows:
        for kind in ("survived", "no_tests", "other"):
            for s in r[kind]:
                tag = f"equivalent: {eq[s]}" if s in eq else ("SURVIVED" if kind == "survived" else kind.upper())
                print(f"  {s}  [{tag}]")
                if s not in eq and not a.no_diffs: print(diff(m, s))
    if not a.report: print(f"\nmutation testing took {time.time() - t0:.0f} s with {a.jobs} worker(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
