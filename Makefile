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

dev: setup
	$(VENV)/bin/dagster dev -w workspace.yaml

bench: setup
	$(PY) -m bench.suite

clean-outputs:
	rm -rf data/outputs $(DAGSTER_HOME)
