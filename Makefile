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

# Every package, direct or not, comes from requirements-dev.lock: pinned, with hashes, so an
# upstream release cannot change a build. torch is its CPU build (2.13.0+cpu), looked for in the
# wheel folder PIP_FIND_LINKS names, if any; where none holds it, name PyTorch's CPU index:
# `make run TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX ?=
SOURCE_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match) \
               $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))
LOCK_ARGS   := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
               --custom-compile-command "make lock" --quiet $(SOURCE_ARGS)

# The tests run on as many pytest-xdist workers as there are cores (at most 4), each worker with its
# own model store and its own tiny DVC project, handed out two at a time as workers free up: a few
# DVC experiment tests take minutes, and a worker given a long run of tests up front finishes long
# after the other (tests on 2 cores: 10-11 min this way, 15-17 min with xdist's larger first chunks or work
# stealing, 24 min in one process). `make test PYTEST_WORKERS=` runs them in one process.
PYTEST_WORKERS ?= --numprocesses auto --maxprocesses 4 --dist load --maxschedchunk 2

.PHONY: setup run test bench lock clean-venv

setup: $(STAMP)

# pip installs uv alone (its pinned, hashed entry in the lock); uv installs the rest of the lock,
# fetching, unpacking and byte-compiling in parallel: 2.7 min here, where pip took ~6 min.
# Byte-compiling at install matters: where PYTHONDONTWRITEBYTECODE is set, a venv without .pyc
# files compiles every import from source in every process (torch + pandas + sklearn: 28 s, not 7).
$(STAMP): pyproject.toml requirements-dev.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	sed -n '/^uv==/,/# via/p' requirements-dev.lock > $(VENV)/uv-requirement.txt
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(VENV)/uv-requirement.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --require-hashes --no-deps --compile-bytecode $(SOURCE_ARGS) \
	  -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)

# After changing a pin in pyproject.toml or requirements-serve.in: re-resolve make's lock, then the
# bento's, held to the same versions; then `make setup`.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev $(LOCK_ARGS) -o requirements-dev.lock
	$(BIN)/uv pip compile requirements-serve.in --constraint requirements-dev.lock $(LOCK_ARGS) \
	  -o requirements-serve.lock

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
	$(BIN)/python -m pytest $(PYTEST_WORKERS)

bench: $(STAMP)  # after `make run`: ~3 min; the training benchmarks need a clean preset, see their docstrings
	$(BIN)/python benchmarks/ingest_validate.py
	$(BIN)/python benchmarks/preprocess_throughput.py --repeats 3
	$(BIN)/python benchmarks/serve_latency.py

clean-venv:
	rm -rf $(VENV)
