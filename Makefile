# MedSAE compendium. The README's two commands:
#   make reproduce   set up (idempotent), then run the default reproduction offline
#   make test        set up (idempotent), then run every notebook's tests (nbdev_test) and pytest
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/default.yaml
# nothing downloads weights or data at run time
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg PYTHONHASHSEED=0
STAMP := $(VENV)/.installed
UV ?= uv==0.13.9

.PHONY: reproduce test setup assets export check-sync docs bench lock clean help mutate reference check-repro

help:
	@echo "make reproduce [CONFIG=configs/default.yaml]  # the whole reproduction (offline by default)"
	@echo "make test                                      # notebook tests + pytest"
	@echo "other targets: setup assets export check-sync docs bench lock clean reference check-repro"

# Set-up: the virtual environment from the lock, the package in editable mode, the offline assets.
$(STAMP): requirements.lock setup.py settings.ini
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	@# uv installs the same exact lock in 86 s where pip takes 197 s (parallel downloads and unpacking, measured on
	@# the 2-core machine into fresh venvs); pip does it where uv cannot reach the package index (uv ignores pip.conf)
	$(PY) -m pip install -q "$(UV)" && $(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode -r requirements.lock \
	  || { echo "uv could not install the lock: installing it with pip"; $(PY) -m pip install -q -r requirements.lock; }
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: $(STAMP) assets

assets: $(STAMP)
	$(VENV)/bin/medsae assets fetch

# The run writes figures/ (untracked) and runs/<name>/, never a tracked file; it ends with the verdict of its page
# against the committed RESULTS.md (exit 1 when a number is outside; nothing to compare for another config).
reproduce: setup
	$(OFFLINE) $(VENV)/bin/medsae pipeline --config $(CONFIG)
	$(OFFLINE) $(VENV)/bin/medsae verify --config $(CONFIG)

# The one way to change the committed results: a finished default run, made at a clean commit, becomes RESULTS.md and
# figures/reference/ (medsae reference update refuses anything else).
reference: $(STAMP)
	$(VENV)/bin/medsae reference update --config $(CONFIG)

# pytest in two processes (pytest-xdist; tests/conftest.py keeps what tests share in one of them)
TEST_WORKERS ?= 2
# The numeric paths of medsae.numerics (set when medsae is imported) also for the notebooks that import numpy first.
PINNED = eval "$$($(PY) -c 'import medsae.numerics as n; print(n.pin_env())')" &&

test: setup
	$(PINNED) $(OFFLINE) $(VENV)/bin/nbdev_test --n_workers 2 --timing
	$(PINNED) $(OFFLINE) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope tests

# The cross-CPU test alone: the pinned fingerprint natively and under qemu-x86_64 -cpu Haswell (apt-get install qemu-user).
check-repro: setup
	$(OFFLINE) $(PY) -m pytest -q tests/test_numerics.py

# Notebooks are the source: export them into medsae/, or check that medsae/ is in sync with them.
export: $(STAMP)
	$(VENV)/bin/nbdev_export

check-sync: $(STAMP)
	$(VENV)/bin/nbdev_export
	@git diff --quiet -- medsae || { echo "medsae/ differs from the notebooks: run make export and commit"; git diff --stat -- medsae; exit 1; }

# Documentation site: nbdev_proc_nbs (no Quarto: executes every chapter's doc cells into _proc/, tested), then Quarto,
# which cannot be installed on the project's machines (see README).
# The documentation site: nbdev processes the chapters into _proc/, then Quarto renders the official site (_docs/);
# where Quarto is missing, nbconvert renders the same pages, sidebar and results page into _site/ (nbs/70_report).
docs: $(STAMP)
	$(VENV)/bin/nbdev_proc_nbs
	@if command -v quarto >/dev/null; then $(VENV)/bin/nbdev_docs; else \
	  echo "Quarto is not installed (https://quarto.org; the official site needs it): rendering _site/ with nbconvert"; \
	  $(OFFLINE) $(PY) -c "from medsae.report import build_site; print(len(build_site()), 'pages in _site/')"; fi

bench: setup
	@for b in scripts/bench_*.py; do echo "== $$b"; $(OFFLINE) $(PY) $$b; done

# Mutation testing of the scientific core (not part of `make test`): mutmut, installed into the venv here, mutates the
# functions listed in pyproject.toml ([tool.medsae.mutate]) one module at a time and prints the score per module;
# survivors equivalent to the original are explained in tests/mutation_survivors.md. MODULES=metrics data ... for some.
MUTMUT ?= mutmut==3.8.1
mutate: setup
	$(PY) -m pip install -q "$(MUTMUT)"
	$(OFFLINE) $(PY) scripts/mutate.py $(MODULES)

# Re-resolve requirements.in into the exact lock (needs the package registry).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip && .venv-lock/bin/pip install -q -r requirements.in
	{ echo "# Exact versions resolved from requirements.in with Python 3.11 (make lock). Installed by the Makefile and environment.yml."; \
	  .venv-lock/bin/pip freeze --all --exclude-editable | grep -viE "^(pip|medsae)==" | sort -f; } > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf runs _docs _proc _site .pytest_cache
