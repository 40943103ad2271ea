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

# Every figure of issue 13's "Done when" in one run, each beside its ceiling measured in the same
# run and with the machine printed (README "Benchmarks"); BENCH_ARGS=--quick for a smoke run.
# stack_bench: CPU per probe event per process at 100, 1,000 and 5,000 events/s, published ->
# stored p50/p95/p99, the POST path (posted -> stored) and batched ingest; ingest_bench e: the
# persister against COPY; spc_bench: the SPC service against raw consume; chart_bench: the 24 h
# chart; compare_bench: issue 11's comparison chart.
bench: install
	$(VENV)/bin/python bench/stack_bench.py $(BENCH_ARGS)
	$(VENV)/bin/python bench/frontdoor_bench.py $(BENCH_ARGS)
	$(VENV)/bin/python bench/ingest_bench.py --only e $(BENCH_ARGS)
	$(VENV)/bin/python bench/spc_bench.py $(BENCH_ARGS)
	$(VENV)/bin/python bench/chart_bench.py $(BENCH_ARGS)
	$(VENV)/bin/python bench/compare_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .uv .pytest_cache .mypy_cache .ruff_cache
