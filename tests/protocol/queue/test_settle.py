"""How the worker settles deliveries on the real broker: reject, nack, dead-letter.

The broker's own counting is checked first (which negative acknowledgement grows a quorum
queue's ``x-delivery-count`` on the broker under test), then the worker's use of it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import numpy as np
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from podserve import metrics
from podserve.protocol.queue.client import QueueClient, encode_request
from podserve.protocol.queue.topology import Topology, declare
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


@pytest.fixture
async def connection() -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def channel(connection: AbstractConnection) -> AbstractChannel:
    return await connection.channel()


def broker_version(connection: AbstractConnection) -> tuple[int, ...]:
    assert connection.transport is not None
    version = connection.transport.connection.server_properties["version"]
    text = version.decode() if isinstance(version, bytes) else str(version)
    return tuple(int(part) for part in text.split(".")[:2])


async def get(queue: aio_pika.abc.AbstractQueue) -> AbstractIncomingMessage:
    for _ in range(100):
        message = await queue.get(fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing to get from {queue.name}")


def count(message: AbstractIncomingMessage) -> int:
    return int((message.headers or {}).get("x-delivery-count", 0))  # type: ignore[arg-type]


async def test_which_negative_acks_this_broker_counts_as_deliveries(
    connection: AbstractConnection, channel: AbstractChannel, topo: Topology
) -> None:
    """reject counts on every version; nack counts before RabbitMQ 4.3 only."""
    queue = await declare(channel, topo)
    await channel.default_exchange.publish(aio_pika.Message(b"x"), topo.queue)
    first = await get(queue)
    assert count(first) == 0
    await first.reject(requeue=True)
    second = await get(queue)
    assert count(second) == 1  # basic.reject(requeue=True) counts
    await second.nack(requeue=True)
    third = await get(queue)
    nack_counts = broker_version(connection) < (4, 3)
    assert count(third) == (2 if nack_counts else 1)
    await third.ack()


async def test_a_failing_message_is_rejected_until_the_limit_then_dead_lettered(
    start_worker: StartWorker, client: QueueClient, topo: Topology, channel: AbstractChannel
) -> None:
    await start_worker()
    failing = encode_request({"INPUT0": np.array([[-2, 0, 0, 0]], dtype=np.float32)})
    reply = await client.infer(MODEL, failing, timeout_s=30)
    assert reply.status == 503
    assert reply.headers["x-podserve-error-type"] == "StageUnavailableError"
    dlq = await channel.declare_queue(topo.dead_letter_queue, passive=True)
    dead = await get(dlq)
    await dead.ack()
    assert dead.correlation_id == reply.correlation_id
    # Delivered delivery_limit + 1 times: rejected twice (the broker counted both), answered
    # and dead-lettered with the reason on the last delivery allowed.
    assert dead.headers["x-podserve-delivery-count"] == topo.delivery_limit
    assert "downstream stage is down" in str(dead.headers["x-podserve-error"])
    assert counter("podserve_worker_requeued_total", topo.queue) == topo.delivery_limit
    assert await queue_depth(topo.queue) == 0


async def test_a_passed_deadline_is_answered_and_dead_lettered_not_rerun(
    start_worker: StartWorker, client: QueueClient, topo: Topology, channel: AbstractChannel
) -> None:
    await start_worker(delay_s=0.5)
    busy = [await client.publish(MODEL, request(i)) for i in range(16)]
    late = encode_request({"INPUT0": np.zeros((1, 4), np.float32)}, parameters={"timeout": 1000})
    reply = await client.infer(MODEL, late, timeout_s=60)
    assert reply.status == 504, reply.body
    for i, cid in enumerate(busy):
        check_reply(i, await client.result(cid, 60))
    dlq = await channel.declare_queue(topo.dead_letter_queue, passive=True)
    dead = await get(dlq)
    await dead.ack()
    assert dead.headers["x-podserve-error-type"] == "DeadlineExceededError"
    assert dead.headers["x-podserve-delivery-count"] == 0  # run once, never requeued
    assert counter("podserve_worker_requeued_total", topo.queue) == 0


async def test_a_reply_the_broker_refuses_settles_the_request(
    start_worker: StartWorker,
    topo: Topology,
    connection: AbstractConnection,
    channel: AbstractChannel,
) -> None:
    """A full reply queue nacks the reply: the request is rejected, then dead-lettered."""
    full = f"podserve-test-full-{uuid.uuid4().hex[:8]}"
    await channel.declare_queue(
        full, durable=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    try:
        await start_worker()
        publisher = await connection.channel(publisher_confirms=True)
        await publisher.default_exchange.publish(
            aio_pika.Message(
                request(3),
                correlation_id="refused",
                reply_to=full,
                headers={"model": MODEL},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            topo.queue,
        )
        dlq = await channel.declare_queue(topo.dead_letter_queue, passive=True)
        dead = await get(dlq)
        await dead.ack()
        assert dead.correlation_id == "refused"
        assert "reply could not be published" in str(dead.headers["x-podserve-error"])
        assert dead.headers["x-podserve-delivery-count"] == topo.delivery_limit
        await wait_for(lambda: counter("podserve_worker_inflight", topo.queue) == 0)
        assert await queue_depth(topo.queue) == 0
    finally:
        await channel.queue_delete(full)
