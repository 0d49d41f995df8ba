import os
import subprocess
import sys
from pathlib import Path

import pytest

import medsae  # noqa: F401  first, before numpy or torch: it pins their numeric paths (nbs/04_numerics)

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


TINY = ["phantom.n_train=160", "phantom.n_valid=40", "phantom.n_test=40",
        "encoder_training.epochs=2", "encoder_training.image_size=64", "encoder_training.widths=[8,16,32,64]",
        "encoder_training.batch_size=32", "sae.expansion=2", "sae.epochs=3", "sae.batch_size=64", "sae.l1=1.0",
        "sae.sweep_expansion=[1,2]", "sae.sweep_l1=[1.0]", "sae.sweep_epochs=2", "metrics.bootstrap=50",
        "metrics.permutations=5", "naming.min_active=5", "naming.eval_positive=5", "naming.eval_negative=5",
        "naming.eval_units=6"]
"Overrides that shrink the default run to a minute or two (tiny PhantomCXR, encoder and SAE)."


def tiny_args(out_root, *extra) -> list[str]:
    "`--set` arguments of a tiny default run under `out_root`."
    return [a for o in [*TINY, f"run.out_root={out_root}", *extra] for a in ("--set", o)]


SHARED = [*TINY, "metrics.labels=chexpert5", "analyses.linearity_pairs=40", "naming.vocabulary_min_count=20",
          "sae.sweep_l1=[0.3,3.0]"]
"""The suite's one finished tiny run: the tiny default run with five labels that vary on its valid split (so the
held-out selection runs), 40 linearity pairs, a vocabulary of report entities seen 20 times, two sweep penalties."""


def run_cli(*args, cwd=ROOT, check=True, env=None):
    "Run the installed `medsae` console script; returns the CompletedProcess."
    exe = Path(sys.executable).parent / "medsae"
    r = subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"medsae {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def chexpert_train():
    from medsae.assets import asset_path
    return asset_path("chexpert_train", check=True)


def working_clone(dest) -> Path:
    """A git clone of this working tree as it is (tracked and untracked files that git does not ignore, committed in
    the clone), its data/ assets linked; run the clone's own code with `clone_env(clone)`."""
    dest = Path(dest)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    import shutil
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT / f, dest / f)
    for f in (ROOT / "data").iterdir():
        if not (dest / "data" / f.name).exists(): (dest / "data" / f.name).symlink_to(f)
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=dest, check=True,
                                    capture_output=True)
    git("init", "-q"); git("add", "-A"); git("commit", "-qm", "working tree")
    return dest


def clone_env(clone) -> dict:
    "The environment that runs a clone's own package (and its notebooks' kernels) with this venv's packages."
    return {**os.environ, "PYTHONPATH": str(clone)}


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """The suite's one finished tiny run, made once per pytest run as a reviewer makes one: `medsae pipeline` (the
    Papermill notebooks) with the `SHARED` sizes in a git clone of the working tree, with its own code, `figures/` and
    `runs/`. Tests that read it share it; tests/test_reproduce.py, which changes it, runs after them."""
    from types import SimpleNamespace
    from medsae.config import load_config
    from medsae.layout import FiguresFolder, RunLayout
    clone = working_clone(tmp_path_factory.mktemp("tiny") / "clone")
    cli = lambda *a, **k: run_cli(*a, cwd=clone, env=clone_env(clone), **k)
    args = [a for o in SHARED for a in ("--set", o)]
    out = cli("pipeline", *args).stdout
    return SimpleNamespace(clone=clone, cli=cli, args=args, out=out, run=RunLayout(clone / "runs" / "default"),
                           figures=FiguresFolder(clone / "figures"),
                           cfg=load_config(None, [*SHARED, f"run.out_root={clone / 'runs'}"]))


# `make test` runs pytest in two processes (pytest-xdist, `-n 2 --dist loadscope`): most tests use one core (a
# subprocess, a kernel, a small model), so two of them share the machine's two cores. A group runs in one process, in
# the order of collection: the tests of a module share its fixtures, and the modules that read the one tiny run share
# it (built once per pytest run; tests/test_reproduce.py, which changes it, runs after its readers). The longest
# groups start first, so that neither process is left with one of them at the end. (xdist's own `loadgroup` marks do
# nothing under pytest 9: the scheduler below groups by module instead.)
TINY_MODULES = ("test_ablation", "test_published", "test_reproduce")
FIRST = ("tiny", "test_paper_e2e", "test_numerics", "test_general", "test_sae_sparse", "test_phantom")


def group_of(nodeid: str) -> str:
    module = Path(nodeid.split("::")[0]).stem
    return "tiny" if module in TINY_MODULES else module


def pytest_collection_modifyitems(config, items):
    rank = lambda it: FIRST.index(group_of(it.nodeid)) if group_of(it.nodeid) in FIRST else len(FIRST)
    items.sort(key=rank)                                    # stable: collection order within a group


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:                                         # plain pytest: one process, the same order
    pass
else:
    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str: return group_of(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        return GroupScheduling(config, log)
