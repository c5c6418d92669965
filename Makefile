# The two commands of the README: `make test` and `make demo`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: test demo install bench lint

install:
	./scripts/system-deps.sh
	$(PIP) install --quiet --disable-pip-version-check -e ".[test]"

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

demo:
	$(PIP) install --quiet --disable-pip-version-check -e .
	$(PYTHON) -m example_app

bench: install
	$(PIP) install --quiet --disable-pip-version-check -e ".[bench]"
	$(PYTHON) -m benchmarks

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
