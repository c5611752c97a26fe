# Common tasks. `make help` lists them. Everything runs inside .venv, which `make install` builds.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch build to install first. 2.13.0 is a small CPU wheel on CPU-only machines set up like ours,
# and PyPI's CUDA build on a GPU box; override e.g. `make install TORCH="torch==2.13.0 --index-url URL"`.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: help install test lint format train clean device-wheels

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[prepared]"
	$(PY) -m pip install --quiet --no-deps litdata==0.2.76  # see the `prepared` extra in pyproject.toml
	touch $@

$(STAMP): $(VENV)/.runtime
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(STAMP) ## Create .venv and install cgnet with its dev tools (CPU torch unless told otherwise)

test: $(STAMP) ## Run the test suite (CPU only, a few minutes)
	$(PY) -m pytest $(ARGS)

lint: $(STAMP) ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## ruff fix + format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

train: $(VENV)/.runtime ## Train CGNet on the bundled synthetic street scenes (CPU, a few minutes); ARGS= adds overrides
	$(PY) -m cgnet.train $(ARGS)

device-wheels: ## Fetch the wheels a bare CUDA box lacks into .whl/, for scripts/gpu_checks.sh
	bash scripts/device_wheels.sh

clean: ## Remove run outputs (logs/, outputs/, multirun/) and tool caches (keeps .venv)
	rm -rf logs outputs multirun .pytest_cache .ruff_cache
