PYTHON ?= python3
PORT ?= 8501
# Only this machine can open the playground. HOST=0.0.0.0 serves it to the network:
# see "Serving on a network" in README.md first.
HOST ?= 127.0.0.1

.PHONY: run test setup setup-dev chromium bench

# Set up and open the playground in the browser (built-in corpus, no download).
run: setup
	$(PYTHON) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT)

# Set up and run every test: unit, CLI, app and browser tests.
test: setup-dev chromium
	$(PYTHON) -m pytest

setup:
	$(PYTHON) -m pip install -q -r requirements.txt

setup-dev:
	$(PYTHON) -m pip install -q -r requirements-dev.txt

# Debian's Chromium for the browser tests, installed only when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	    echo "could not install Chromium: the browser tests will be skipped"; }

bench: setup
	$(PYTHON) -m pip install -q -r requirements-bench.txt
	for b in bench/bench_*.py; do $(PYTHON) $$b || exit 1; done
