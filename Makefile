# One entry point for people and CI. `make test` installs what it needs on a clean machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# checkov pins many packages exactly; it gets its own venv so it never holds back the dev venv's.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: install test lint typecheck demo run bench ops clean

$(STAMP): requirements.txt requirements-dev.txt requirements-ops.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch node_modules/.package-lock.json

install: $(STAMP) node_modules/.package-lock.json $(CHECKOV_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy function_app.py receiver devtools tests bench ops

test: install lint typecheck
	$(PY) -m pytest

demo: install
	$(PY) -m devtools.demo

run: install
	$(PY) -m devtools.run

bench: install
	$(PY) -m bench.run

# The operator command line: make ops ARGS="find --task <taskId>" (README "Operator command line").
# Not echoed: ARGS may hold a connection string. make turns any failure into its own exit code 2;
# scripts that branch on the command's exit codes run .venv/bin/python -m ops directly.
ops: $(STAMP)
	@$(PY) -m ops $(ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .venv-ops node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
