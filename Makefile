# blokrun — every target works on a fresh Debian machine (root installs server packages).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast servers bench bench-peers lint typecheck docs check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m compileall -q blokrun  # bytecode, as a wheel install has it: -80 ms a start
	touch $(STAMP)

## run: the quickstart on the embedded default (a run that fails half-way, then its resume)
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/quickstart/run.sh

## servers: install what the throwaway test servers need (redis-server, PostgreSQL, mongoeco)
servers: $(STAMP)
	@for script in .ci/setup/*.sh; do [ -f "$$script" ] && bash "$$script" || exit 1; done

## test: install everything the tests need; ruff and mypy (strict, over the package, tests,
## benchmarks, examples and scripts); the docs; then the whole suite, every throwaway server
## required, on two workers (pytest-xdist: each starts its own throwaway servers)
test: servers lint typecheck docs
	BLOKRUN_TEST_SERVERS=required $(BIN)/python -m pytest -n 2

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -x -q

## bench: the blokrun benchmarks; prints a table and writes benchmarks/RESULTS.md
bench: servers
	$(BIN)/python -m benchmarks

## bench-peers: blokrun against Burr, LangGraph and DBOS (each installed in its own venv
## under benchmarks/peers/.venvs); prints a table and writes benchmarks/peers/RESULTS.md
bench-peers: servers
	$(BIN)/python -m benchmarks.peers

lint: $(STAMP)
	$(BIN)/ruff check blokrun tests examples benchmarks scripts
	$(BIN)/ruff format --check blokrun tests examples benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

## docs: docs/first-session.md from a real first session (scripts/first_session.py), then
## the site (mkdocs, API reference from the docstrings) into site/, every warning an error
docs: $(STAMP)
	$(BIN)/python -m scripts.first_session docs/first-session.md
	$(BIN)/mkdocs build --strict -q -d site

check: lint typecheck test

clean:
	rm -rf $(VENV) .blokrun .pytest_cache .mypy_cache .ruff_cache site
