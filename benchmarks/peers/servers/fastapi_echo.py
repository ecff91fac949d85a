"""Bare FastAPI: the Python ceiling. No protocol object model, no batcher, no validation.

Identity echoes the request's ``data`` list back without touching numpy; MiniLM builds the
three arrays, runs onnxruntime on the event loop's thread and returns ``tolist()``. Usage:
``python fastapi_echo.py PORT`` (uvicorn with uvloop and httptools, access log off).
"""

from __future__ import annotations

import json
import sys

import kernels
import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response

app = FastAPI()
session = kernels.minilm_session()


@app.get("/v2/health/ready")
@app.get("/v2/models/{name}/ready")
async def ready() -> Response:
    return Response(status_code=200)


@app.post("/v2/models/identity/infer")
async def identity(request: Request) -> Response:
    body = json.loads(await request.body())
    tensor = body["inputs"][0]
    out = {"name": kernels.IDENTITY_OUT, "datatype": "FP32", "shape": tensor["shape"]}
    out["data"] = tensor["data"]
    return Response(json.dumps({"model_name": "identity", "outputs": [out]}))


@app.post("/v2/models/minilm/infer")
async def minilm(request: Request) -> Response:
    body = json.loads(await request.body())
    feed = {
        t["name"]: np.asarray(t["data"], dtype=np.int64).reshape(t["shape"]) for t in body["inputs"]
    }
    hidden = kernels.run_minilm(session, feed)
    out = {
        "name": kernels.MINILM_OUT,
        "datatype": "FP32",
        "shape": list(hidden.shape),
        "data": hidden.ravel().tolist(),
    }
    return Response(json.dumps({"model_name": "minilm", "outputs": [out]}))


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning")
