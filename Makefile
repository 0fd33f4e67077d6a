# Everything the two commands need is set up here, in a project-local virtual environment.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.ember-installed
DS_STAMP := $(VENV)/.ember-deepspeed-installed
# every extra of `all` except deepspeed (the demo runs without it); keep in step with pyproject.toml
EXTRAS := tensorboard,wandb,mlflow,rich,transformers,bench,dev

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first, pinned, so nothing later resolves a multi-GB CUDA build.
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The test environment adds DeepSpeed: built against the torch installed above (no build isolation, which would
# fetch an unpinned torch), then every extra. Its one CPU op is compiled here, once, into the cache the tests use.
$(DS_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt --no-build-isolation deepspeed
	$(PIP) install -q -c constraints.txt -e ".[all,bench,dev]"
	DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR=$(abspath $(VENV))/torch-extensions $(PY) -c \
		"from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
	touch $(DS_STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy src/ember

test: $(DS_STAMP) lint typecheck
	$(PY) -m pytest -q -ra tests

bench: $(STAMP)
	$(PY) bench/overhead_cpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
