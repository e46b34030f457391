# minidino: two commands do everything on a fresh machine.
#   make demo   train the cpu-demo preset on the built-in dataset and report what it learned
#   make test   every test: ruff, the generated course files, unit tests and every notebook
# Both create (or reuse) the virtual environment in .venv and install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint exercises lab bench bench-gpu speed-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m minidino demo

lint: $(STAMP)
	$(BIN)/ruff check .

# after editing a lesson in notebooks/: strip its outputs and regenerate exercises/ and solutions/
exercises: $(STAMP)
	$(BIN)/python scripts/make_exercises.py

# solutions/ is not run: it is notebooks/ without the solution markers (the generator's --check
# proves it), so running the lessons runs every line of it.
test: lint
	$(BIN)/python scripts/make_exercises.py --check
	MINIDINO_FAST=1 $(BIN)/python -m pytest --nbval-lax --durations=15 \
		tests $(wildcard notebooks/*.ipynb) $(wildcard exercises/*.ipynb)

# the unit tests without the slow ones (browser, training runs in subprocesses) and no notebooks
test-fast: lint
	MINIDINO_FAST=1 $(BIN)/python -m pytest -m "not slow" tests

# the course: start with exercises/00_setup_and_tour.ipynb
lab: $(STAMP)
	$(BIN)/jupyter lab

bench: $(STAMP)
	$(BIN)/python -m tools.bench augment
	$(BIN)/python -m tools.bench train

# On a machine with one CUDA GPU and CIFAR-10 as one folder per class in $(CIFAR_DIR):
CIFAR_DIR ?= data/cifar10-folder/train
bench-gpu: $(STAMP)
	PYTHONUNBUFFERED=1 $(BIN)/python -m tools.gpu_check --data-path $(CIFAR_DIR)

# The fast path's measurements on one CUDA GPU within 9 minutes (docs/benchmarks.md)
speed-check: $(STAMP)
	PYTHON=$(BIN)/python bash tools/speed_check.sh runs/speed-check

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
