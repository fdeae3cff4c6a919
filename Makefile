# The two commands: `make demo` and `make test`. Both install what is missing first.
VENV := .venv
PY := $(VENV)/bin/python
LAB ?= .lab

.PHONY: setup demo test test-fast bench lab-down clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/edgesync demo --dir $(LAB)

test: setup
	$(PY) -m pytest -ra $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -ra -m "not ceph and not e2e" $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

lab-down:
	-$(VENV)/bin/edgesync lab down --dir $(LAB)

clean: lab-down
	rm -rf $(LAB) .pytest_cache
