"""KServe's Python model server with the two models. Usage: ``python kserve_server.py PORT``.

KServe's Python server has no in-process dynamic batcher (its batcher is a separate
sidecar), so it runs with batching off only. ``predict`` must set ``response_id``: KServe
0.21 refuses a response without one. Latency logging and the access log are off, as a
user measuring throughput would set them.
"""

from __future__ import annotations

import logging
import sys
import uuid

import kernels
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class Identity(Model):
    def __init__(self) -> None:
        super().__init__(kernels.IDENTITY)
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):  # type: ignore[no-untyped-def]
        x = payload.inputs[0].as_numpy()
        out = InferOutput(kernels.IDENTITY_OUT, list(x.shape), "FP32", x)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=[out],
        )


class MiniLM(Model):
    def __init__(self) -> None:
        super().__init__(kernels.MINILM)
        self._session = kernels.minilm_session()
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):  # type: ignore[no-untyped-def]
        feed = {t.name: t.as_numpy() for t in payload.inputs}
        hidden = kernels.run_minilm(self._session, feed)
        out = InferOutput(kernels.MINILM_OUT, list(hidden.shape), "FP32", hidden)
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=[out],
        )


if __name__ == "__main__":
    port = int(sys.argv[1])
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    ModelServer(
        http_port=port,
        grpc_port=port + 1,
        enable_grpc=False,
        enable_latency_logging=False,
        workers=1,
    ).start([Identity(), MiniLM()])
