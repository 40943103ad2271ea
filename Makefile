# The two front doors: `make up` starts the whole stack, `make test` runs the whole suite.
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .uv/bin/uv
VENV := .venv
STAMP := $(VENV)/.installed
PYPROJECTS := pyproject.toml $(wildcard proto/pyproject.toml services/*/pyproject.toml)

.PHONY: install up test test-faults lint typecheck schemas docs nats-users bench clean

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "LLMscope needs Python 3.11 or newer; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): $(UV) uv.lock $(PYPROJECTS)
	UV_PYTHON=$(PYTHON) $(UV) sync --frozen --all-packages
	@touch $(STAMP)

install: $(STAMP)

up: install
	$(VENV)/bin/llmscope up

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m llmscope.proto.schemagen --check
	$(VENV)/bin/python -m llmscope.stack.docs --check
	$(VENV)/bin/python -m llmscope.stack.natsconf --check
	bash .ci/system-packages
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The fault-injection suite alone (also part of `make test`): processes killed with SIGKILL,
# nats-server and Postgres stopped or frozen, poison events. README "Guarantees" lists each.
test-faults: install
	$(VENV)/bin/python -m pytest -m fault $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

schemas: install
	$(VENV)/bin/python -m llmscope.proto.schemagen

docs: install
	$(VENV)/bin/python -m llmscope.stack.docs

# The NATS users of compose and Kubernetes, from llmscope.proto.permissions.
nats-users: install
	$(VENV)/bin/python -m llmscope.stack.natsconf

bench: install
	$(VENV)/bin/python bench/spc_bench.py
	$(VENV)/bin/python bench/stack_bench.py
	$(VENV)/bin/python bench/compare_bench.py

clean:
	rm -rf $(VENV) .uv .pytest_cache .mypy_cache .ruff_cache
