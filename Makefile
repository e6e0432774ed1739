# `make demo`: all set-up, then the main job on embedded defaults (SQLite instance, local files).
# `make test`: all set-up, then the tests. Both are idempotent: a second run skips finished set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME := $(CURDIR)/dagster_home
export PYTHONUNBUFFERED := 1
DEMO_SHARD_SIZE ?= 2000
DEMO_SOURCE := demo

.PHONY: setup demo test lint dev bench bench-gpu clean-outputs lock

# deploy/constraints.txt pins every package to the set the tests ran with (the Docker images use it too)
$(VENV)/.installed: pyproject.toml deploy/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q --constraint deploy/constraints.txt -e '.[demo,test]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

setup: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml

data/demo_corpus/.demo_version: demo/corpus.py | $(VENV)/.installed
	$(PY) -m demo.corpus --corpus data/demo_corpus --fewshot data/demo_fewshot

demo: setup data/demo_corpus/.demo_version
	$(VENV)/bin/dagster instance concurrency set gpu $$($(PY) -c "import torch; print(max(1, torch.cuda.device_count()))") >/dev/null
	$(PY) -m orchestration.cli run --source $(DEMO_SOURCE)=data/demo_corpus --shard-size $(DEMO_SHARD_SIZE) --semantic
	$(PY) -m demo.evaluate --outputs data/outputs --source $(DEMO_SOURCE)

test: setup
	bash scripts/ensure_chromium.sh
	bash scripts/ensure_redis.sh
	$(PY) -m pytest -q -p no:cacheprovider

# ruff (lint + import order) and mypy (types) over the project; .ci/run runs it after the tests
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# `make dev [PORT=3000] [REPORT_PORT=3001]`: the UI and daemon, and beside them a read-only server of
# <output_root>/reports on 127.0.0.1:$(REPORT_PORT) whose URL (CURATION_REPORT_URL) the report assets
# put in their metadata as a one-click link. dagster dev runs from $(DAGSTER_HOME) so it does not warn
# about the repo's top-level dagster.yaml (not the instance's: `make setup` copies it into DAGSTER_HOME),
# and without the notice that `dagster dev` is superseded by `dg dev` (the dg CLI is not used here).
PORT ?= 3000
REPORT_PORT ?= 3001
dev: setup
	reports="$$($(PY) -c 'from resources.environment import output_root; print(output_root())')/reports"; \
	mkdir -p "$$reports"; \
	$(PY) -m http.server $(REPORT_PORT) --bind 127.0.0.1 --directory "$$reports" >/dev/null 2>&1 & server=$$!; \
	trap "kill $$server 2>/dev/null" EXIT INT TERM; \
	echo "reports: http://127.0.0.1:$(REPORT_PORT)/ (serving $$reports)"; \
	cd $(DAGSTER_HOME) && PYTHONWARNINGS='ignore:Function `dev_command` is superseded' PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} CURATION_REPORT_URL=$${CURATION_REPORT_URL:-http://127.0.0.1:$(REPORT_PORT)} \
	  $(abspath $(VENV))/bin/dagster dev -w $(CURDIR)/workspace.yaml -p $(PORT)

bench: setup
	$(PY) -m bench.suite

clean-outputs:
	rm -rf data/outputs $(DAGSTER_HOME)
