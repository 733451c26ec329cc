# make run: set up and train the notebook's LeNet; make test: set up and run the tests;
# make test-fast: the tests that run no sweep's trials (the edit loop).
VENV ?= .venv
PY := $(VENV)/bin/python
DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data run sweep test test-fast bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed data

$(DATA):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

data: $(DATA)

run: setup
	$(PY) -m lenet_sweep $(ARGS)

sweep: setup
	$(PY) -m lenet_sweep -m hydra/sweeper=optuna $(ARGS)

# pytest-xdist: the tests isolate their stores and ports; tests sharing one sweep are grouped
# (xdist_group) so one worker runs it once. TEST_WORKERS=0 runs them in this process, one at a time.
TEST_WORKERS ?= 3
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

test: setup
	$(PYTEST) $(ARGS)

test-fast: setup
	$(PYTEST) -m "not sweep" $(ARGS)
