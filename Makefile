# Two entry points on a fresh machine: `make demo` and `make test`.
# Each creates (or refreshes) its own virtualenv and installs the CPU build of torch first,
# so that nothing later pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
ZENNIT ?= zennit==0.5.1

$(VENV)/.stamp-base: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[report]'
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(PY) -m pip install -q -e '.[test,report,docs]'
	# zennit's torchvision dependency would pull a CUDA torch: install it without deps.
	$(PY) -m pip install -q --no-deps $(ZENNIT)
	touch $@

$(VENV)/.stamp-docs: $(VENV)/.stamp-base
	$(PY) -m pip install -q -e '.[report,docs]'
	touch $@

# Debian packages: chromium + chromedriver for the HTML report test, Fashion-MNIST (IDX files) for
# training (root on CI machines).
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && \
	  test -d /usr/share/datasets/fashion-mnist || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver dataset-fashion-mnist >/dev/null)

.PHONY: demo test docs lint bench system-deps
demo: $(VENV)/.stamp-base
	$(PY) -m fragile audit --out demo-output

test: $(VENV)/.stamp-test system-deps
	$(PY) -m ruff check src tests benchmarks docs
	$(PY) -m pytest -q

# The documentation site (MkDocs + Material + mkdocstrings) into site/; warnings are errors. pytest builds it
# too (tests/test_docs.py) and opens it in headless Chromium; the tutorials run in tests/test_tutorials.py.
docs: $(VENV)/.stamp-docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

bench: $(VENV)/.stamp-test
	$(PY) benchmarks/explanations.py
