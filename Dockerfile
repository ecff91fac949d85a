# syntax=docker/dockerfile:1
#
# podserve image: the runtime only. Model weights are never baked in; they come from the
# read-only model volume (deploy/base) or are pulled by an init container (overlays/pull-init).
#
#   docker build -t podserve:0.1.0 .                      # CPU (the default, last stage)
#   docker build -t podserve:0.1.0-full --target full .   # CPU + transformers (any HF family)
#   docker build -t podserve:0.1.0-cuda --target cuda .   # NVIDIA GPUs, MIG included
#
# Dependencies come from the hash-pinned locks in requirements/ (`make lock` regenerates
# them from pyproject.toml's ranges), so every build installs the same files.
#
# Build-time settings that must never reach a layer, for docker buildx and podman alike:
#   --secret id=pip.conf,src=FILE     a pip configuration: a private index, `cert = ...`
#   --secret id=ca.crt,src=FILE       a CA bundle for TLS interception (pip's `cert`)
#   --build-context wheels=DIR        a local wheel directory (pip's `--find-links`)
# They are mounted only while the install step runs (docs/deploy.md, "Building the image").
#
# CUDA choice: both device kinds use the same pinned Python base. The cuda lock takes torch
# from PyPI, whose Linux wheel is the CUDA 13 build and carries its own CUDA user-space
# libraries (nvidia-* wheels); the node's driver (>= 580) is injected by the NVIDIA container
# toolkit, so an nvidia/cuda base image would only add a second copy and a different Python.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# An empty default for `--build-context wheels=DIR`.
FROM scratch AS wheels

# --- build: the podserve wheel -------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
# The manifests podserve render patches: src/podserve/kube/templates links to deploy/.
COPY deploy/base/ deploy/base/
COPY deploy/components/ deploy/components/
COPY requirements/build.txt /run/lock/build.txt
RUN --mount=type=bind,from=wheels,target=/run/wheels \
    --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=ca.crt \
    export PIP_CONFIG_FILE=/run/secrets/pip.conf \
 && if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --find-links /run/wheels --require-hashes \
      --only-binary=:all: -r /run/lock/build.txt \
 && /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /dist .

# --- venv: where the locks are installed and trimmed (binutils stays here) ------------------
# Each target's lock is installed into /opt/podserve in a stage of its own, then trimmed:
# torch's C++ tests, test programs, headers and protoc, onnxruntime's offline tools, static
# libraries and the symbol tables of shared libraries go (scripts/trim-venv.sh says what and
# why). The venv gets no pip of its own (the base image's pip, by full path, installs into it).
# The runtime stage copies only the venv, so the removed bytes are in no layer of the image.
FROM ${PYTHON_IMAGE} AS venv
# binutils only strips in this stage and never reaches the image; Debian's stable release
# moves its version with point releases, so a pin would break the build, not protect it.
# hadolint ignore=DL3008
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/trim-venv.sh /usr/local/bin/trim-venv

# --- runtime: what serving needs and nothing else --------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric uid so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin podserve
ENV PATH=/opt/podserve/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PODSERVE_MODEL_ROOT=/mnt/models \
    TMPDIR=/tmp \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
# The root filesystem is read-only in the pod: scratch goes to /tmp, an emptyDir there.
WORKDIR /tmp
EXPOSE 8080 8081
# No HEALTHCHECK on purpose: Kubernetes' startup/readiness/liveness probes own health.

# The lock's install, trimmed (scripts/trim-venv.sh); the cuda target copies the result. Its
# shared libraries keep their symbols: stripping CUDA builds is not tested here.
FROM venv AS cuda-venv
# PyPI's torch is the CUDA build: the cuda lock names no other index.
ARG TORCH_INDEX=
COPY requirements/cuda.txt /opt/podserve/requirements.txt
RUN --mount=type=bind,from=wheels,target=/run/wheels \
    --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=ca.crt \
    export PIP_CONFIG_FILE=/run/secrets/pip.conf \
 && if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
 && set -- --no-cache-dir --no-deps --find-links /run/wheels \
 && if [ -n "${TORCH_INDEX}" ]; then set -- "$@" --extra-index-url "${TORCH_INDEX}"; fi \
 && /usr/local/bin/python3 -m venv --without-pip /opt/podserve \
 && /usr/local/bin/python3 -m pip --python /opt/podserve/bin/python install "$@" \
      --require-hashes --only-binary=:all: -r /opt/podserve/requirements.txt \
 && trim-venv --keep-symbols /opt/podserve

FROM runtime AS cuda
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PODSERVE_DEVICE=auto
COPY --from=cuda-venv /opt/podserve/ /opt/podserve/
COPY --from=wheel /dist/ /opt/podserve/dist/
RUN /usr/local/bin/python3 -m pip --python /opt/podserve/bin/python install --no-cache-dir --no-deps \
      /opt/podserve/dist/podserve-*.whl
USER 10001:10001
ENTRYPOINT ["podserve", "serve"]

# The lock's install, trimmed (scripts/trim-venv.sh); the full target copies the result.
FROM venv AS full-venv
# PyPI has no CPU build of torch; the lock pins its hash, wherever it is fetched from.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements/full.txt /opt/podserve/requirements.txt
RUN --mount=type=bind,from=wheels,target=/run/wheels \
    --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=ca.crt \
    export PIP_CONFIG_FILE=/run/secrets/pip.conf \
 && if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
 && set -- --no-cache-dir --no-deps --find-links /run/wheels \
 && if [ -n "${TORCH_INDEX}" ]; then set -- "$@" --extra-index-url "${TORCH_INDEX}"; fi \
 && /usr/local/bin/python3 -m venv --without-pip /opt/podserve \
 && /usr/local/bin/python3 -m pip --python /opt/podserve/bin/python install "$@" \
      --require-hashes --only-binary=:all: -r /opt/podserve/requirements.txt \
 && trim-venv /opt/podserve

FROM runtime AS full
ENV PODSERVE_DEVICE=cpu
COPY --from=full-venv /opt/podserve/ /opt/podserve/
COPY --from=wheel /dist/ /opt/podserve/dist/
RUN /usr/local/bin/python3 -m pip --python /opt/podserve/bin/python install --no-cache-dir --no-deps \
      /opt/podserve/dist/podserve-*.whl
USER 10001:10001
ENTRYPOINT ["podserve", "serve"]

# The lock's install, trimmed (scripts/trim-venv.sh); the cpu target copies the result.
FROM venv AS cpu-venv
# PyPI has no CPU build of torch; the lock pins its hash, wherever it is fetched from.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements/cpu.txt /opt/podserve/requirements.txt
RUN --mount=type=bind,from=wheels,target=/run/wheels \
    --mount=type=secret,id=pip.conf \
    --mount=type=secret,id=ca.crt \
    export PIP_CONFIG_FILE=/run/secrets/pip.conf \
 && if [ -f /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
 && set -- --no-cache-dir --no-deps --find-links /run/wheels \
 && if [ -n "${TORCH_INDEX}" ]; then set -- "$@" --extra-index-url "${TORCH_INDEX}"; fi \
 && /usr/local/bin/python3 -m venv --without-pip /opt/podserve \
 && /usr/local/bin/python3 -m pip --python /opt/podserve/bin/python install "$@" \
      --require-hashes --only-binary=:all: -r /opt/podserve/requirements.txt \
 && trim-venv /opt/podserve

# Last stage = default target: the lean CPU image (no transformers; see docs/deploy.md).
FROM runtime AS cpu
ENV PODSERVE_DEVICE=cpu
COPY --from=cpu-venv /opt/podserve/ /opt/podserve/
COPY --from=wheel /dist/ /opt/podserve/dist/
RUN /usr/local/bin/python3 -m pip --python /opt/podserve/bin/python install --no-cache-dir --no-deps \
      /opt/podserve/dist/podserve-*.whl
USER 10001:10001
ENTRYPOINT ["podserve", "serve"]
