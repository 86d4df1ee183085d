# Both targets bootstrap their own virtualenv so a fresh clone needs only python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-unit demo lint typecheck unit venv clean bench docs sim-soak

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check leasectl loops tests bench
	$(BIN)/ruff format --check leasectl loops

# leasectl/certs is a symlink to loops/: mypy checks the certificate loops under their one
# import name, leasectl.certs (`mypy leasectl loops` would check them twice, as loops too).
typecheck: $(STAMP)
	$(BIN)/mypy leasectl tests

# The whole suite, then the 15 slowest tests (a test that grows slow shows up here first).
test: lint typecheck
	$(BIN)/pytest -q --durations=15

# The fast tier: no database, no processes (tests/unit, about 20 s; lint and typecheck first).
test-unit: lint typecheck
	$(BIN)/pytest -q tests/unit --durations=5

# The lease protocol's simulator on many seeds (docs/testing.md): SECONDS of wall time on
# JOBS processes, 3/10/30-replica clusters; failing seeds go to sim-failures.jsonl.
SECONDS ?= 600
JOBS ?= $(shell nproc)
sim-soak: $(STAMP)
	$(BIN)/python -m tests.sim soak --seconds $(SECONDS) --jobs $(JOBS) --out sim-failures.jsonl

demo: $(STAMP)
	$(BIN)/leasectl demo --replicas 3

docs: $(STAMP)
	$(BIN)/python -m leasectl.config --write

# `make bench`: the quick version of every benchmark (minutes, not the published runs);
# `make bench-full`: the runs docs/benchmarks.md publishes (about an hour).
bench: $(STAMP) bench-venv
	$(BIN)/python bench/failover.py --rounds 50
	$(BIN)/python bench/placement.py --rounds 5
	$(BIN)/python bench/scale.py --leases 1,100 --replicas 1,10 --kills 5
	$(BIN)/python bench/limits.py --n 500 --rounds 1
	$(BIN)/python bench/scheduler.py --ticks 40 --rounds 1 --n 300 --ledger-seconds 15
	$(BIN)/python bench/bulk_renewal.py --certs 1000
	.venv-bench/bin/python bench/jobs.py --jobs 5000 --rounds 1

bench-full: $(STAMP) bench-venv
	$(BIN)/python bench/failover.py --rounds 60
	$(BIN)/python bench/placement.py --rounds 20
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/limits.py
	$(BIN)/python bench/bulk_renewal.py
	.venv-bench/bin/python bench/jobs.py

clean:
	rm -rf $(VENV) .leasectl build dist *.egg-info

# No-op job throughput against procrastinate (docs/benchmarks.md). procrastinate is not a
# leasectl dependency: it lives only in this separate bench venv.
.PHONY: bench-jobs bench-venv bench-full
bench-venv:
	test -x .venv-bench/bin/python || $(PY) -m venv .venv-bench
	test -f .venv-bench/.installed || (.venv-bench/bin/pip install -q -e '.[certs,embedded]' procrastinate \
		&& touch .venv-bench/.installed)

bench-jobs: bench-venv
	.venv-bench/bin/python bench/jobs.py
