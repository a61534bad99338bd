# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JOB ?= jobs/quickstart.yaml

.PHONY: run test install dev lint bench clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PY) -m pip install -q -e '.[dev,ray]'
	touch $@

install: $(VENV)/.runtime
dev: $(VENV)/.dev

run: install
	$(VENV)/bin/runner run $(JOB) --html

test: dev
	$(PY) -m pytest -q

lint: dev
	$(VENV)/bin/ruff check runner tests benchmarks
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
