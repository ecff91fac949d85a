"""A rolling update under keep-alive load loses no request, over HTTP and gRPC.

Two ``podserve serve`` replicas behind round-robin TCP proxies (a connection sticks to its
backend, a backend leaves the rotation a second after its SIGTERM, like an endpoint removal
reaching kube-proxy); keep-alive HTTP and gRPC clients post through the proxies while each
replica in turn is SIGTERMed, drains, exits and starts again. Every request must succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.load import Load
from tests.integration.rollout import Fleet, summarize
from tests.integration.serve_process import ServeProcess, stage_echo

pytestmark = pytest.mark.slow

REMOVAL_DELAY_S = 1.0
GRACE_S = 3.0  # > the removal delay, with room for a loaded machine
# gRPC connections are recycled (GOAWAY) at this age: every one leaves during the grace window.
GRPC_AGE_S = 1.0


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    root = stage_echo(tmp_path / "models", delay_s=0.002)
    env = {
        "PODSERVE_DRAIN_GRACE_SECONDS": str(GRACE_S),
        "PODSERVE_GRPC_MAX_CONNECTION_AGE_SECONDS": str(GRPC_AGE_S),
        "PODSERVE_DRAIN_TIMEOUT_SECONDS": "20",
        "PODSERVE_INTRA_OP_THREADS": "1",
    }
    replicas = [ServeProcess(root, tmp_path / f"replica{i}.log", **env) for i in range(2)]
    try:
        fleet = await Fleet.start(replicas)
    except BaseException:
        for r in replicas:
            r.kill()
        raise
    try:
        yield fleet
    finally:
        await fleet.close()


async def test_replacing_each_replica_under_load_fails_no_request(fleet: Fleet) -> None:
    load = Load(
        http_url=f"http://{fleet.http.address}",
        grpc_addr=fleet.grpc.address,
        http_clients=8,
        grpc_clients=2,
    )
    load.start()
    await asyncio.sleep(1.0)
    replacements = []
    for i in range(len(fleet.replicas)):
        replacements.append(await fleet.replace(i, removal_delay_s=REMOVAL_DELAY_S))
        await asyncio.sleep(1.0)
    outcomes = await load.stop()

    logs = "\n".join(r.output() for r in fleet.replicas)
    assert [r.exit_code for r in replacements] == [0, 0], logs
    result = summarize(outcomes, replacements)
    for surface in ("http", "grpc"):
        assert result[surface]["restarting"]["requests"] > 20, result
    failed = [o for o in outcomes if not o.ok]
    assert not failed, (result, failed[:10])
