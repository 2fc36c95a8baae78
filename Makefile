# Two commands on a fresh Linux machine with Python >= 3.10:
#   make run    set everything up, then train (python -m experiments.run; ARGS="..." adds flags)
#   make test   set everything up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= torch,numba,dev

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

run: setup
	$(PY) -m experiments.run $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) -m experiments.bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
