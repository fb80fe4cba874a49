# One entry point for people and CI. Every target creates what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv install test test-unit lint run demo bench clean system-deps

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,airflow,mlflow]'
	touch $(STAMP)

venv install: $(STAMP)

# promtool, prometheus, amtool, alertmanager and redis-server come from Debian; install them
# when missing and we are root.
system-deps:
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      prometheus prometheus-alertmanager >/dev/null; \
	  else echo "promtool/amtool not found: install the Debian packages 'prometheus' and" \
	    "'prometheus-alertmanager' (sudo apt-get install prometheus prometheus-alertmanager)"; exit 1; fi; \
	fi
	@# redis-server: the Celery broker of the CeleryExecutor tests (issue 13).
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      redis-server >/dev/null; \
	  else echo "redis-server not found: install the Debian package 'redis-server'" \
	    "(sudo apt-get install redis-server)"; exit 1; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check watcher
	$(BIN)/mypy

test: $(STAMP) system-deps
	$(BIN)/pytest --durations=25

# tests/unit alone: no Airflow, PostgreSQL, network or system package; seconds, not minutes.
test-unit: $(STAMP)
	$(BIN)/pytest tests/unit

EXAMPLE := examples/bikeshare/watcher.toml

# The daemon alone on the bundled example; version 1 is trained first if there is none.
run: $(STAMP)
	$(BIN)/watcher bootstrap bikeshare --config $(EXAMPLE)
	$(BIN)/watcher run --config $(EXAMPLE)

demo: $(STAMP) system-deps
	$(BIN)/watcher demo --config $(EXAMPLE)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_scoring.py

clean:
	rm -rf $(VENV) .watcher .pytest_cache .mypy_cache .ruff_cache
