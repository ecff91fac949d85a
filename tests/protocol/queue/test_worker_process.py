"""``podserve worker`` processes: killed, terminated, and crashed by a message."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import aio_pika
import numpy as np
import pytest

from podserve.protocol.queue.client import QueueClient, encode_request
from podserve.protocol.queue.topology import Topology
from tests.protocol.queue.conftest import (
    AMQP_URL,
    MODEL,
    WorkerProcess,
    check_reply,
    queue_depth,
    request,
    wait_for,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

Spawn = Callable[..., WorkerProcess]


async def test_kill_9_mid_batch_a_second_worker_finishes_nothing_lost(
    worker_processes: Spawn, client: QueueClient, topo: Topology
) -> None:
    first = worker_processes(delay_s=0.15)  # 8 rows per 0.15 s batch
    await first.wait_ready()
    n = 120
    ids = [await client.publish(MODEL, request(i)) for i in range(n)]
    await wait_for(lambda: client.answered >= 16, 30)
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(10) == -signal.SIGKILL
    done_by_first = client.answered
    assert done_by_first < n

    second = worker_processes(delay_s=0.15)
    await second.wait_ready()
    replies = await asyncio.gather(*(client.result(cid, 60) for cid in ids))
    for i, reply in enumerate(replies):
        check_reply(i, reply)
    assert await queue_depth(topo.queue) == 0
    # A message replied to but not acked by the killed worker is answered twice; the client
    # saw it once (dropped copies are counted, never handed out).
    assert client.unexpected == 0


async def test_sigterm_under_load_exits_0_and_replies_exactly_once(
    worker_processes: Spawn, client: QueueClient, topo: Topology
) -> None:
    first = worker_processes(delay_s=0.15)
    await first.wait_ready()
    n = 120
    ids = [await client.publish(MODEL, request(i)) for i in range(n)]
    await wait_for(lambda: client.answered >= 16, 30)
    first.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.proc.wait, 30) == 0, first.output()
    assert client.answered < n
    assert "stopped consuming" in first.output()

    second = worker_processes(delay_s=0.15)
    await second.wait_ready()
    replies = await asyncio.gather(*(client.result(cid, 60) for cid in ids))
    for i, reply in enumerate(replies):
        check_reply(i, reply)
    await asyncio.sleep(0.5)  # a late duplicate would arrive by now
    assert client.duplicates == 0
    assert await queue_depth(topo.queue) == 0


async def test_a_message_that_kills_every_worker_ends_in_the_dlq(
    worker_processes: Spawn, client: QueueClient, topo: Topology
) -> None:
    deadly = encode_request({"INPUT0": np.array([[-1, 0, 0, 0]], dtype=np.float32)})
    cid = await client.publish(MODEL, deadly)
    # delivery_limit 2: delivered 3 times, each delivery kills a worker, then dead-lettered.
    for _ in range(topo.delivery_limit + 1):
        worker = worker_processes()
        assert await asyncio.to_thread(worker.proc.wait, 60) == 17, worker.output()

    survivor = worker_processes()
    await survivor.wait_ready()
    check_reply(5, await client.infer(MODEL, request(5), timeout_s=30))
    connection = await aio_pika.connect(AMQP_URL)
    try:
        dlq = await (await connection.channel()).declare_queue(topo.dead_letter_queue, passive=True)
        message = await dlq.get(timeout=5)
        await message.ack()
    finally:
        await connection.close()
    assert message.correlation_id == cid
    assert message.headers["x-first-death-reason"] == "delivery_limit"
    assert cid not in client._answered  # no worker lived to answer it
