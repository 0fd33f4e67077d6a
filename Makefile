# Everything the two commands need is set up here, in a project-local virtual environment.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.ember-installed

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first, pinned, so nothing later resolves a multi-GB CUDA build.
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[all,bench,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy src/ember

test: $(STAMP) lint typecheck
	$(PY) -m pytest -q -ra tests

bench: $(STAMP)
	$(PY) bench/overhead_cpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
