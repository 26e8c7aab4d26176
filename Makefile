# Everything goes through scripts/install-deps.sh, which installs PostgreSQL + pg_partman when
# needed, creates .venv, and writes the PostgreSQL bin directory to use into .pg_bin.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv/bin

.PHONY: deps test demo lint bench

deps:
	bash scripts/install-deps.sh

# pytest's exit code is propagated as is: 5 ("no tests collected") fails the build too.
# JOBS pytest-xdist workers, each with its own throwaway cluster (JOBS=0: one process).
JOBS ?= 2
test: deps
	PARTGUARD_PG_BIN="$$(cat .pg_bin)" $(VENV)/pytest -q -n $(JOBS)

# The demo installs only what it needs (no test tools, no promtool/pgbouncer, one partman).
demo:
	bash scripts/install-deps.sh --for=demo
	PARTGUARD_PG_BIN="$$(cat .pg_bin)" $(VENV)/partguard demo

lint:
	@test -x $(VENV)/ruff || bash scripts/install-deps.sh
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

bench: deps
	export PARTGUARD_PG_BIN="$$(cat .pg_bin)"; \
	shopt -s nullglob; \
	for f in benchmarks/*.py; do echo "== $$f"; $(VENV)/python "$$f"; done
