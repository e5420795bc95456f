# Two entry points for a fresh machine: `make demo` and `make test`.
# Both build the virtual environment in .venv first, with the CPU build of torch
# installed before anything else so that no multi-GB CUDA build is pulled in.
# GPU users: make TORCH_SPEC="torch" (or the CUDA wheel matching their driver).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint benchmark clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) pipelines/demo.py --out outputs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

clean:
	rm -rf outputs .pytest_cache .ruff_cache
