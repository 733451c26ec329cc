# make run: set up and train the notebook's LeNet; make test: set up and run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data run sweep test bench

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

test: setup
	$(PY) -m pytest $(ARGS)
