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

.PHONY: book test lint check-book bench eval

book: $(MAKE_VENV)   ## build the whole book, offline, executing every chapter (-W: warnings are errors)
	$(PIP_INSTALL) -r requirements.txt
	PATH="$(SCRIPTS):$$PATH" bash scripts/build_book.sh

test: $(MAKE_VENV)   ## lint (ruff, pyproject.toml [tool.ruff]), then the test suite (library, oracles, widgets, solutions, install routes)
	$(PIP_INSTALL) -r requirements.txt -r requirements-test.txt
	$(PYTHON) -m ruff check lidlib tests scripts book/solutions book/_ext
	PATH="$(SCRIPTS):$$PATH" $(PYTHON) -m pytest -q

lint:            ## only the linter of `make test`
	$(PYTHON) -m ruff check lidlib tests scripts book/solutions book/_ext

check-book:      ## load every built page in headless Chromium (needs: apt-get install chromium)
	$(PYTHON) scripts/check_book.py

bench:           ## speed benchmark: ratios to a plain gradient, measured in the same run
	$(PYTHON) scripts/benchmark.py --models vgg16 efficientnet --all --oracles

# the two halves of the methods run side by side (one process per core), each into its own CSV + .json;
# measured: about 12 CPU-seconds per image for the 14 methods, so ~22 min on two free cores for the 210 images
EVAL = OMP_NUM_THREADS=1 nice -n 10 $(PYTHON) -m lidlib.experiment probability-change class-discrimination \
	--eval-set --size 192 --n-steps 10 --seed 0 --figure none --no-progress --threads 1
eval: $(MAKE_VENV)   ## the full evaluation of Ch. 12 (resumes): book/results/eval-{a,b}.csv + .json (configurations)
	$(PIP_INSTALL) -r requirements.txt
	$(EVAL) --out book/results/eval-a.csv --methods GradCAM LayerCAM IG LRP-0 SG-LRP-0 SG-LRP-ZP ST-LRP-0 & \
	$(EVAL) --out book/results/eval-b.csv --methods SIG-LRP-0 DeepLIFT LID-Taylor ST-LID-Taylor SIG-LID-Taylor \
	    LID-IG SIG-LID-IG & \
	$(EVAL) --out book/results/eps.csv --limit 30 --methods $(EPS_METHODS) & \
	wait
# the ε study of Ch. 12: SG-LRP-0 and SG-LRP-ZP at ε = 0 (exact) … 1 on the first 30 images (every pair, "halves")
EPS_METHODS = $(foreach m,SG-LRP-0 SG-LRP-ZP,$(foreach e,0 1e-06 0.001 0.01 0.1 1,"$(m) (ε=$(e))"))
$(CURDIR)/$(VENV)/bin/python:
	@echo "== not inside a virtual environment: making the project venv $(VENV)/ (python3 -m venv)"
	python3 -m venv "$(VENV)" || { echo "error: 'python3 -m venv' failed; on Debian/Ubuntu: sudo apt install python3-venv" >&2; exit 1; }
