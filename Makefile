# Hatchway developer commands. Every target sets up what it needs itself.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install js browser dev test test-js lint format emulator lock lock-layers clean bench bench-relay faults check-template lock-sam deploy delete

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	@py=$$(scripts/find-python312.sh) && echo "using $$py" && "$$py" -m venv $(VENV)

# Re-installs only when the dependency declarations change (idempotent).
# Two projects, both editable: the runtime (layers/core, distribution "hatchway") and
# the local tooling with the dev tools (the root, "hatchway-local").
$(STAMP): $(BIN)/python pyproject.toml layers/core/pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e 'layers/core[trigger,relay,client]' -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv with Python 3.12 and every dependency (pinned by constraints.txt)

# The JS client (clients/js): its packages from package-lock.json, its build in dist/
# (the demo page and the Node and browser tests load it from there).
JS       := clients/js
JS_STAMP := $(JS)/node_modules/.installed
JS_BUILD := $(JS)/dist/index.js

$(JS_STAMP): $(JS)/package.json $(JS)/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: the JS client needs Node.js 20+ and npm" >&2; exit 1; }
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(JS_BUILD): $(JS_STAMP) $(wildcard $(JS)/src/*.ts) $(JS)/tsconfig.json
	cd $(JS) && npm run --silent build

js: $(JS_BUILD) ## install and build the JS client (clients/js/dist)

# The browser tests drive Debian's chromium (never a downloaded browser). Without it
# they skip, unless HATCHWAY_REQUIRE_BROWSER=1 (CI) makes that a failure.
browser: ## install Debian's chromium for the browser tests (apt-get, as root or with sudo)
	@if command -v chromium >/dev/null; then echo "chromium: $$(command -v chromium)"; else \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium; \
	fi

PORT ?= 8000

DEMO_PORT ?= 8001

dev: install js ## run the whole local stack (HTTP API on PORT=8000, demo page on DEMO_PORT=8001) and print its URLs (Ctrl-C stops it all)
	$(BIN)/hatchway dev --port $(PORT) --demo-port $(DEMO_PORT)

test: install js ## run the whole test suite: the JS client's, then pytest (unit, functional, e2e, browser)
	cd $(JS) && npm test --silent
	$(BIN)/python -m pytest -q

test-js: js ## only the JS client's tests
	cd $(JS) && npm test --silent

FAULT_RUNS ?= 3
faults: install ## the fault suite FAULT_RUNS times in a row (a flake fails it)
	@for run in $$(seq 1 $(FAULT_RUNS)); do \
		echo "fault suite, run $$run of $(FAULT_RUNS)"; \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/e2e/test_faults.py || exit 1; \
	done

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
	.lock-venv/bin/python -m pip install --quiet 'layers/core[trigger,relay,client]' '.[dev]'
	.lock-venv/bin/python -m pip freeze --exclude hatchway --exclude hatchway-local > constraints.txt
	rm -rf .lock-venv build *.egg-info layers/core/*.egg-info local/*.egg-info
	$(MAKE) lock-layers

lock-layers: install ## rewrite the layers' requirements files from constraints.txt (every package pinned)
	$(BIN)/python scripts/lock_layers.py

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .lock-venv .pytest_cache .mypy_cache .ruff_cache build $(JS)/node_modules $(JS)/dist $(JS)/dist-test

bench: install ## print benchmark figures (cold starts and sizes vs the previous layout; cold connect; emulator startup; large payloads; floods and non-readers)
	$(BIN)/python benchmarks/cold_start.py
	$(BIN)/python benchmarks/cold_connect.py
	$(BIN)/python benchmarks/emulator_startup.py
	$(BIN)/python benchmarks/payloads.py
	$(BIN)/python benchmarks/flood.py

bench-relay: install ## Hatchway vs the docs' proxy vs a raw broadcast server, one table (BENCH_RELAY_QUICK=1: a minute)
	$(BIN)/python benchmarks/relay.py

# --- The template: cfn-lint, `sam validate --lint` and `sam build` (no Docker) ---------
# aws-sam-cli pins boto3/botocore apart from ours: it lives in its own venv, pinned by
# constraints-sam.txt. `sam build` runs `python3.12` from PATH (a pyenv shim refuses when
# another version is selected), so the interpreter's own directory goes first.
SAM_VENV  := .venv-sam
SAM_STAMP := $(SAM_VENV)/.installed
SAM_ENV    = PATH="$$(dirname "$$(scripts/find-python312.sh)"):$$PATH" \
             AWS_DEFAULT_REGION="$${AWS_DEFAULT_REGION:-us-east-1}" SAM_CLI_TELEMETRY=0

$(SAM_VENV)/bin/python:
	@py=$$(scripts/find-python312.sh) && echo "using $$py" && "$$py" -m venv $(SAM_VENV)
	@echo '*' > $(SAM_VENV)/.gitignore

$(SAM_STAMP): $(SAM_VENV)/bin/python constraints-sam.txt
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet -c constraints-sam.txt aws-sam-cli
	@touch $@

check-template: install $(SAM_STAMP) ## cfn-lint, sam validate --lint, sam build of template.yaml
	$(BIN)/cfn-lint template.yaml
	$(SAM_ENV) $(SAM_VENV)/bin/sam validate --lint
	$(SAM_ENV) $(SAM_VENV)/bin/sam build --build-dir .aws-sam/build

lock-sam: ## re-resolve constraints-sam.txt (aws-sam-cli) in a scratch venv
	rm -rf .lock-sam-venv && $$(scripts/find-python312.sh) -m venv .lock-sam-venv
	.lock-sam-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-sam-venv/bin/python -m pip install --quiet aws-sam-cli
	{ echo "# aws-sam-cli for 'make check-template', in its own venv (.venv-sam): its boto3/botocore pins"; \
	  echo "# differ from the project's. Regenerate with 'make lock-sam'."; \
	  .lock-sam-venv/bin/python -m pip freeze; } > constraints-sam.txt
	rm -rf .lock-sam-venv

# --- Deploy and delete (docs/operations.md): scripts/deploy.py -------------------------
# With the SAM venv's Python (boto3 comes with aws-sam-cli) and its sam. Not $(SAM_ENV):
# its region default (us-east-1) would hide samconfig's and the AWS profile's region.
# Settings from the environment or the command line: STACK_NAME, AWS_REGION,
# PARAMETER_OVERRIDES, RELAY_DESIRED_COUNT, RELAY_IMAGE_TAG, CONFIRM_CHANGESET, DRY_RUN.
DEPLOY_ENV = PATH="$$(dirname "$$(scripts/find-python312.sh)"):$$PATH" SAM_CLI_TELEMETRY=0 \
             SAM="$(SAM_VENV)/bin/sam"

deploy: $(SAM_STAMP) ## build and push the relay image, sam build and sam deploy, print the URLs (DRY_RUN=1: only print the commands)
	@$(DEPLOY_ENV) $(SAM_VENV)/bin/python scripts/deploy.py deploy

delete: $(SAM_STAMP) ## empty the relay repository and the payload bucket, then sam delete (DRY_RUN=1: only print the commands)
	@$(DEPLOY_ENV) $(SAM_VENV)/bin/python scripts/deploy.py delete
