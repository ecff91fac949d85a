"""Out-of-memory never kills the server: split in halves, retry, lower the cap, count it.

The model is a real ``runtime: python`` version whose user class raises torch's own
``torch.cuda.OutOfMemoryError`` (the exception a GPU raises; it exists on CPU builds too) when
a batch holds more rows than its pretend memory; the python runtime translates it at its
border, the batcher splits. Requests go through the real DataPlane (and once over HTTP).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from podserve import metrics
from podserve.dataplane import DataPlane
from podserve.errors import ResourceExhaustedError
from podserve.protocol.http.app import create_app
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from podserve.storage.staging import stage_model
from podserve.v2 import InferRequest, InferTensor

MODEL_PY = """
import torch

class Tight:
    \"\"\"Doubles its input; more than `fits` rows at once is out of (pretend) GPU memory.\"\"\"

    def __init__(self, fits):
        self.fits = fits
        self.batches = []

    def infer(self, inputs):
        x = inputs["x"]
        self.batches.append(x.shape[0])
        if x.shape[0] > self.fits:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {x.shape[0]} rows"
            )
        return {"y": x * 2}
"""


def _stage(root: Path, fits: int, max_batch: int = 8) -> Path:
    src = root.parent / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "model.py").write_text(MODEL_PY, encoding="utf-8")
    stage_model(
        {"model.py": src / "model.py"},
        root / "tight" / "1",
        {
            "runtime": "python",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
            "max_batch_size": max_batch,
            # Triton-style fixed delay: every concurrent request joins one batch.
            "batching": {"policy": "fixed_delay", "max_queue_delay_ms": 200},
            "options": {"module": "model.py:Tight", "kwargs": {"fits": fits}},
        },
    )
    return root


async def _serve(tmp_path: Path, fits: int) -> DataPlane:
    dp = DataPlane(ModelRepository(_stage(tmp_path / "models", fits)), Settings())
    await dp.start([("tight", None)])
    assert dp.ready(), dp.not_ready_reason()
    return dp


def _request(rows: int, start: float = 0.0) -> InferRequest:
    x = (np.arange(rows * 2, dtype=np.float32) + start).reshape(rows, 2)
    return InferRequest("tight", [InferTensor("x", "FP32", x.shape, x)])


def _splits() -> float:
    return metrics.sample("podserve_oom_splits_total", {"model": "tight"}) or 0.0


def _user(dp: DataPlane) -> Any:
    return dp.models["tight"].model._user  # type: ignore[union-attr]


async def test_a_batch_that_runs_out_of_memory_is_split_and_answered(tmp_path: Path) -> None:
    dp = await _serve(tmp_path, fits=4)
    before = _splits()
    try:
        requests = [_request(1, start=10.0 * i) for i in range(8)]
        responses = await asyncio.gather(*(dp.infer(r) for r in requests))
        for req, resp in zip(requests, responses, strict=True):
            np.testing.assert_array_equal(resp.outputs[0].data, req.inputs[0].data * 2)
        assert _user(dp).batches[1:] == [8, 4, 4]  # after the warm-up: 8 failed, halves ran
        assert _splits() - before == 1
        batcher = dp.models["tight"].batcher
        assert batcher is not None
        assert batcher.batch_cap == 4
        assert dp.model_metadata("tight")["parameters"]["batch_cap"] == 4
        assert metrics.sample("podserve_batch_cap", {"model": "tight"}) == 4
        assert batcher.stats.batch_sizes == {4: 2}
        assert batcher.stats.fail == 0
        # The next burst is formed under the lowered cap: no more failures.
        await asyncio.gather(*(dp.infer(_request(1)) for _ in range(8)))
        assert _user(dp).batches[4:] == [4, 4]
        assert _splits() - before == 1
    finally:
        await dp.stop()


async def test_recursive_split_and_the_lone_request_that_cannot_fit(tmp_path: Path) -> None:
    dp = await _serve(tmp_path, fits=2)
    before = _splits()
    try:
        rows = [3, 1, 1, 1, 2]
        outcomes = await asyncio.gather(
            *(dp.infer(_request(n, 100.0 * i)) for i, n in enumerate(rows)),
            return_exceptions=True,
        )
        big, *rest = outcomes
        assert isinstance(big, ResourceExhaustedError)
        assert "a request of 3 row(s) does not fit" in str(big)
        assert "CUDA out of memory" in str(big)
        assert (big.http_status, big.grpc_code) == (400, "RESOURCE_EXHAUSTED")
        for n, resp in zip(rows[1:], rest, strict=True):
            assert not isinstance(resp, BaseException), resp
            assert resp.outputs[0].shape == (n, 2)
        # Cut where the first half reaches half the rows: 8 → [3, 1] + [1, 1, 2];
        # [3, 1] → [3] (alone: 400) + [1]; [1, 1, 2] → [1, 1] + [2].
        assert _user(dp).batches[1:] == [8, 4, 3, 1, 4, 2, 2]
        assert _splits() - before == 3
        assert dp.models["tight"].batcher.batch_cap == 1  # type: ignore[union-attr]
        # The server is alive and still answers.
        ok = await dp.infer(_request(1, 7.0))
        np.testing.assert_array_equal(ok.outputs[0].data, [[14.0, 16.0]])
    finally:
        await dp.stop()


async def test_too_big_request_is_a_400_over_http(tmp_path: Path) -> None:
    dp = await _serve(tmp_path, fits=2)
    try:
        app = create_app(dp, dp.settings)
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://podserve") as client:
            body = {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [3, 2], "data": [1, 2, 3, 4, 5, 6]}
                ]
            }
            resp = await client.post("/v2/models/tight/infer", json=body)
            assert resp.status_code == 400
            assert "does not fit in device memory" in resp.json()["error"]
            body["inputs"][0]["shape"] = [1, 2]
            body["inputs"][0]["data"] = [1, 2]
            resp = await client.post("/v2/models/tight/infer", json=body)
            assert resp.status_code == 200
            assert resp.json()["outputs"][0]["data"] == [2.0, 4.0]
    finally:
        await dp.stop()


@pytest.mark.parametrize("fits", [1, 3])
async def test_every_request_answered_once_under_memory_pressure(tmp_path: Path, fits: int) -> None:
    dp = await _serve(tmp_path, fits=fits)
    try:
        outcomes = await asyncio.gather(
            *(dp.infer(_request(1, float(i))) for i in range(32)), return_exceptions=True
        )
        for i, resp in enumerate(outcomes):
            assert not isinstance(resp, BaseException), resp
            np.testing.assert_array_equal(resp.outputs[0].data, [[2.0 * i, 2.0 * i + 2]])
        assert max(_user(dp).batches[-4:]) <= fits
        await dp.drain()
    finally:
        await dp.stop()
