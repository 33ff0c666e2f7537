# engarde: every target installs what it needs first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps test test-fast lint demo bench clean

install: $(STAMP)

# Debian packages (iproute2, wireguard-go, nftables, chromium, ...): installed if missing.
system-deps:
	@bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: system-deps install
	$(BIN)/pytest -q -rs $(PYTEST_ARGS)

test-fast: system-deps install
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check engarde tests bench
	$(BIN)/mypy

demo: system-deps install
	$(BIN)/python examples/demo.py $(DEMO_ARGS)

bench: system-deps install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info bench/build
