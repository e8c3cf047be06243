# genbench: the two commands of the quick start are `make demo` and `make test`.
# Each one sets up everything it needs first (venv, the stack of constraints.txt, Fashion-MNIST),
# so both work on a brand-new machine that has only Python (3.11 to 3.13) and the package registries.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.genbench-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: setup data demo test lint constraints clean-outputs

setup: $(STAMP) data

# The project (editable: configs live in conf/) with every extra and the test tools, at the exact
# versions of constraints.txt (pyproject.toml only gives ranges). Stamped: nothing runs again until
# pyproject.toml or constraints.txt changes.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or later, or run 'make PYTHON=/path/to/python3'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# constraints.txt again from the venv (after adding or removing a dependency): its header, then
# every installed distribution but genbench itself at its exact version.
constraints: $(STAMP)
	{ sed -n '/^#/!q;p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -iv '^genbench[= @]'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

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
