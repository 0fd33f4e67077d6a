# Everything the commands need is set up here, in a project-local virtual environment.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.ember-installed
DEMO_STAMP := $(VENV)/.ember-demo-installed

.PHONY: demo test lint typecheck bench docs browser clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first, pinned, so nothing later resolves a multi-GB CUDA build.
	$(PIP) install -q -c constraints.txt torch==2.13.0

# `make demo` installs only what the demo needs: ember, TensorBoard and matplotlib (the `demo` extra).
$(DEMO_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e ".[demo]"
	touch $(DEMO_STAMP)

# `make test` installs everything the suite exercises. DeepSpeed is built against the torch installed above (no
# build isolation, which would fetch an unpinned torch) before the extras; its one CPU op is compiled here, once,
# into the cache the tests use.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt --no-build-isolation deepspeed
	$(PIP) install -q -c constraints.txt -e ".[all,bench,dev,cli,report,docs,examples]"
	DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR=$(abspath $(VENV))/torch-extensions $(PY) -c \
		"from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) examples/demo.py $(ARGS)

# Headless Chromium renders `ember report` pages in the tests (Debian's package; needs root and apt-get).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (Debian package) for the report's browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the report's browser test will be skipped"; \
	  else echo "chromium is not installed and cannot be installed here: the report's browser test will be skipped"; fi; }

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy src/ember

test: $(STAMP) browser lint typecheck
	$(PY) -m pytest -q -ra tests

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site
	@echo "the site is in site/ (open site/index.html)"

bench: $(STAMP)
	$(PY) bench/overhead_cpu.py

clean:
	rm -rf $(VENV) runs site .pytest_cache .mypy_cache .ruff_cache
