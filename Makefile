# Every target bootstraps .venv itself; nothing else needs to be installed first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint format shim

run: $(VENV)/.run
	$(BIN)/withcache-server --data-dir ./data

test: $(VENV)/.test
	$(BIN)/pytest

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
