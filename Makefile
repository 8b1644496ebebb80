# avalanche-mm developer entry points. Quick start: `make demo`, `make test`, `make docs`.
# Both create the virtual environment and install the package (pinned torch, CPU
# friendly, via constraints.txt) when needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test install clean-venv bench docs docs-serve

# reinstalled whenever the dependencies or this install line change
$(STAMP): setup.cfg pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,docs]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/avalanche-mm run

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# the documentation site (site/), offline; strict: any warning (broken link, bad docstring) fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(PY) benchmarks/template_overhead.py
	$(PY) benchmarks/world_generation.py
	$(PY) benchmarks/metrics_overhead.py
	$(PY) benchmarks/feature_cache.py
	$(PY) benchmarks/collate.py
	$(PY) benchmarks/zscl_cost.py

clean-venv:
	rm -rf $(VENV)
