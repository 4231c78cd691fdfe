# The course's two commands:  `make course` (set up + open JupyterLab)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: course test setup unit nbval clean

course: setup  ## set everything up (first time only) and start JupyterLab, opened on notebook 00
	$(BIN)/python lab/course.py $(LAB_ARGS)

test: $(VENV)/.installed-test  ## unit tests, every notebook under nbval, then the lab in Chromium
	$(BIN)/python -m pytest tests --ignore=tests/browser
	$(BIN)/python -m pytest --nbval notebooks/
	$(BIN)/python -m pytest -rs tests/browser  # skipped, saying how to enable it, without /usr/bin/chromium

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml lab/overrides.json
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "The course needs Python 3.11 or newer; run with PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e .
	$(BIN)/python lab/course.py --install-settings
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed  ## + the test-only extra (diffusers, playwright, repo2docker)
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

clean:  ## remove the virtual environment and trained checkpoints
	rm -rf $(VENV) checkpoints
