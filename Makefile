# Two entry points for a fresh machine: `make demo` and `make test` (the fast tests;
# `make test-all` runs every test, as CI does).
# Both build the virtual environment in .venv first, with the CPU build of torch
# installed before anything else so that no multi-GB CUDA build is pulled in.
# GPU users: make TORCH_SPEC="torch" (or the CUDA wheel matching their driver).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all lint stores clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) pipelines/demo.py --out outputs/demo

# The real radar stores of configs/radar.yaml, from ../shared/data (2 km, 5 min), and the
# two of other steps that can train beside them (BOM 6 min, OPERA 15 min; README, Splits).
SHARED ?= ../shared/data
stores: $(STAMP)
	$(VENV)/bin/metnet ingest $(SHARED)/radar/fmi --source fmi --out outputs/stores/fmi.zarr --coarsen 2
	$(VENV)/bin/metnet ingest $(SHARED)/radar/KNMI --source knmi --out outputs/stores/knmi.zarr --coarsen 2
	$(VENV)/bin/metnet ingest $(SHARED)/radar/mch --source mch --out outputs/stores/mch.zarr --coarsen 2
	$(VENV)/bin/metnet ingest $(SHARED)/radar/bom --source bom --out outputs/stores/bom.zarr --coarsen 4
	$(VENV)/bin/metnet ingest $(SHARED)/radar/OPERA --source opera --out outputs/stores/opera.zarr

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not slow"

test-all: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

clean:
	rm -rf outputs .pytest_cache .ruff_cache
