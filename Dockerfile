# syntax=docker/dockerfile:1
#
# podserve image: the runtime only. Model weights are never baked in; they come from the
# read-only model volume (deploy/base) or are pulled by an init container (overlays/pull-init).
#
#   docker build -t podserve:0.1.0 .                      # CPU (the default, last stage)
#   docker build -t podserve:0.1.0-cuda --target cuda .   # NVIDIA GPUs, MIG included
#
# CUDA choice: both targets use the same pinned Python base and the CUDA target takes torch
# from PyTorch's CUDA wheel index. Those wheels carry their own CUDA user-space libraries
# (cuBLAS, cuDNN, NCCL as nvidia-* wheels) and the node's driver is injected by the NVIDIA
# container toolkit, so an nvidia/cuda base image would only add a second, possibly
# mismatched copy of the same libraries and a different Python. Change TORCH_CUDA_INDEX
# (e.g. .../cu126) to match the oldest driver in your GPU node pool.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: the podserve wheel -------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
# The manifests podserve render patches: src/podserve/kube/templates links to deploy/.
COPY deploy/base/ deploy/base/
COPY deploy/components/ deploy/components/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# --- build: one virtualenv per accelerator kind ---------------------------------------------
FROM ${PYTHON_IMAGE} AS venv-cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=transformers,onnx,s3
COPY --from=wheel /dist /dist
# The glob keeps the version out of this file; `set --` expands it without calling ls.
RUN set -- /dist/podserve-*.whl \
 && python -m venv /opt/podserve \
 && /opt/podserve/bin/pip install --no-cache-dir --extra-index-url "${TORCH_CPU_INDEX}" \
      "podserve[${EXTRAS}] @ file://$1"

FROM ${PYTHON_IMAGE} AS venv-cuda
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ARG EXTRAS=transformers,onnx,s3,gpu
COPY --from=wheel /dist /dist
RUN set -- /dist/podserve-*.whl \
 && python -m venv /opt/podserve \
 && /opt/podserve/bin/pip install --no-cache-dir --extra-index-url "${TORCH_CUDA_INDEX}" \
      "podserve[${EXTRAS}] @ file://$1"

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

FROM runtime AS cuda
COPY --from=venv-cuda /opt/podserve /opt/podserve
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PODSERVE_DEVICE=auto
USER 10001:10001
ENTRYPOINT ["podserve", "serve"]

# Last stage = default target.
FROM runtime AS cpu
COPY --from=venv-cpu /opt/podserve /opt/podserve
ENV PODSERVE_DEVICE=cpu
USER 10001:10001
ENTRYPOINT ["podserve", "serve"]
