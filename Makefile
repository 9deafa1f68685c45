# `make demo` runs the main job on the built-in CPU default; `make test` installs what tests need and runs them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(VENV)/bin/pip install -q -r requirements-test.txt
	touch $@

.PHONY: demo test
demo: $(VENV)/.installed
	$(PY) -m unirl_jax.demo

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests
