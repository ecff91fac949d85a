"""NVIDIA Triton (the tritonserver in the ``nvidia-pytriton`` wheel) with the two models.

Usage: ``python pytriton_server.py HTTP_PORT``. With batching on, Triton's dynamic batcher
(max batch ``PEERS_MAX_BATCH``, ``PEERS_DELAY_MS`` of queue delay) gathers requests and the
``@batch`` callables see the stacked arrays; with batching off the models are bound with
``batching=False`` and Triton hands over one request at a time. Triton's Python backend
needs this interpreter's libpython first on ``LD_LIBRARY_PATH`` (``run.py`` sets it).
"""

from __future__ import annotations

import sys

import kernels
import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

session = kernels.minilm_session()


@batch
def identity(x: np.ndarray) -> dict[str, np.ndarray]:
    return {kernels.IDENTITY_OUT: x}


@batch
def minilm(**feed: np.ndarray) -> dict[str, np.ndarray]:
    return {kernels.MINILM_OUT: kernels.run_minilm(session, feed)}


def main(port: int) -> None:
    on = kernels.batching()
    lead: tuple[int, ...] = () if on else (-1,)
    if on:
        delay_us = int(kernels.delay_ms() * 1000)
        config = ModelConfig(
            max_batch_size=kernels.max_batch(),
            batcher=DynamicBatcher(max_queue_delay_microseconds=delay_us),
        )
    else:
        config = ModelConfig(batching=False)
    triton_config = TritonConfig(
        http_port=port, grpc_port=port + 1, metrics_port=port + 2, http_address="127.0.0.1"
    )
    with Triton(config=triton_config) as triton:
        triton.bind(
            model_name=kernels.IDENTITY,
            infer_func=identity,
            inputs=[Tensor(name=kernels.IDENTITY_IN, dtype=np.float32, shape=(*lead, 384))],
            outputs=[Tensor(name=kernels.IDENTITY_OUT, dtype=np.float32, shape=(*lead, 384))],
            config=config,
            strict=False,
        )
        triton.bind(
            model_name=kernels.MINILM,
            infer_func=minilm,
            inputs=[
                Tensor(name=n, dtype=np.int64, shape=(*lead, -1)) for n in kernels.MINILM_INPUTS
            ],
            outputs=[Tensor(name=kernels.MINILM_OUT, dtype=np.float32, shape=(*lead, -1, 384))],
            config=config,
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main(int(sys.argv[1]))
