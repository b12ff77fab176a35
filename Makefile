# Hatchway developer commands. Every target sets up what it needs itself.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install dev test lint format emulator lock clean bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	@py=$$(scripts/find-python312.sh) && echo "using $$py" && "$$py" -m venv $(VENV)

# Re-installs only when the dependency declarations change (idempotent).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,local]'
	@touch $@

install: $(STAMP) ## create .venv with Python 3.12 and every dependency (pinned by constraints.txt)

PORT ?= 8000

dev: install ## run the whole local stack on $(PORT) and print its URLs (Ctrl-C stops it all)
	$(BIN)/hatchway dev --port $(PORT)

test: install ## run the whole test suite
	$(BIN)/python -m pytest -q

lint: install ## ruff (lint and format check), mypy --strict, cfn-lint on the template
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

emulator: install ## run only the Hatchet engine emulator
	$(BIN)/hatchway hatchet-emulator

lock: $(BIN)/python ## re-resolve constraints.txt from pyproject.toml in a scratch venv
	rm -rf .lock-venv && $$(scripts/find-python312.sh) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet '.[dev,local]'
	.lock-venv/bin/python -m pip freeze --exclude hatchway > constraints.txt
	rm -rf .lock-venv build *.egg-info layers/core/*.egg-info

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .lock-venv .pytest_cache .mypy_cache .ruff_cache build

bench: install ## print benchmark figures (startup of the emulator against baselines)
	$(BIN)/python benchmarks/emulator_startup.py
