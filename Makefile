# clinicguard — developer entry points. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet
UV_LOCK := $(BIN)/uv pip compile pyproject.toml requirements/build.in --python-version 3.11 --universal --generate-hashes --no-header -q
export CLINICGUARD_DATA_DIR ?= $(CURDIR)/var

.DEFAULT_GOAL := help
.PHONY: help install install-dev run test lint fmt bench lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "clinicguard needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)

# Runtime dependencies, pinned with hashes; re-run only when the lock file changes.
$(VENV)/.installed-runtime: requirements/runtime.lock.txt pyproject.toml | $(BIN)/python
	$(PIP) install --require-hashes --no-deps -r requirements/runtime.lock.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	@touch $@

$(VENV)/.installed-dev: requirements/dev.lock.txt pyproject.toml | $(BIN)/python
	$(PIP) install --require-hashes --no-deps -r requirements/dev.lock.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	@touch $@ $(VENV)/.installed-runtime

install: $(VENV)/.installed-runtime ## create .venv with the pinned runtime dependencies

install-dev: $(VENV)/.installed-dev ## .venv with the pinned runtime and development dependencies

run: install ## migrate, seed the demo clinics on first start, and serve on 127.0.0.1:8000
	$(BIN)/clinicguard migrate
	$(BIN)/clinicguard demo seed --if-empty --out $(CLINICGUARD_DATA_DIR)/demo-credentials.json
	$(BIN)/clinicguard serve

test: install-dev ## run every test (PostgreSQL/Redis tests skip unless reachable or CLINICGUARD_REQUIRE_SERVICES=1)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev ## ruff, mypy --strict on the package, import-linter contracts
	$(BIN)/ruff check clinicguard tests bench
	$(BIN)/ruff format --check clinicguard tests bench
	$(BIN)/mypy clinicguard
	$(BIN)/lint-imports

fmt: install-dev ## format and auto-fix
	$(BIN)/ruff format clinicguard tests bench
	$(BIN)/ruff check --fix clinicguard tests bench

bench: install-dev ## benchmarks against a bare endpoint doing the same database work (needs PostgreSQL + Redis)
	$(BIN)/python -m bench $(BENCH_ARGS)

lock: install-dev ## re-pin requirements/*.lock.txt from pyproject.toml
	$(UV_LOCK) -o requirements/runtime.lock.txt
	$(UV_LOCK) --extra dev -o requirements/dev.lock.txt

clean: ## remove the virtualenv and caches (keeps var/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
