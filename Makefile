# nri-optimizer: the project's verbs.
#   make demo     profile a demo image on a private containerd it starts and tears down (needs root)
#   make test     unit tests + end-to-end tests against real containerd 2.1 and 1.7 (needs root)
#   make nydus    the nydus tool chain into the cache: nydus-rs 2.2.0 (cargo; minutes, once), crictl (go),
#                 containerd-nydus-grpc and docker-registry (Debian); testbed/toolchain.py
#   make bench    what tracing costs, against a real containerd (benchmarks/cost/; README.md "What tracing costs")
#   make bench-image   what the list buys, against the fastest start the link allows (docs/benchmarks.md)
#   make proto    regenerate nri_optimizer/nri/proto/*_pb2.py from proto/*.proto
#   make ffi      regenerate optimizer_server/_libc.py (cffi, out-of-line ABI mode) from libc_build.py
#   make lint     ruff check, ruff format --check and mypy --strict (make test runs it first)
#   make optimizer, make install-optimizer, make uninstall-optimizer   (as upstream; see README.md "Install")

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
LINTED := nri_optimizer optimizer_server testbed benchmarks deploy tests

.PHONY: all venv optimizer demo test unit e2e stress lint proto ffi clean nydus

all: optimizer

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m testbed demo

# Fetch containerd, runc and busybox into the cache first, so that a missing archive fails loudly here.
test: venv lint nydus
	$(PY) -m testbed fetch
	$(PY) -m pytest -m 'not stress' $(PYTEST_ARGS)

# Built or fetched once into the cache (NRI_OPTIMIZER_CACHE, default ~/.cache/nri-optimizer); then offline.
nydus: venv
	$(PY) -m testbed tools

unit: venv
	$(PY) -m pytest tests/unit tests/server $(PYTEST_ARGS)

e2e: venv nydus
	$(PY) -m testbed fetch
	$(PY) -m pytest tests/e2e -m 'not stress' $(PYTEST_ARGS)

stress: venv
	$(PY) -m testbed fetch
	$(PY) -m pytest -m stress $(PYTEST_ARGS)

lint: venv
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m mypy nri_optimizer optimizer_server testbed benchmarks deploy

proto: venv
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m grpc_tools.protoc -Iproto --python_out=nri_optimizer/nri/proto --pyi_out=nri_optimizer/nri/proto \
		proto/nri.proto proto/ttrpc.proto

ffi: venv
	$(PY) -m optimizer_server.libc_build

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# --- install, as upstream's: upstream's paths, each overridable; DESTDIR prefixes them all ---------------
# PYTHON is the interpreter the installed venv is based on. A venv cannot be moved, so with DESTDIR every
# installed path (launchers, server_path, the unit) names the copy under DESTDIR: a working tree to test in
# place, not a staging area (see deploy/install.py).
PREFIX_VENV ?= /opt/nri-optimizer/venv
PLUGIN_DIR ?= /opt/nri/plugins
BINDIR ?= /usr/local/bin
CONF_DIR ?= /etc/nri/conf.d
PERSIST_DIR ?= /opt/nri/optimizer/results
SYSTEMD_DIR ?= /etc/systemd/system
WHEELHOUSE := build/wheelhouse
# Standard library only, from the source tree: uninstall works even after make clean.
OPTIMIZER_INSTALL := $(PYTHON) -m deploy.install --destdir '$(DESTDIR)' --venv '$(PREFIX_VENV)'

.PHONY: install-optimizer uninstall-optimizer

# The project and its dependencies as wheels: installing then needs no network and no source tree.
# Rebuilt when a module or a package directory changes (a directory's time covers deleted modules); build/lib
# goes too, or setuptools would carry deleted modules over from it.
OPTIMIZER_SOURCES := $(wildcard nri_optimizer/*.py nri_optimizer/*/*.py nri_optimizer/*/*/*.py optimizer_server/*.py)
optimizer: $(WHEELHOUSE)/.built

$(WHEELHOUSE)/.built: $(VENV)/.installed pyproject.toml $(OPTIMIZER_SOURCES) $(sort $(dir $(OPTIMIZER_SOURCES)))
	rm -rf build/lib $(WHEELHOUSE)
	$(PY) -m pip wheel --quiet --wheel-dir $(WHEELHOUSE) '.[metrics]'
	touch $@

install-optimizer: optimizer
	$(OPTIMIZER_INSTALL) install --plugin-dir '$(PLUGIN_DIR)' --bindir '$(BINDIR)' --conf-dir '$(CONF_DIR)' \
		--persist-dir '$(PERSIST_DIR)' --systemd-dir '$(SYSTEMD_DIR)' --pip-python $(PY) --wheelhouse $(WHEELHOUSE)

uninstall-optimizer:
	$(OPTIMIZER_INSTALL) uninstall

# --- the optimizer benchmark (benchmarks/cost/, shared docs BENCH.md §1) ------------------------------------------
# make bench BENCH_ARGS="--upstream-plugin PATH --upstream-server PATH" adds upstream's plugin as an anchor.
# Ours is measured as make install-optimizer installs it (its own venv, no editable-install hooks), into a DESTDIR.
BENCH_ARGS ?=
BENCH_INSTALL := $(CURDIR)/build/bench-install

.PHONY: bench bench-quick

bench: venv
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m testbed fetch 2.1
	$(MAKE) --no-print-directory install-optimizer DESTDIR='$(BENCH_INSTALL)' > /dev/null
	$(PY) -m benchmarks.cost --plugin '$(BENCH_INSTALL)$(PLUGIN_DIR)/02-optimizer-nri-plugin' \
		--server '$(BENCH_INSTALL)$(BINDIR)/optimizer-server' $(BENCH_ARGS)

bench-quick: venv
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m testbed fetch 2.1
	$(PY) -m benchmarks.cost --quick $(BENCH_ARGS)

# --- what the list buys (benchmarks/prefetch/; docs/benchmarks.md has the figures of one run) ----------------------
# Three realistic workloads, the five variants (and the unordered blob and nydusd's own list), two link settings,
# against the bound. make bench-image BENCH_IMAGE_ARGS="--repetitions 5 --throttle 100mbit/40ms" changes them.
BENCH_IMAGE_CONFIG ?= examples/bench-image-apps.yaml
BENCH_IMAGE_OUT ?= build/bench-image
BENCH_IMAGE_ARGS ?=

.PHONY: bench-image

bench-image: venv nydus
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m testbed fetch 2.1
	$(PY) -m nri_optimizer bench-image run $(BENCH_IMAGE_CONFIG) --out $(BENCH_IMAGE_OUT) $(BENCH_IMAGE_ARGS)
