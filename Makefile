# The two commands of the README, `make book` and `make test`, work as the first command in a fresh
# clone.  Both install what they need from requirements*.txt first, and both use this checkout's
# lidlib (PYTHONPATH), not an installed copy.
#
# Where they install: into the active virtual environment (or conda environment) if make runs inside
# one; otherwise into a project venv, .venv/ (made here with `python3 -m venv`), so that a system
# Python that refuses `pip install` (PEP 668, "externally managed environment") is never touched.
# `make PYTHON=/path/to/python book` uses that interpreter as it is.
VENV ?= .venv
IN_ENV := $(shell python3 -c 'import os, sys; print(int(sys.prefix != sys.base_prefix or bool(os.environ.get("CONDA_PREFIX"))))' 2>/dev/null)
ifeq ($(origin PYTHON),undefined)
  ifeq ($(IN_ENV),1)
    PYTHON := python3
  else
    PYTHON := $(CURDIR)/$(VENV)/bin/python
    MAKE_VENV := $(PYTHON)
  endif
endif
# The environment's scripts (jupyter-book, jupyter, pytest) come first on PATH.
SCRIPTS = $$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
PIP_INSTALL = $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: book test check-book bench

book: $(MAKE_VENV)   ## build the whole book, offline, executing every chapter (-W: warnings are errors)
	$(PIP_INSTALL) -r requirements.txt
	PATH="$(SCRIPTS):$$PATH" bash scripts/build_book.sh

test: $(MAKE_VENV)   ## run the test suite (library, oracles, widgets, exercise solutions, install routes)
	$(PIP_INSTALL) -r requirements.txt -r requirements-test.txt
	PATH="$(SCRIPTS):$$PATH" $(PYTHON) -m pytest -q

check-book:      ## load every built page in headless Chromium (needs: apt-get install chromium)
	$(PYTHON) scripts/check_book.py

bench:           ## speed benchmark: ratios to a plain gradient, measured in the same run
	$(PYTHON) scripts/benchmark.py --models vgg16 efficientnet --all --oracles

$(CURDIR)/$(VENV)/bin/python:
	@echo "== not inside a virtual environment: making the project venv $(VENV)/ (python3 -m venv)"
	python3 -m venv "$(VENV)" || { echo "error: 'python3 -m venv' failed; on Debian/Ubuntu: sudo apt install python3-venv" >&2; exit 1; }
