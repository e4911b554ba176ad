# `make demo`, `make test` and `make check` set up .venv on first use (idempotent: stamp
# files skip the install while pyproject.toml and constraints.txt are unchanged). The demo
# installs only what the command line needs; tests add the dev extras (Lightning,
# transformers, skorch, Dask...).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.torchpenalty-cli
DEV := $(VENV)/.torchpenalty-dev
# A fast subset for contributors: doctests and the core tables (under a minute).
CHECK_TESTS := src/torchpenalty tests/test_penalties.py tests/test_select.py \
	tests/test_regularizer.py tests/test_rules.py tests/test_readme.py

.PHONY: setup test check lint demo tutorial bench clean

setup: $(DEV)

$(BASE): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[cli]"
	touch $(BASE)

$(DEV): $(BASE)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,cli]"
	touch $(DEV)

lint: $(DEV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

check: lint
	$(PY) -m pytest -x $(CHECK_TESTS)

demo: $(BASE)
	$(VENV)/bin/torchpenalty sweep

tutorial: $(BASE)
	$(PY) examples/tutorial_done_right.py

bench: $(DEV)
	$(PY) benchmarks/step_overhead.py
	$(PY) benchmarks/sweep_speed.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
