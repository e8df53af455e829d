# Every target bootstraps .venv itself; nothing else needs to be installed first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint format shim

run: $(VENV)/.run
	$(BIN)/withcache-server --data-dir ./data

# Most tests wait on servers and subprocesses, so four workers fit two cores;
# each test module stays in one worker (its module fixtures, whole-corpus checks).
test: $(VENV)/.test
	$(BIN)/pytest -n 4 --dist loadfile

lint: $(VENV)/.test
	$(BIN)/ruff check src tests bench shim
	$(BIN)/ruff format --check src tests bench shim

format: $(VENV)/.test
	$(BIN)/ruff format src tests bench shim
	$(BIN)/ruff check --fix src tests bench shim

# The native shim (Zig from PyPI): static musl binaries in zig-out/bin/.
shim: $(VENV)/.zig
	$(BIN)/python shim/build.py

$(VENV)/.zig: | $(BIN)/python
	$(BIN)/pip install -q ziglang
	touch $@

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.run
