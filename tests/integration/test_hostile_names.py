"""Client-chosen strings never grow the server: 10,000 unknown model names over gRPC and HTTP.

Every distinct label value of a Prometheus metric is kept for the life of the process, so a
request's model name may become a label only once the model is known to be served. Measured
on a real process: the size of ``/metrics`` and the resident set size before and after.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.serve_process import WIDTH, ServeProcess, infer_body, stage_echo

pytestmark = pytest.mark.slow

NAMES = 10_000
CONCURRENCY = 16


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    proc = ServeProcess(stage_echo(tmp_path / "models"), tmp_path / "server.log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


async def _grpc(addr: str, names: list[str]) -> set[str]:
    row = np.zeros((1, WIDTH), dtype=np.float32)
    codes: set[str] = set()
    todo = iter(names)
    async with grpcclient.InferenceServerClient(addr) as triton:

        async def worker() -> None:
            for name in todo:
                tensor = grpcclient.InferInput("INPUT0", [1, WIDTH], "FP32")
                tensor.set_data_from_numpy(row)
                try:
                    await triton.infer(name, [tensor], request_id=name)
                    codes.add("OK")
                except InferenceServerException as exc:
                    codes.add(str(exc.status()))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return codes


async def _http(url: str, names: list[str]) -> set[int]:
    statuses: set[int] = set()
    todo = iter(names)
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            for name in todo:
                headers = {"X-Request-Id": name}
                async with session.post(
                    f"{url}/v2/models/{name}/infer", data=infer_body(1.0), headers=headers
                ) as response:
                    await response.read()
                    statuses.add(response.status)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses


async def test_ten_thousand_unknown_model_names_leave_metrics_and_memory_flat(
    server: ServeProcess,
) -> None:
    addr = f"127.0.0.1:{server.grpc_port}"
    counter = itertools.count()

    def names(n: int) -> list[str]:
        return [f"no-such-model-{next(counter):06d}-{'x' * 40}" for _ in range(n)]

    # Warm up: allocator arenas, the first error paths, the unknown-model label itself.
    await _grpc(addr, names(1000))
    await _http(server.url, names(1000))
    metrics_before = len(server.get("/metrics", timeout=60)[1])
    rss_before = server.rss_kib()

    grpc_codes = await _grpc(addr, names(NAMES))
    http_statuses = await _http(server.url, names(NAMES))

    metrics_after = server.get("/metrics", timeout=60)[1]
    rss_after = server.rss_kib()
    assert grpc_codes == {"StatusCode.NOT_FOUND"}
    assert http_statuses == {404}
    # Counter values gain digits; label sets would add ~100 bytes per name.
    assert len(metrics_after) - metrics_before < 500, (
        f"/metrics grew from {metrics_before} to {len(metrics_after)} bytes; "
        f"RSS from {rss_before} to {rss_after} KiB"
    )
    # 20,000 label sets cost tens of MiB; flat means allocator noise only.
    assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)
    assert b"no-such-model" not in metrics_after
