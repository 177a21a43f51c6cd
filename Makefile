# Two commands matter: `make run` and `make test`. Both set up the virtualenv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?=
RUN_ARGS ?=
export SPARK_LOCAL_IP ?= 127.0.0.1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_USAGE_STATS_ENABLED ?= 0
export PYTHONHASHSEED ?= 0

.PHONY: setup run test test-fast lint bench dist clean help cluster-up cluster-down cluster-status

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch with pip: pip takes the pinned CPU build from this machine's wheel folder, where
	# uv would download a CUDA build. Then uv (resolves and downloads in parallel: about a
	# minute where pip took eight) installs the rest around the torch already there.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt -e '.[dev,tracking]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the package with dev tools (pinned)

run: setup  ## run the whole pipeline on sample data (local Spark, local Ray)
	$(BIN)/pipeline run $(if $(CONFIG),--config $(CONFIG)) $(RUN_ARGS)

test: setup lint  ## lint, then every test tier (unit, integration, cluster, chaos)
	$(BIN)/python -m pytest

test-fast: setup  ## unit tests only
	$(BIN)/python -m pytest -m unit

lint: setup  ## ruff + mypy
	$(BIN)/ruff check pipeline jobs tests bench
	$(BIN)/mypy pipeline jobs

bench: setup  ## benchmarks: ratios against baselines measured in the same run
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt -e '.[dev,bench]'
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

dist: setup  ## wheel + deterministic zip of the package for spark-submit --py-files
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist .
	$(BIN)/python -c "from pathlib import Path; from pipeline.orchestrator.package import write_deterministic_zip as z; print(z(Path('pipeline'), 'pipeline', Path('dist/pipeline.zip')), 'files in dist/pipeline.zip')"

clean:  ## remove build outputs and local data (keeps .venv)
	rm -rf build dist data .pytest_cache .mypy_cache .ruff_cache

cluster-up: setup  ## local Spark standalone + 2-node Ray cluster on loopback (.cluster/)
	PYTHON=$(BIN)/python infra/local/cluster-up.sh $(CLUSTER_ARGS)

cluster-down:  ## stop the local clusters started by cluster-up (idempotent)
	PYTHON=$(BIN)/python infra/local/cluster-down.sh $(CLUSTER_ARGS)

cluster-status:  ## addresses and processes of the local clusters
	$(BIN)/python infra/local/cluster.py status $(CLUSTER_ARGS)
