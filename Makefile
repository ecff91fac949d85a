# The task runner a developer and CI both use. `make demo` and `make test` are the README's
# two commands; everything installs into ./.venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU box takes the CPU wheel of this torch; set TORCH_SPEC (or PIP_INDEX_URL) for CUDA.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: services demo test lint format typecheck docs clean install-demo install-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[demo]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(VENV)/.demo-installed

install-demo: $(VENV)/.demo-installed
install-dev: $(VENV)/.dev-installed

## demo: install, stage the MiniLM demo model into ./models/minilm/1 and serve it on :8080/:8081
demo: install-demo
	$(BIN)/podserve demo --root models

## test: install the dev dependencies, lint, and run the whole test suite
## services: RabbitMQ on 127.0.0.1:5672 for the queue tests (started if installed but stopped)
services:
	@scripts/ensure-rabbitmq.sh

test: services install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install-dev
	$(BIN)/mypy src/podserve

## docs: regenerate docs/configuration.md from the settings
docs: install-dev
	$(BIN)/python -m podserve.settings > docs/configuration.md

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache .mypy_cache src/*.egg-info

# proto: regenerate the gRPC stubs (src/podserve/protocol/grpc/_generated) from proto/*.proto
include proto/Makefile.fragment
