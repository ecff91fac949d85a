"""The queue worker in-process against the real broker: replies, batching, poison, recovery."""

from __future__ import annotations

import asyncio
import json
import subprocess

import aio_pika
import pytest

from podserve import metrics
from podserve.protocol.queue.client import QueueClient
from podserve.protocol.queue.topology import Topology
from tests.protocol.queue.conftest import (
    AMQP_URL,
    MODEL,
    StartWorker,
    check_reply,
    queue_depth,
    request,
    wait_for,
)

pytestmark = pytest.mark.rabbitmq


def counter(name: str, queue: str, **labels: str) -> float:
    return metrics.sample(name, {"queue": queue, **labels}) or 0.0


async def test_n_requests_get_n_correlated_replies_in_batches(
    start_worker: StartWorker, client: QueueClient, topo: Topology
) -> None:
    dataplane, worker = await start_worker(delay_s=0.005)
    n = 300
    ids = [await client.publish(MODEL, request(i)) for i in range(n)]
    replies = await asyncio.gather(*(client.result(cid, 30) for cid in ids))
    for i, (cid, reply) in enumerate(zip(ids, replies, strict=True)):
        assert reply.correlation_id == cid
        check_reply(i, reply)
    assert client.duplicates == 0
    assert client.unexpected == 0
    assert worker.prefetch == 16  # 2 x max_batch_size 8
    stats = dataplane.models[MODEL].batcher.stats  # type: ignore[union-attr]
    assert stats.inference_count >= n
    assert max(stats.batch_sizes) > 1, "messages were fed to the batcher one at a time"
    await wait_for(lambda: counter("podserve_worker_acked_total", topo.queue) == n)
    assert counter("podserve_worker_consumed_total", topo.queue) == n
    assert counter("podserve_worker_inflight", topo.queue) == 0
    assert await queue_depth(topo.queue) == 0


async def test_poison_messages_are_answered_and_dead_lettered_and_serving_goes_on(
    start_worker: StartWorker, client: QueueClient, topo: Topology
) -> None:
    await start_worker()
    poison = {
        "not-json": (MODEL, b"{not json", 400, "InvalidRequestError"),
        "unknown-model": ("nope", request(1), 404, "ModelNotFoundError"),
        "wrong-shape": (
            MODEL,
            json.dumps(
                {
                    "inputs": [
                        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
                    ]
                }
            ).encode(),
            400,
            "InvalidRequestError",
        ),
    }
    for cid, (model, body, status, kind) in poison.items():
        reply = await client.infer(model, body, correlation_id=cid, timeout_s=10)
        assert reply.correlation_id == cid
        assert reply.status == status, reply.body
        assert reply.json()["error"]
        assert reply.headers["x-podserve-error-type"] == kind
    check_reply(7, await client.infer(MODEL, request(7), timeout_s=10))

    connection = await aio_pika.connect(AMQP_URL)
    try:
        dlq = await (await connection.channel()).declare_queue(topo.dead_letter_queue, passive=True)
        dead = {}
        for _ in poison:
            message = await dlq.get(timeout=5)
            dead[message.correlation_id] = message
            await message.ack()
    finally:
        await connection.close()
    assert set(dead) == set(poison)
    assert "not valid JSON" in dead["not-json"].headers["x-podserve-error"]  # type: ignore[operator]
    assert "unknown model 'nope'" in dead["unknown-model"].headers["x-podserve-error"]  # type: ignore[operator]
    assert "shape" in dead["wrong-shape"].headers["x-podserve-error"]  # type: ignore[operator]
    assert dead["not-json"].body == b"{not json"  # the request as it came
    assert (
        counter("podserve_worker_dead_lettered_total", topo.queue, error="InvalidRequestError") == 2
    )
    assert await queue_depth(topo.queue) == 0


async def test_consumes_only_while_ready_and_stops_when_draining(
    start_worker: StartWorker, client: QueueClient, topo: Topology
) -> None:
    dataplane, worker = await start_worker(load=False)
    ids = [await client.publish(MODEL, request(i)) for i in range(5)]
    await asyncio.sleep(0.3)
    assert not worker.consuming
    assert await queue_depth(topo.queue) == 5  # not pulled while loading

    await dataplane.start([(MODEL, None)])
    for i, cid in enumerate(ids):
        check_reply(i, await client.result(cid, 10))
    assert worker.consuming

    dataplane.begin_drain()
    await wait_for(lambda: not worker.consuming, 5)
    late = await client.publish(MODEL, request(99))
    await asyncio.sleep(0.3)
    assert await queue_depth(topo.queue) == 1  # left for another replica
    assert late not in client._answered


async def test_an_on_demand_model_is_loaded_by_a_queued_request(
    start_worker: StartWorker, client: QueueClient
) -> None:
    dataplane, worker = await start_worker(on_demand_models=[MODEL], model_memory_bytes=2**26)
    assert dataplane.models[MODEL].state == "unloaded"
    await wait_for(lambda: worker.consuming, 5)  # on-demand models do not gate readiness
    loads = metrics.sample("podserve_model_loads_total", {"model": MODEL}) or 0.0
    check_reply(3, await client.infer(MODEL, request(3), timeout_s=30))
    assert dataplane.models[MODEL].state == "ready"
    check_reply(4, await client.infer(MODEL, request(4), timeout_s=30))  # a hit
    assert metrics.sample("podserve_model_loads_total", {"model": MODEL}) == loads + 1


def _connection_pids(name: str) -> list[str]:
    """Broker-side ids of the connections with this client-provided name.

    Only this test's connection is closed: ``close_all_connections`` would hit other suites.
    """
    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "client_properties"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    pids = [
        line.split("\t")[0]
        for line in listing.stdout.splitlines()
        if f'{{"connection_name","{name}"}}' in line
    ]
    assert pids, f"no connection named {name!r}"
    return pids


def _close_connections(pids: list[str]) -> None:
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "close_connection", pid, "test: forced close"],
            check=True,
            capture_output=True,
            timeout=60,
        )


@pytest.mark.slow
async def test_forced_connection_close_while_consuming_recovers(
    start_worker: StartWorker, client: QueueClient, topo: Topology
) -> None:
    _, worker = await start_worker(delay_s=0.3)
    pids = await asyncio.to_thread(_connection_pids, f"podserve-worker {topo.queue}")
    n = 400  # ~15 s of work, 50 batches of 8: longer than rabbitmqctl on a busy host
    ids = [await client.publish(MODEL, request(i)) for i in range(n)]
    await wait_for(lambda: client.answered >= 20, 20)
    await asyncio.to_thread(_close_connections, pids)
    await wait_for(lambda: worker.reconnects == 1, 20)
    assert client.answered < n, "the close came too late to test anything"
    replies = await asyncio.gather(*(client.result(cid, 60) for cid in ids))
    for i, reply in enumerate(replies):
        check_reply(i, reply)
    assert worker.consuming
    assert await queue_depth(topo.queue) == 0
