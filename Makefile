# fedsim — the README's two commands are `make run` and `make test`.
# Both bootstrap .venv (created when missing or when pyproject.toml changes)
# and make sure the Fashion-MNIST files are present before doing their job.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1

.PHONY: run test test-fast lint typecheck unit data chromium install benchmark clean ui

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "fedsim: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; \
		exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

data:
	@sh scripts/ensure_data.sh

# Headless Chromium renders report.html in the report test (Debian's package).
chromium:
	@sh scripts/ensure_chromium.sh

# Level 5 needs workers started independently of the coordinator: `make run`
# starts them as TLS daemons on 127.0.0.2, 127.0.0.3, ... and stops them after.
L5_DIR := .fedsim/level5

# UP_ARGS go to `fedsim worker up`: give it the same --workers/--train-samples/
# --partition/--seed as ARGS gives the run (the run refuses workers holding other data).
UP_ARGS ?=

run: $(STAMP) data
	@trap '$(BIN)/fedsim worker down --dir $(L5_DIR)' EXIT INT TERM; \
		$(BIN)/fedsim worker up --dir $(L5_DIR) $(UP_ARGS) && \
		$(BIN)/fedsim run --levels baseline,1,2,2:secure,3,4,5,encrypted-eval --workers-file $(L5_DIR)/workers.toml $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# One pytest process per core (pytest-xdist), each taking whole test files, so
# a module's servers and daemons start once: most end-to-end tests wait on
# processes and servers, and two of them share a 2-core machine well.
# ARGS="-n 0" runs everything in this process.
unit: $(STAMP) data chromium
	$(BIN)/python -m pytest -n auto --dist loadfile $(ARGS)

test: lint typecheck unit

# The tests that start no server, process or flow (no `e2e` marker): about a minute.
test-fast: $(STAMP) data
	$(BIN)/python -m pytest -m "not e2e" -q $(ARGS)

UI_PORT ?= 5000

# MLflow UI over the project's store, loopback only: http://127.0.0.1:$(UI_PORT)
ui: $(STAMP)
	@mkdir -p mlruns/artifacts
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts \
		--host 127.0.0.1 --port $(UI_PORT) --workers 1

benchmark: $(STAMP) data
	$(BIN)/python benchmarks/levels.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
