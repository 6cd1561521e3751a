# Two commands on a fresh machine: `make run` (server) and `make test` (whole suite).
# Both create .venv on first use. torch is installed first and pinned, so pip never
# resolves a bare `torch` requirement to a multi-GB CUDA build on CPU-only machines.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
HOST ?= 127.0.0.1
PORT ?= 8188

.PHONY: install run test test-quick lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==$(TORCH_VERSION)
	$(PY) -m pip install -e '.[test,ray]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/diffgraph serve --listen $(HOST) --port $(PORT)

# The whole suite, slow tests included (what CI runs). pytest exits 5 when it
# collected nothing; that is not a failure, every other non-zero code is.
test: install
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

# The quick loop: every test not marked slow (under a minute here; docs/testing.md says what is slow).
test-quick: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check engine nodes tests benchmarks custom_nodes
	$(PY) -m ruff format --check engine nodes tests benchmarks custom_nodes
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
