# nri-optimizer: the project's verbs.
#   make test     unit tests + end-to-end tests against real containerd 2.1 and 1.7 (needs root)
#   make proto    regenerate nri_optimizer/proto/*_pb2.py from proto/*.proto
#   make lint     ruff and mypy

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all venv optimizer test unit e2e stress lint proto clean

all: optimizer

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

optimizer: venv

# Fetch containerd, runc and busybox into the cache first, so that a missing archive fails loudly here.
test: venv
	$(PY) -m nri_optimizer.testbed fetch
	$(PY) -m pytest -m 'not stress' $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit tests/server $(PYTEST_ARGS)

e2e: venv
	$(PY) -m nri_optimizer.testbed fetch
	$(PY) -m pytest tests/e2e -m 'not stress' $(PYTEST_ARGS)

stress: venv
	$(PY) -m nri_optimizer.testbed fetch
	$(PY) -m pytest -m stress $(PYTEST_ARGS)

lint: venv
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ruff check nri_optimizer optimizer_server tests
	$(PY) -m mypy nri_optimizer optimizer_server

proto: venv
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m grpc_tools.protoc -Iproto --python_out=nri_optimizer/proto --pyi_out=nri_optimizer/proto \
		proto/nri.proto proto/ttrpc.proto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
