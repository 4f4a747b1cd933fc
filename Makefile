# Two commands for a fresh clone: `make demo` and `make test` (both run `make setup` first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pgflow-setup
PYTEST_ARGS ?= -n 2

.PHONY: setup test demo lint docs bench mutate clean dashboard-screenshots

NODE_DEPS := tests/node/node_modules/@pgflow/dsl/package.json

setup: $(STAMP) $(NODE_DEPS)
	@$(BIN)/python scripts/fetch_upstream.py
	@sh scripts/ensure_chromium.sh
	@sh scripts/ensure_pgbouncer.sh

# Node packages for the parity and interoperability tests (pinned in tests/node/package.json).
$(NODE_DEPS): tests/node/package.json
	cd tests/node && npm install --no-package-lock --no-audit --no-fund --silent
	@touch $(NODE_DEPS)

$(STAMP): pyproject.toml pgflow/schema/pins.json scripts/fetch_upstream.py
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python 3.11+ is required: run make with PYTHON=python3.11 (or newer)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python scripts/fetch_upstream.py
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# `make demo DEMO_ARGS=--dashboard` keeps the worker running and serves the web dashboard.
demo: setup
	$(BIN)/python examples/demo.py $(DEMO_ARGS)

# Mutants of the set-based completion and claim SQL against the differential suites (tests/mutation.py).
mutate: setup
	$(BIN)/python -m tests.mutation

# mypy checks the bench adapters against the peers' real packages, so lint installs the bench extra.
lint: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs:
	@echo "The documentation is Markdown in docs/ (start at docs/index.md)."

# The peers (PgQueuer, Procrastinate, DBOS) come with the bench extra. BENCH_ARGS, e.g.
# `make bench BENCH_ARGS="--scale 0.1 --repetitions 1"`; see `python -m bench --help`.
bench: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

# Regenerates the screenshots in docs/images/ from the browser tests (docs/dashboard.md).
dashboard-screenshots: setup
	PGFLOW_DASHBOARD_SCREENSHOTS=docs/images $(BIN)/python -m pytest tests/browser -q

clean:
	rm -rf $(VENV) pgflow/schema/upstream .pytest_cache .mypy_cache .ruff_cache dist build
