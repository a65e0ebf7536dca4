# digitops: every target calls the same `digitops` CLI that CI and people use.
# `make help` lists the targets.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROFILE ?= quick
PORT   ?= 8866
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help install data run pipeline train evaluate test test-tools test-fast lab dashboard bench clean

help: ## Show this list of targets
	@awk 'BEGIN {FS = ":.*## "; printf "Usage: make TARGET [PROFILE=quick|ci|full] [PORT=8866]\n\n"} \
	  /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-11s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/digitops: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/digitops ## Create .venv (if missing) and install digitops with its dev tools

data: install ## Fetch MNIST and verify its checksums (cached in ~/.cache/digitops)
	$(BIN)/digitops data fetch

run: data ## The main job: train -> evaluate -> compare -> report -> register (PROFILE=quick)
	$(BIN)/digitops pipeline --profile $(PROFILE)

pipeline: run ## Same as `make run`

train: data ## Execute notebooks/train.ipynb only (PROFILE=quick)
	$(BIN)/digitops run train --profile $(PROFILE)

evaluate: install ## Evaluate the newest run's model (notebooks/evaluate.ipynb)
	$(BIN)/digitops run evaluate

test-tools: ## Install what the tests need besides Python, once: chromium, rsync, git (apt), Node 22 + gitlab-ci-local
	ci/test-tools.sh

test: test-tools data ## Run every test: unit, notebooks (nbmake), contract, browser, end to end
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install ## Run the tests not marked slow or browser
	$(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

lab: install ## Open JupyterLab on the notebooks (runs and tracking stay in this folder)
	DIGITOPS_HOME=$(CURDIR)/.digitops DIGITOPS_RUNS=$(CURDIR)/runs $(BIN)/jupyter lab notebooks/

dashboard: install ## Serve the digit dashboard with the production model on 127.0.0.1 (PORT=8866)
	$(BIN)/digitops dashboard --port $(PORT)

bench: data ## Run the benchmarks in bench/ (prints a table, writes bench/results.json)
	$(BIN)/python bench/run.py

clean: ## Remove runs/, .digitops/ and caches (keeps .venv and the MNIST cache)
	rm -rf runs .digitops .pytest_cache test-artifacts
