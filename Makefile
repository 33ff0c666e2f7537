# engarde: every target installs what it needs first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install bytecode system-deps test test-fast test-latest lint demo bench clean lock lock-upgrade

install: $(STAMP)

# engarde's own modules compiled ahead (pip does this for a wheel, not for this editable install;
# PYTHONDONTWRITEBYTECODE=1 machines never write them): compiling a module at import holds the
# GIL, and the dashboard's modules are imported while the relay already runs (a 6-15 ms stall of
# the data path each start, measured). Cheap when up to date.
bytecode: install
	@$(BIN)/python -m compileall -q engarde

# Debian packages (iproute2, wireguard-go, nftables, chromium, ...): installed if missing.
system-deps:
	@bash scripts/install-system-deps.sh

# The tested set: every dependency (and the build backend) at the version in constraints.txt, so a
# fresh machine next year installs what passed here. pyproject.toml keeps only minimums, for people
# who install engarde into their own environment. `make lock` regenerates constraints.txt after a
# change to pyproject.toml (same versions where still allowed); `make lock-upgrade` moves everything
# to the newest releases: run `make test` after it and commit both if green. `make test-latest`
# tries the newest releases in a separate venv without touching the tested set.
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade 'pip>=25.3'
	$(BIN)/pip install -q -c constraints.txt --build-constraint constraints.txt -e '.[dev]'
	touch $(STAMP)

LOCK_VENV := .venv-lock
PIP_COMPILE = $(LOCK_VENV)/bin/pip-compile -q --extra dev --all-build-deps --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links --output-file constraints.txt

$(LOCK_VENV)/.installed:
	$(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade 'pip>=25.3' pip-tools
	touch $@

lock: $(LOCK_VENV)/.installed
	$(PIP_COMPILE) pyproject.toml

lock-upgrade: $(LOCK_VENV)/.installed
	$(PIP_COMPILE) --upgrade pyproject.toml

LATEST_VENV := .venv-latest

test-latest: system-deps
	rm -rf $(LATEST_VENV)
	$(PY) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q --upgrade pip
	$(LATEST_VENV)/bin/pip install -q --upgrade -e '.[dev]'
	$(LATEST_VENV)/bin/python scripts/compare-versions.py constraints.txt
	$(LATEST_VENV)/bin/pytest -q -rs $(PYTEST_ARGS)

test: system-deps bytecode
	$(BIN)/pytest -q -rs $(PYTEST_ARGS)

test-fast: system-deps bytecode
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check engarde tests bench lab examples
	$(BIN)/mypy

# DEMO_ARGS: --hold (run until Ctrl-C), --pace N, --clients N, --no-engarde, --no-web; the
# dashboards' URLs (reachable from this machine) are printed at the start.
demo: system-deps bytecode
	$(BIN)/python examples/demo.py $(DEMO_ARGS)

bench: system-deps bytecode
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LATEST_VENV) build *.egg-info bench/build
