# Two commands: `make run` (set up + the whole pipeline) and `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false

.PHONY: setup run test bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

run: $(STAMP)
	mmfuse fetch
	dvc repro
	@echo
	@echo "Reports:"
	@echo "  data quality (Great Expectations Data Docs): reports/data_docs/index.html"
	@echo "  validation summary (DVC metric):             metrics/validation.json"
	@echo "  evaluation report (offline HTML):            reports/evaluation/index.html"
	@echo "  promotion decision:                          reports/promotion/decision.json (mmfuse champion show)"
	@echo "  everything DVC tracks:                       dvc metrics show; dvc plots show"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

bench: $(STAMP)  # after `make run`: ~3 min; the training benchmarks need a clean preset, see their docstrings
	$(BIN)/python benchmarks/ingest_validate.py
	$(BIN)/python benchmarks/preprocess_throughput.py --repeats 3
	$(BIN)/python benchmarks/serve_latency.py

clean-venv:
	rm -rf $(VENV)
