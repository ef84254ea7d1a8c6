# One entry point for people and CI. `make test` installs what it needs on a clean machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# checkov pins many packages exactly; it gets its own venv so it never holds back the dev venv's.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

# What running the app needs (no checkov: only `make test` uses it, through tests/test_infra.py).
APP_DEPS := $(STAMP) node_modules/.package-lock.json
comma := ,
# make run PORT=7072 AZURITE_PORTS=10010,10011,10012: other ports (make share and make ops-local follow them).
RUN_PORTS = $(if $(PORT),--port $(PORT)) $(if $(AZURITE_PORTS),--azurite-ports $(AZURITE_PORTS))

.PHONY: install test test-all lint typecheck demo run azurite share bench ops ops-local clean soak sim

$(STAMP): requirements.txt requirements-dev.txt requirements-ops.txt .python-version
	@if [ -x $(PY) ] && [ "$$($(PY) -c 'import sys; print(sys.version_info[:2])')" != \
		"$$($(PYTHON) -c 'import sys; print(sys.version_info[:2])')" ]; then \
		echo "$(VENV) was made with another Python than $(PYTHON): making it again"; rm -rf $(VENV); fi
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
	$(VENV)/bin/mypy function_app.py noxfile.py receiver devtools tests bench ops sim

# Three worker processes (pytest-xdist) on two cores, each with its own Azurite: many tests wait on
# Azurite or a child process, so a third keeps the cores busy. The longest tests go first and idle workers
# steal the rest (tests/conftest.py), so the simulator's parts, checkov and the load test overlap the
# short ones. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 3
test: install lint typecheck
	$(PY) -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS) --dist worksteal)

# pytest on Python 3.11, 3.12 and 3.13, each in its own venv (.nox/); a missing interpreter is
# skipped and named, or fails the run with REQUIRE_ALL_PYTHONS=1. NOXFLAGS='-- -x' reaches pytest.
test-all: install
	$(VENV)/bin/nox $(NOXFLAGS)

demo: $(APP_DEPS)
	$(PY) -m devtools.demo

# DEBUGPY=1: the host listens for a debugger on 127.0.0.1:9091 (VS Code: "Attach to make run").
run: $(APP_DEPS)
	$(PY) -m devtools.run $(RUN_PORTS) $(if $(DEBUGPY),--debugpy)

# Azurite with make run's accounts and sample, no host: what VS Code's `func host start` task needs.
azurite: $(APP_DEPS)
	$(PY) -m devtools.run --azurite-only $(RUN_PORTS)

# Needs `make run` in another terminal: FILE goes into its Azurite behind a real SAS for HOURS (24).
# It finds the ports of the running `make run` itself; PORT= and AZURITE_PORTS= override that.
SHARE_ARGS = $(strip $(if $(FILE),"$(FILE)") $(if $(HOURS),--hours $(HOURS)) \
	$(if $(PORT),--receiver http://127.0.0.1:$(PORT)) \
	$(if $(AZURITE_PORTS),--blob-port $(firstword $(subst $(comma), ,$(AZURITE_PORTS)))))
share: $(APP_DEPS)
	$(PY) -m devtools.share $(SHARE_ARGS)

bench: $(APP_DEPS)
	$(PY) -m bench.run

# The operator command line: make ops ARGS="find --task <taskId>" (docs/operator-cli.md).
# Not echoed: ARGS may hold a connection string. make turns any failure into its own exit code 2;
# scripts that branch on the command's exit codes run .venv/bin/python -m ops directly.
ops: $(STAMP)
	@$(PY) -m ops $(ARGS)

# The same against the running `make run`'s storage (its ports and local.settings.json): make ops-local ARGS="find
# --task T"; pending and failed read the reconciliation's summary, written by its first run (at the clock's next
# ten-minute mark after make run starts, or at once: the command says how).
ops-local: $(STAMP)
	@$(PY) -m devtools.local_ops $(ARGS)

# The deterministic simulator: a million random schedules in parallel processes (SOAK=N, PROCS=N);
# prints progress and schedules/second, then each failing seed with its replay command.
soak: $(STAMP)
	PYTHONPATH=. $(PY) -m sim.simulator --soak $(or $(SOAK),1000000) $(if $(PROCS),--processes $(PROCS))

# Replay one seed, printing its interleaving: make sim SEED=674
sim: $(STAMP)
	PYTHONPATH=. $(PY) -m sim.simulator --seed $(SEED)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .venv-ops .nox node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
