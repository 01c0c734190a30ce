# The two commands a newcomer runs: `make up` (set up + local swarm) and `make test` (set up + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup up train test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The CPU build of torch comes first and pinned, so that the project's `torch>=2.3` is already met
# and pip never pulls a multi-GB CUDA build on a laptop or CI runner.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

up: setup
	$(BIN)/moe-swarm up --nodes 4 --rounds 20

train: setup
	$(BIN)/moe-swarm train

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check moeswarm tests bench
	$(BIN)/mypy moeswarm

clean:
	rm -rf $(VENV) .moeswarm .pytest_cache
