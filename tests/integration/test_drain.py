"""SIGTERM to a real ``podserve serve`` under keep-alive load, over HTTP and gRPC.

What Kubernetes needs (README, "Lifecycle"): for ``PODSERVE_DRAIN_GRACE_SECONDS`` after
SIGTERM readiness is false and every request is served as before; then new requests get 503
with ``Connection: close`` (gRPC: GOAWAY, then UNAVAILABLE) while accepted work finishes; a
keep-alive connection is never closed under a request, and the process exits 0.

The timing assertions hold on a loaded machine: a response the client received before
``SIGTERM + grace`` (client clock) was produced before the server's grace window ended, so
it must be a 200 whatever the scheduling delays.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient

from tests.integration.load import Load, Outcome
from tests.integration.serve_process import WIDTH, ServeProcess, infer_body, stage_echo

pytestmark = pytest.mark.slow

GRACE = 2.0
SLOW_S = 4.0  # the in-flight request that keeps the drain open after the grace window


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    root = stage_echo(tmp_path / "models", delay_s=0.002)
    stage_echo(root, name="slow", delay_s=SLOW_S)
    proc = ServeProcess(
        root,
        tmp_path / "server.log",
        PODSERVE_DRAIN_GRACE_SECONDS=str(GRACE),
        PODSERVE_DRAIN_TIMEOUT_SECONDS="20",
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


async def _slow_http(server: ServeProcess) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/v2/models/slow/infer", data=infer_body(7.0)) as response,
    ):
        await response.read()
        return response.status, response.headers.get("Connection", "")


async def _readiness_during_grace(server: ServeProcess) -> int:
    return await asyncio.to_thread(lambda: server.get("/v2/health/ready")[0])


def _check(outcomes: list[Outcome], sigterm: float) -> None:
    assert len(outcomes) > 100, "the load did not run"
    before_end = [o for o in outcomes if o.sent >= sigterm and o.done < sigterm + GRACE]
    assert len(before_end) >= 20, "too few requests answered inside the grace window"
    wrong = [o for o in outcomes if o.done < sigterm + GRACE and not o.ok]
    assert not wrong, f"refused inside the grace window: {wrong[:5]}"
    allowed = {"ok", "503", "UNAVAILABLE", "refused"}
    # The server's stop (GOAWAY) makes gRPC core cancel calls that had arrived but were not
    # yet handed to a handler (grpc/grpc#41785); connections recycled by age during the grace
    # window avoid it where clients have another replica to go to (test_rolling_update.py).
    bad = [
        o
        for o in outcomes
        if o.result not in allowed and not (o.result == "CANCELLED" and o.done > sigterm + GRACE)
    ]
    assert not bad, f"requests cut off or failed otherwise: {bad[:5]}"


async def test_sigterm_serves_the_grace_window_then_503_with_connection_close(
    server: ServeProcess,
) -> None:
    load = Load(http_url=server.url, http_clients=8)
    load.start()
    await asyncio.sleep(1.0)
    sigterm = time.monotonic()
    server.terminate()
    await asyncio.sleep(0.3)
    slow = asyncio.create_task(_slow_http(server))  # accepted during the grace window
    ready = await _readiness_during_grace(server)
    await asyncio.sleep(GRACE + 1.0)
    outcomes = await load.stop()
    assert await slow == (200, "close"), "accepted work must finish"
    assert await asyncio.to_thread(server.wait, 30) == 0, server.output()

    assert ready == 503, "readiness must be false from SIGTERM on"
    _check(outcomes, sigterm)
    after = [o for o in outcomes if o.sent > sigterm + GRACE + 0.5 and o.result != "refused"]
    assert after, "no request reached the server after its grace window"
    assert all(o.result == "503" and o.close for o in after), after[:5]
    # From SIGTERM on, answers tell keep-alive clients to reconnect (to another replica).
    told = [o for o in outcomes if o.sent > sigterm + 0.5 and o.result == "ok"]
    assert told, "no request served after SIGTERM"
    assert all(o.close for o in told), [o for o in told if not o.close][:5]
    assert not [o for o in outcomes if o.done < sigterm and o.close]


async def test_sigterm_grpc_serves_the_grace_window_and_finishes_calls_in_flight(
    server: ServeProcess,
) -> None:
    addr = f"127.0.0.1:{server.grpc_port}"
    load = Load(grpc_addr=addr, grpc_clients=4)
    load.start()
    await asyncio.sleep(1.0)
    sigterm = time.monotonic()
    server.terminate()
    await asyncio.sleep(0.3)
    row = np.full((1, WIDTH), 7.0, dtype=np.float32)
    async with grpcclient.InferenceServerClient(addr) as triton:
        tensor = grpcclient.InferInput("INPUT0", [1, WIDTH], "FP32")
        tensor.set_data_from_numpy(row)
        answer = await triton.infer("slow", [tensor], client_timeout=30)  # spans GOAWAY
    np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), row)
    await asyncio.sleep(0.5)
    outcomes = await load.stop()
    assert await asyncio.to_thread(server.wait, 30) == 0, server.output()
    _check(outcomes, sigterm)
