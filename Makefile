# One entry point for set-up, demo and tests. Everything installs into .venv from the package registries.
VENV ?= .venv
PY := $(VENV)/bin/python
# the CPU build of torch that this project is developed against; override for a GPU machine
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,progress]"
	touch $@

demo: setup
	$(PY) examples/demo.py --out out/demo

test: setup
	$(PY) -m ruff check florence2 tests examples benchmarks scripts
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(PY) -m ruff check florence2 tests examples benchmarks scripts
	$(PY) -m ruff format --check florence2 tests examples benchmarks scripts

clean:
	rm -rf out .pytest_cache
