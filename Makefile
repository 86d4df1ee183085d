# Both targets bootstrap their own virtualenv so a fresh clone needs only python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck unit venv clean bench docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check leasectl loops tests bench
	$(BIN)/ruff format --check leasectl loops

typecheck: $(STAMP)
	$(BIN)/mypy leasectl loops

test: lint typecheck
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/leasectl demo --replicas 3

docs: $(STAMP)
	$(BIN)/python -m leasectl.config --write

bench: $(STAMP)
	$(BIN)/python bench/failover.py

clean:
	rm -rf $(VENV) .leasectl build dist *.egg-info

# No-op job throughput against procrastinate (docs/benchmarks.md). procrastinate is not a
# leasectl dependency: it lives only in this separate bench venv.
.PHONY: bench-jobs
bench-jobs:
	test -x .venv-bench/bin/python || $(PY) -m venv .venv-bench
	.venv-bench/bin/pip install -q -e . procrastinate
	.venv-bench/bin/python bench/jobs.py
