# raysight: every target bootstraps the virtualenv it needs, so a fresh clone works with
# nothing done by hand.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Ray workers default to nice 15, which starves them on a small machine next to the driver.
export RAY_worker_niceness := 0
# Ray 2.60 clusters use token authentication; Ray reads the mode once, when it is imported.
export RAY_AUTH_MODE ?= token
# Extra flags for `raysight serve` in `make run`, e.g. SERVE_FLAGS="--grpc-port 9100".
SERVE_FLAGS ?=

.PHONY: venv tools kserve-client lint typecheck test test-fast bench run constraints clean proto

venv: $(STAMP)

# Debian's Prometheus: promtool checks the alert rules, and a real server proves the
# dashboard's queries against a live scrape. Installed once; the tests refuse to skip them
# when RAYSIGHT_REQUIRE_TOOLS is set, as `make test` does.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  $(SUDO) apt-get install -y -q --no-install-recommends prometheus >/dev/null || { \
	    $(SUDO) apt-get update -q >/dev/null && \
	    $(SUDO) apt-get install -y -q --no-install-recommends prometheus >/dev/null; }; }

# KServe's own clients, which one integration test runs: kserve pins much of what Ray pins,
# so they get a virtualenv of their own, never raysight's.
KSERVE_VENV := .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed
kserve-client: $(KSERVE_STAMP)

$(KSERVE_STAMP): tests/requirements-kserve-client.txt
	test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install -q --upgrade pip
	$(KSERVE_VENV)/bin/python -m pip install -q -r tests/requirements-kserve-client.txt
	touch $(KSERVE_STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check src tests bench services scripts
	$(BIN)/ruff format --check src tests bench services scripts
	$(BIN)/mypy

typecheck: lint

# All tests but the GPU ones (CI has no GPU); lint first, it is cheap and catches most slips.
test: venv tools kserve-client lint
	RAYSIGHT_REQUIRE_TOOLS=1 RAYSIGHT_KSERVE_PYTHON=$(CURDIR)/$(KSERVE_VENV)/bin/python \
	  $(BIN)/pytest -m "not gpu" --timeout=1800

# The unit tests alone: seconds, for the edit-test loop.
test-fast: venv
	$(BIN)/pytest -m "not gpu and not slow and not integration"

# Regenerate src/raysight/_proto/ from protos/ (commit the result; a unit test checks it).
proto: venv
	$(BIN)/python scripts/gen_proto.py

bench: venv
	$(BIN)/python bench/train_throughput.py
	test -f runs/digits/manifest.json || \
	  $(BIN)/raysight train --config services/digits.yaml --epochs 5 --output runs/digits
	$(BIN)/python bench/serve_bench.py --checkpoint runs/digits --out docs/benchmarks.md \
	  --plots docs/plots

# The main job on the embedded default data (scikit-learn's 8x8 digits): train with Ray
# Train on 2 workers, evaluate, then serve the checkpoint with Ray Serve over gRPC, classify
# sample images through the gRPC API and keep serving until Ctrl-C.
run: venv
	$(BIN)/raysight train --config services/digits.yaml --output runs/digits
	$(BIN)/raysight evaluate --checkpoint runs/digits --dataset digits
	$(BIN)/raysight serve --checkpoint runs/digits --demo 5 $(SERVE_FLAGS)

# Regenerate the pins from the current venv (after changing dependencies on purpose).
constraints: venv
	{ head -2 constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^raysight' \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) $(KSERVE_VENV) runs .pytest_cache .mypy_cache .ruff_cache
