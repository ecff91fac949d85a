# The task runner a developer and CI both use. `make demo` and `make test` are the README's
# two commands; everything installs into ./.venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU box takes the CPU wheel of this torch; set TORCH_SPEC (or PIP_INDEX_URL) for CUDA.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# The suite's line coverage of src/podserve may not fall below this; raise it as tests grow.
COVERAGE_FLOOR ?= 83

.PHONY: services demo test lint format typecheck docs clean install-demo install-dev \
	lock lock-check extras-check image image-test

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
	$(BIN)/mypy src/podserve
	$(BIN)/python -m pytest --cov --cov-report=term --cov-fail-under=$(COVERAGE_FLOOR) $(PYTEST_ARGS)

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

## lock: resolve the image's dependency sets (pyproject.toml's ranges) into requirements/*.txt
# One hash-pinned requirement file per image variant; the Dockerfile installs them with
# --require-hashes. torch's CPU build is not on PyPI: TORCH_CPU_WHEELS is where it is found
# (PyPI's torch is the CUDA build, which the cuda lock takes). Behind a mirror:
#   make lock TORCH_CPU_WHEELS=/dir/with/torch-wheels
UV := $(BIN)/uv
LOCK_DIR ?= requirements
TORCH_CPU_WHEELS ?= https://download.pytorch.org/whl/cpu/torch/
# Empty: PyPI's torch (the CUDA 13 build). Older drivers: .../whl/cu128/torch/ (docs/deploy.md).
TORCH_CUDA_WHEELS ?=
# Left out of the CPU image's lock (pulled in by torch and tokenizers, never imported when
# serving: torch.compile's sympy/networkx/jinja2, the Hugging Face Hub client). The full and
# cuda images keep them.
CPU_IMAGE_LEAVES_OUT := sympy mpmath networkx jinja2 markupsafe setuptools huggingface-hub \
	hf-xet httpx2 httpcore2 truststore tqdm
LOCK_FLAGS := --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock"
lock: install-dev
	mkdir -p $(LOCK_DIR)
	$(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')" \
	  | $(UV) pip compile - $(LOCK_FLAGS) -o $(LOCK_DIR)/build.txt
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) --find-links $(TORCH_CPU_WHEELS) \
	  $(CPU_IMAGE_LEAVES_OUT:%=--no-emit-package %) \
	  --extra torch --extra onnx --extra s3 -o $(LOCK_DIR)/cpu.txt
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) --find-links $(TORCH_CPU_WHEELS) \
	  --extra transformers --extra onnx --extra s3 -o $(LOCK_DIR)/full.txt
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) $(TORCH_CUDA_WHEELS:%=--find-links %) \
	  --extra transformers --extra onnx --extra s3 --extra gpu -o $(LOCK_DIR)/cuda.txt

## lock-check: fail when requirements/ no longer resolves or no longer matches pyproject.toml
# Re-resolves with the committed versions (not their hashes) as preferences: any change (a
# range the pins left, a release withdrawn, a hash or pin edited by hand) shows as a diff.
LOCK_CHECK_DIR := $(or $(TMPDIR),/tmp)/podserve-lock-check
lock-check: install-dev
	rm -rf $(LOCK_CHECK_DIR) && mkdir -p $(LOCK_CHECK_DIR)
	for f in requirements/*.txt; do \
	  sed -e '/^ *--hash=/d' -e 's/ \\$$//' $$f > $(LOCK_CHECK_DIR)/$${f##*/}; done
	$(MAKE) --no-print-directory lock LOCK_DIR=$(LOCK_CHECK_DIR)
	@diff -ru requirements $(LOCK_CHECK_DIR) \
	  && echo "lock-check: requirements/ resolves and matches pyproject.toml" \
	  || { echo "lock-check: requirements/ is stale: run make lock and commit it"; exit 1; }

## extras-check: resolve every extra of pyproject.toml with pip in a fresh venv, each in bounded time
extras-check: install-dev
	$(BIN)/python tests/image/resolve_extras.py

## image / image-test: build the CPU image; run it as deploy/base does and test it (docker or podman)
# CONTAINER_ENGINE=docker|podman (found on PATH otherwise), IMAGE_BUILD_FLAGS (extra build
# flags: secrets, build contexts, volumes), BASE_IMAGE (the Python base image).
IMAGE ?= podserve:dev
IMAGE_TARGET ?= cpu
image:
	$(PYTHON) tests/image/image_check.py build --image $(IMAGE) --target $(IMAGE_TARGET)

image-test: install-dev
	$(BIN)/python tests/image/image_check.py test --image $(IMAGE) --target $(IMAGE_TARGET) \
	  $(if $(IMAGE_JSON),--json $(IMAGE_JSON))

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache .mypy_cache src/*.egg-info

# proto: regenerate the gRPC stubs (src/podserve/protocol/grpc/_generated) from proto/*.proto
include proto/Makefile.fragment
