PORT ?= 8501
# Only this machine can open the playground. HOST=0.0.0.0 serves it to the network:
# see "Serving on a network" in README.md first.
HOST ?= 127.0.0.1
# Everything installs into this virtual environment (made on first use) from
# requirements.lock, the exact versions the tests passed with.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
BASE_PYTHON ?= python3
LOCK := requirements.lock
# What test-fast leaves out: browser tests and tests that train for more than a second.
FAST := -m "not slow and not browser"
# Two pytest workers, one per core of a small machine (pytest-xdist); each test file runs
# on one worker, so a module's fixtures (a trained model, the browser and its server) are made once.
WORKERS ?= 2
# A file to a worker, in the order tests/conftest.py gives them (the longest first), not by
# their number of tests: two workers that end with short files finish together.
DIST := --dist loadfile --no-loadscope-reorder
# One torch thread per process (two workers share two cores), and bytecode kept: each of the
# suite's processes (workers, servers, runs, command lines) would otherwise compile the project's
# files again where the environment sets PYTHONDONTWRITEBYTECODE, as many containers do.
TEST_ENV := OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=

.PHONY: run test test-fast test-latest lock setup setup-dev chromium bench

# Set up and open the playground in the browser (built-in corpus, no download).
run: setup
	$(PYTHON) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT)

# Set up and run every test: unit, CLI, app and browser tests (CI runs this).
# The browser tests run after the others: on a machine busy with them their pages' clicks race
# the redraws (measured: no faster beside them, and flaky). They live in tests/test_browser*.py
# (tests/conftest.py refuses one elsewhere), so only those files are collected for them, and
# the files of the tests tests/conftest.py runs beside them (BESIDE_BROWSER: a long test on
# one core, in the time the browser tests leave idle), on a second worker.
BROWSER_RUN := tests/test_browser*.py tests/test_recipes.py
test: setup-dev chromium
	$(TEST_ENV) $(PYTHON) -m pytest -n $(WORKERS) $(DIST) -m "not browser and not beside_browser"
	$(TEST_ENV) $(PYTHON) -m pytest -n $(WORKERS) $(DIST) -m "browser or beside_browser" $(BROWSER_RUN)

# The edit loop: every test but the browser ones and those that train for more than a second.
test-fast: setup-dev
	$(TEST_ENV) $(PYTHON) -m pytest -n $(WORKERS) $(DIST) $(FAST)

# The newest versions pyproject.toml allows, in a throwaway environment, against the fast
# tests: finds drift on purpose (not part of CI). Prints how they differ from the lock.
test-latest:
	rm -rf .venv-latest
	$(BASE_PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade -e ".[dev]"
	.venv-latest/bin/python -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/' > .venv-latest/versions.txt
	@echo "newest allowed versions against $(LOCK) (< lock, > newest):"; \
	  grep -v '^#' $(LOCK) | diff - .venv-latest/versions.txt || true
	$(TEST_ENV) .venv-latest/bin/python -m pytest -n $(WORKERS) $(DIST) $(FAST)
	rm -rf .venv-latest

# Write the newest versions pyproject.toml allows into requirements.lock; then run
# `make test` and commit the lock only if every test passes.
lock:
	rm -rf .venv-lock
	$(BASE_PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade -e ".[dev]"
	grep '^#' $(LOCK) > .venv-lock/lock.txt
	.venv-lock/bin/python -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/' >> .venv-lock/lock.txt
	mv .venv-lock/lock.txt $(LOCK)
	rm -rf .venv-lock

$(PYTHON):
	$(BASE_PYTHON) -m venv $(VENV)

# pip runs only when the lock, a requirements file or pyproject.toml is newer than the last
# install (a stamp file in the environment): even a pip that finds nothing to do takes seconds.
# `rm $(VENV)/.installed-*` installs again.
setup: $(VENV)/.installed-app
setup-dev: $(VENV)/.installed-dev

$(VENV)/.installed-app: $(LOCK) requirements.txt pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install -q -c $(LOCK) -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(LOCK) requirements.txt requirements-dev.txt pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install -q -c $(LOCK) -r requirements-dev.txt
	touch $@

# Debian's Chromium for the browser tests, installed only when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	    echo "could not install Chromium: the browser tests will be skipped"; }

bench: setup
	$(PYTHON) -m pip install -q -c $(LOCK) -r requirements-bench.txt
	for b in bench/bench_*.py; do $(PYTHON) $$b || exit 1; done
