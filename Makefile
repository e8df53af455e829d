# Every target sets up what it needs itself, on a fresh Debian machine too:
# the Debian packages (scripts/debian-packages.txt, through scripts/debian-deps),
# then .venv, then (for the tests) the native shim.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHIM_SOURCES := $(wildcard shim/*.zig) shim/build.py \
	$(wildcard src/withcache/shim/*.py) src/withcache/cachehost.py src/withcache/keys.py

.PHONY: run test test-fast deps lint format shim dist

# A cache-host to try things on: this machine only, the UI open (no password).
RUN_FLAGS ?= --data-dir ./data --host 127.0.0.1 --port 3000
run: $(VENV)/.run
	$(BIN)/withcache-server $(RUN_FLAGS)

# Prerequisites are made in this order: Debian packages, .venv, native shim.
# Most tests wait on servers and subprocesses, so four workers fit two cores;
# each test module stays in one worker (its module fixtures, whole-corpus checks).
test: deps $(VENV)/.test zig-out/.built
	$(BIN)/pytest -n 4 --dist loadfile

# The unit and in-process tests only (no servers, tools, browsers or the
# scale-out stores: tests/conftest.py marks those slow), in about a minute.
test-fast: $(VENV)/.test
	$(BIN)/pytest -n 4 -m "not slow"

# The Debian packages the tests need (as root: installs the missing ones;
# otherwise names them and stops with exit status 2).
deps:
	@PYTHON=$(PYTHON) scripts/debian-deps test

lint: $(VENV)/.test
	$(BIN)/ruff check src tests bench shim
	$(BIN)/ruff format --check src tests bench shim

format: $(VENV)/.test
	$(BIN)/ruff format src tests bench shim
	$(BIN)/ruff check --fix src tests bench shim

# The native shim (Zig from PyPI): static musl binaries in zig-out/bin/.
shim: $(VENV)/.zig
	$(BIN)/python shim/build.py
	touch zig-out/.built

zig-out/.built: $(SHIM_SOURCES) | $(VENV)/.zig
	$(BIN)/python shim/build.py
	touch $@

# What to install from: the wheel and sdist, and the native shim for both
# targets, with their SHA-256 sums, in dist/.
dist: $(VENV)/.test zig-out/.built
	rm -rf dist
	$(BIN)/uv build --quiet --out-dir dist
	cp zig-out/bin/withcache-shim-*-linux-musl dist/
	cd dist && sha256sum withcache* > SHA256SUMS

$(VENV)/.zig: | $(BIN)/python
	$(BIN)/pip install -q ziglang
	touch $@

# A venv that failed half-way (no ensurepip) is removed, so the next try starts over.
$(BIN)/python:
	@PYTHON=$(PYTHON) scripts/debian-deps run
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.run
