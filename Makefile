# The two commands: `make demo` and `make test`. Both install what is missing first.
VENV := .venv
PY := $(VENV)/bin/python
LAB ?= .lab

.PHONY: setup demo lint test test-wan test-fast fuzz bench lab-down clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/edgesync demo --dir $(LAB)

# ruff and mypy --strict, configured in pyproject.toml; the tests run only once they pass.
lint: setup
	$(VENV)/bin/ruff check edgesync tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -ra $(PYTEST_ARGS)

# Just the WAN lab's tests (they are in make test too).
test-wan: setup
	$(PY) -m pytest -ra -m wan $(PYTEST_ARGS)

test-fast: lint
	$(PY) -m pytest -ra -m "not ceph and not e2e" $(PYTEST_ARGS)

# The route fuzzer at 50x its make-test size (75,000 hub cases); another seed with EDGESYNC_FUZZ_SEED=N.
fuzz: setup
	EDGESYNC_FUZZ_CASES=$${EDGESYNC_FUZZ_CASES:-75000} $(PY) -m pytest -ra tests/api/test_fuzz_routes.py $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

lab-down:
	-$(VENV)/bin/edgesync lab down --dir $(LAB)

clean: lab-down
	rm -rf $(LAB) .pytest_cache
