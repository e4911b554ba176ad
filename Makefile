# `make test` and `make demo` set up .venv on first use (idempotent: a stamp file
# skips the install when pyproject.toml and constraints.txt are unchanged).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.torchpenalty-installed

.PHONY: setup test lint demo tutorial bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,cli]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/torchpenalty sweep

tutorial: $(STAMP)
	$(PY) examples/tutorial_done_right.py

bench: $(STAMP)
	$(PY) benchmarks/step_overhead.py
	$(PY) benchmarks/sweep_speed.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
