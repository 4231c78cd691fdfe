# The course's two commands:  `make course` (set up + open JupyterLab)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: course test setup unit nbval clean

course: setup  ## set everything up (first time only) and start JupyterLab on the notebooks
	$(BIN)/jupyter lab notebooks/

test: $(VENV)/.installed-test  ## unit tests, then every notebook under nbval in the test profile
	$(BIN)/python -m pytest tests
	$(BIN)/python -m pytest --nbval notebooks/

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "The course needs Python 3.11 or newer; run with PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed  ## + the test-only extra (diffusers)
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

clean:  ## remove the virtual environment and trained checkpoints
	rm -rf $(VENV) checkpoints
