# The course's two commands:  `make course` (set up + open JupyterLab)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# No GPU? `make course TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes PyTorch's CPU build
# (about 3 GB less than PyPI's, which carries CUDA), at the versions pyproject.toml pins.
TORCH_INDEX ?=
TORCH_PINS  := $(shell grep -oE '"torch(vision)?==[^"]+"' pyproject.toml | tr -d '"')

.PHONY: course test setup unit nbval browser clean help
.NOTPARALLEL:   # one PyTorch job at a time: two on two cores take many times as long

course: setup  ## set everything up (first time only) and start JupyterLab, opened on notebook 00
	$(BIN)/python lab/course.py $(LAB_ARGS)

test: unit nbval browser  ## unit tests, every notebook under nbval, then the lab in Chromium

unit: $(VENV)/.installed-test  ## the unit tests; -rs says why any was skipped (no bubblewrap, Slurm, ...)
	$(BIN)/python -m pytest -rs tests --ignore=tests/browser

nbval: $(VENV)/.installed-test  ## every notebook in the test profile, its outputs against the stored ones
	$(BIN)/python -m pytest --nbval notebooks/ -rs

browser: $(VENV)/.installed-test  ## the lab in Chromium; skipped, saying how to enable it, without /usr/bin/chromium
	$(BIN)/python -m pytest -rs tests/browser

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml lab/overrides.json
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "The course needs Python 3.11 or newer; run with PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --index-url $(TORCH_INDEX) $(TORCH_PINS))
	$(BIN)/python -m pip install -e .
	$(BIN)/python lab/course.py --install-settings
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed  ## + the test-only extra (diffusers, playwright, repo2docker)
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

clean:  ## remove the virtual environment and trained checkpoints
	rm -rf $(VENV) checkpoints

help:  ## this list of targets
	@awk -F':.*## ' '/^[a-z.-]+:.*## /{printf "%-8s %s\n", $$1, $$2}' Makefile
