# The two commands a newcomer needs are `make demo` and `make test`.
# Both create the virtual environment and install what the machine lacks.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps test-deps demo test lint typecheck unit bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages for the real container stack (Docker Engine, registry, gcc);
# the tests also need Chromium (headless) for the fleet report.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	$(SUDO) bash tools/stack/install.sh

test-deps:
	$(SUDO) bash tools/stack/install.sh --with-browser

# make demo DEMO_ARGS="--dir /tmp/centops-demo"
demo: setup system-deps
	$(BIN)/python -m centops.tools.demo $(DEMO_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy reads the installed `centops` namespace through a link tree, since the
# package folders (agent/, tools/, schemas/) are mapped, not nested.
typecheck: setup
	@mkdir -p build/typecheck/centops
	@ln -sfn ../../../agent build/typecheck/centops/agent
	@ln -sfn ../../../tools build/typecheck/centops/tools
	@ln -sfn ../../../schemas build/typecheck/centops/schemas
	$(BIN)/mypy -p centops.agent -p centops.tools

unit: setup test-deps
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

test: lint typecheck unit

bench: setup system-deps
	$(BIN)/python -m centops.tools.bench

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
