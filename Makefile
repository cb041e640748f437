# The front door: `make repro` runs the pipeline, `make test` runs the test suite.
# Both create .venv and install the project into it first, when needed.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# dvc.yaml runs `python ...`: the venv's python must come first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup repro test lint dag sample

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $@

repro: setup
	dvc repro

test: setup
	$(PYTHON) -m pytest

lint: setup
	ruff check src tests scripts bench

dag: setup
	dvc dag

# Regenerate the committed sample dataset (deterministic).
sample: setup
	$(PYTHON) scripts/make_digits.py --out data/sample --classes 0 1 2 3 4 5 --per-class 40
