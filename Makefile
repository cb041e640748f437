# The front door: `make repro` runs the pipeline, `make test` runs the test suite
# (`make test-fast` leaves out the tests marked slow),
# `make check-repro` reproduces the pipeline and compares it with the committed results.
# All of them create .venv from the lock file first, when needed.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# Exact versions and sha256 hashes of every package, for CPython 3.11 on Linux x86-64.
LOCK := requirements.lock
LOCK_PYTHON := 3.11
# The tool that writes the lock (`make lock`).
UV_VERSION := 0.13.9
# pip's own constraint file, when this machine's pip is configured with one (some machines
# cap torch at the release they mirror): the lock must install under it.
PIP_CONSTRAINT_FILE := $(shell python3 -m pip config list 2>/dev/null | sed -n "s/^global.constraint='\(.*\)'$$/\1/p")
# dvc.yaml runs `python ...`: the venv's python must come first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup lock repro check-repro test test-fast lint dag sample

setup: $(INSTALLED)

# Re-installs whenever the lock or pyproject.toml changes. pip checks every hash; packages
# installed by hand that the lock does not list are left alone.
$(INSTALLED): $(LOCK) pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(None if v == "$(LOCK_PYTHON)" else f"$(VENV) runs Python {v} but $(LOCK) is resolved for $(LOCK_PYTHON): remove $(VENV) and run make with python3 pointing to Python $(LOCK_PYTHON), or refresh the lock with make lock LOCK_PYTHON={v}")'
	$(PYTHON) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PYTHON) -m pip install --quiet --no-deps -e .
	touch $@

# Refresh the lock: the newest releases that pyproject.toml's ranges allow (with .[dev]).
lock:
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes \
	  --python-version $(LOCK_PYTHON) --python-platform x86_64-manylinux_2_28 \
	  --no-emit-package imgpipe $(if $(PIP_CONSTRAINT_FILE),--constraint $(PIP_CONSTRAINT_FILE)) \
	  --output-file $(LOCK)

repro: setup
	dvc repro

# Runs `dvc repro`, then compares outputs and metrics with the committed ones (README,
# Reproducibility). CHECK_REPRO_ARGS=--restore puts committed files back after a pass.
check-repro: setup
	$(PYTHON) scripts/check_repro.py $(CHECK_REPRO_ARGS)

# Test worker processes (pytest-xdist); each takes whole test files, so a file's
# fixtures are built once, in collection order (the longest files first, tests/conftest.py;
# xdist's default reorder by test count would start them last). 2 suits this 2-core
# machine; TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
PYTEST := $(PYTHON) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# Everything: unit tests and the `slow` ones that run real dvc commands on a copy.
test: setup
	$(PYTEST)

# The edit-test loop: every test not marked `slow` (no dvc commands, no bench).
test-fast: setup
	$(PYTEST) -m "not slow"

lint: setup
	ruff check src tests scripts bench

dag: setup
	dvc dag

# Regenerate the committed sample dataset (deterministic).
sample: setup
	$(PYTHON) scripts/make_digits.py --out data/sample --classes 0 1 2 3 4 5 --per-class 40
