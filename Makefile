# Two commands on a fresh machine: `make generate` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP_RUNTIME := $(VENV)/.runtime-installed
STAMP_TEST    := $(VENV)/.test-installed
STAMP_LINT    := $(VENV)/.lint-installed
# The test suite and the runnable examples in the runtime's docstrings, in one pytest run.
TESTS := tests --doctest-modules fastsim
STAMP_DOCS    := $(VENV)/.docs-installed
# The CPU build of torch, installed before anything that asks for `torch`, so
# pip never resolves a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0

N      ?= 10000
ENERGY ?= 1GeV:1TeV
OUT    ?= showers.h5

.PHONY: generate test venv docs clean
.PHONY: test-fast lint

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP_RUNTIME): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet $(TORCH_CPU)
	$(PIP) install --quiet -e ".[train,plots,validate,dask,test]"
	touch $@ $(STAMP_RUNTIME)

$(STAMP_LINT): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e ".[lint]"
	touch $@
$(STAMP_DOCS): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e ".[docs]"
	touch $@

venv: $(STAMP_RUNTIME)

generate: $(STAMP_RUNTIME)
	$(VENV)/bin/fastsim generate -n $(N) --energy $(ENERGY) -o $(OUT) --force

test: $(STAMP_TEST)
	$(PY) -m pytest $(TESTS)

# Everything but the tests marked slow (C++/Node builds, Dask clusters, training).
test-fast: $(STAMP_TEST)
	$(PY) -m pytest -m "not slow" $(TESTS)

# ruff on all Python code; mypy (strict, see pyproject.toml) on the runtime.
lint: $(STAMP_LINT)
	$(VENV)/bin/ruff check fastsim training tests benchmarks
	$(VENV)/bin/mypy

# The documentation site (docs/, mkdocs.yml) into site/; warnings are errors.
docs: $(STAMP_DOCS)
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache
