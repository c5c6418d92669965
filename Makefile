# The two commands of the README: `make test` and `make demo`.
# Both work in a virtual environment of their own (.venv), so a system Python
# that refuses `pip install` (PEP 668, Debian's "externally-managed-environment")
# is never touched.
SYSTEM_PYTHON ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip --disable-pip-version-check

.PHONY: test demo install bench lint venv docs matrix

$(PYTHON):
	./scripts/system-deps.sh
	$(SYSTEM_PYTHON) -m venv $(VENV)

venv: $(PYTHON)

install: venv
	./scripts/system-deps.sh
	$(PIP) install --quiet -e ".[test]"

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy
	node --test tests/js/
	$(PYTHON) -m sphinx -W --keep-going -n -q -b html docs docs/_build/html
	$(PYTHON) -m pytest
	$(PYTHON) -m nox -s lowest

# The version matrix (noxfile.py): the core tests on the floors of install_requires
# and on the newest releases, each in a virtual environment of its own under .nox/.
matrix: install
	$(PYTHON) -m nox -s lowest newest

demo: venv
	$(PIP) install --quiet -e .
	$(PYTHON) -m example_app

bench: install
	$(PIP) install --quiet -e ".[bench]"
	$(PYTHON) -m benchmarks

docs: install
	$(PYTHON) -m sphinx -W --keep-going -n -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
