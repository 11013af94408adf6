# The two commands: `make demo` and `make test`. Both set everything up on a
# fresh machine (the virtual environment in .venv, and for tests the system
# packages the suite needs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.taonet-installed
# The extras .venv gets for the demo and the tools (dev: the pinned tools).
EXTRAS := dev
# The extras every test virtual environment gets (.venv and the .venv-X.Y of unit-all):
# the TPM 2.0 tests need tpm2-pytss, which builds against libtss2-dev (system-deps).
TEST_EXTRAS := dev,tpm2-pinned
TEST_STAMP := $(VENV)/.taonet-test-installed

.PHONY: demo demo-hosted demo-upgrade demo-tpm2 test lint typecheck unit unit-all bench system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# pip shows what it collects and installs: the first run takes a minute or so.
$(STAMP): $(BIN)/python pyproject.toml Makefile
	@echo "######## installing taonet and what it needs into $(VENV) (first run only) ########"
	$(BIN)/pip install --progress-bar on -e '.[$(EXTRAS)]'
	touch $(STAMP)

# simpleexample end to end; the second run shows the operation phase reusing the
# sealed state of the first (delete .taonet-demo to start afresh).
demo: $(STAMP)
	$(BIN)/taonet --help
	$(BIN)/taonet demo --dir .taonet-demo
	@echo; echo "######## second run: reusing the sealed state ########"
	$(BIN)/taonet demo --dir .taonet-demo

# The same with every program a child process of a Linux Tao host started for it.
demo-hosted: $(STAMP)
	$(BIN)/taonet demo --hosted --dir .taonet-demo-hosted

# An upgrade that keeps its data: version 2 gets version 1's key by a disclosure
# directive (from version 1 itself, then from the secret server) and rotates it.
demo-upgrade: $(STAMP)
	$(BIN)/taonet demo --upgrade --dir .taonet-demo-upgrade

# simpleexample on a Linux host whose root is a software TPM (swtpm) the demo starts,
# with its quote key certified by the quote service. Needs the system packages
# (system-deps: swtpm, swtpm-tools, libtss2-dev) and the tpm2 extra.
TPM2_STAMP := $(VENV)/.taonet-tpm2-installed
$(TPM2_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS),tpm2-pinned]'
	touch $(TPM2_STAMP)

demo-tpm2: system-deps $(TPM2_STAMP)
	$(BIN)/taonet demo --tpm2 --dir .taonet-demo-tpm2

# System packages the tests need: bubblewrap (sandboxed hosted programs) and a
# system python3 (a process of another user cannot reach a venv in a private home).
# swtpm and friends arrive with the TPM issue. Skipped when not root (CI runs as root).
system-deps:
	@if [ "$$(id -u)" = 0 ] && [ -n "$(APT_PACKAGES)" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

# swtpm and its setup tools are the TPM for the TPM 2.0 tests and demo; libtss2-dev and
# pkg-config are what tpm2-pytss builds against (it has no wheels: pip compiles it, with gcc,
# against the Python headers, which python3-dev gives a Debian python3; pyenv's have theirs).
APT_PACKAGES := bubblewrap python3 golang-go openssl swtpm swtpm-tools libtss2-dev pkg-config \
	gcc python3-dev

lint: $(STAMP)
	$(BIN)/ruff check taonet services examples tests loadtests
	$(BIN)/ruff format --check taonet services examples tests loadtests

typecheck: $(STAMP)
	$(BIN)/mypy

# The Python versions taonet supports (pyproject.toml's requires-python and classifiers).
PYTHON_VERSIONS := 3.11 3.12 3.13

# The suite under one interpreter: .venv's by default; `make unit PY=3.13` runs it in
# .venv-3.13, made from python3.13 on PATH or pyenv's newest 3.13.x.
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[$(TEST_EXTRAS)]'
	touch $(TEST_STAMP)

unit: $(TEST_STAMP)
ifdef PY
	PYTHON_VERSIONS="$(PY)" EXTRAS="$(TEST_EXTRAS)" CI=true bash .ci/pythons.sh
else
	$(BIN)/pytest -q
endif

# The suite under every version of PYTHON_VERSIONS this machine has (see .ci/pythons.sh):
# .venv for its own, .venv-X.Y for the others. Says which were found; with CI=true a
# version that is not found fails the run instead of being skipped.
unit-all: $(TEST_STAMP)
	PYTHON_VERSIONS="$(PYTHON_VERSIONS)" EXTRAS="$(TEST_EXTRAS)" bash .ci/pythons.sh

# Lint and type checks once (in .venv); the suite under every supported Python.
test: system-deps $(TEST_STAMP) lint typecheck unit-all

bench: $(STAMP)
	$(BIN)/python loadtests/core_bench.py
	$(BIN)/python loadtests/channel_bench.py
	$(BIN)/python loadtests/host_bench.py

clean:
	rm -rf $(VENV) .venv-3.* .taonet-demo .taonet-demo-hosted .taonet-demo-upgrade .taonet-demo-tpm2 build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
