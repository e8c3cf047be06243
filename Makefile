# genbench: the two commands of the quick start are `make demo` and `make test`.
# Each one sets up everything it needs first (venv, pinned stack, Fashion-MNIST), so both work
# on a brand-new machine that has only Python 3.11 and the package registries.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.genbench-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: setup data demo test lint clean-outputs

setup: $(STAMP) data

# torch first, by exact version: pip takes it from the local wheel cache where one exists and
# never drifts to another CUDA build. Then the project itself (editable: configs live in conf/).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (no dataset downloads here).
data:
	@if [ -f $(FMNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; \
	else echo "warning: Fashion-MNIST not installed; run 'sudo apt-get install dataset-fashion-mnist' (tests that need it will skip)"; fi

# The main job: the three families trained under one budget and compared in one report
# (outputs/benchmark/<date>_<time>/report.html). BUDGET=full for GPU-sized budgets.
BUDGET ?= cpu
demo: setup
	$(BIN)/genbench-benchmark budget=$(BUDGET)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

clean-outputs:
	rm -rf outputs
