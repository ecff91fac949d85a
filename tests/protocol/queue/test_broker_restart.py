"""The worker across broker restarts and forced connection closes (real broker, real process).

Each test drains every request through the disruption, with replies to a durable reply queue,
and then checks that the worker exits 0 on SIGTERM and that no task's exception went unseen.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest

from podserve.protocol.queue.client import QueueClient
from podserve.protocol.queue.topology import Topology
from tests.protocol.queue.broker import close_connections, connection_pids, restart_broker
from tests.protocol.queue.conftest import (
    MODEL,
    WorkerProcess,
    check_reply,
    queue_depth,
    request,
    wait_for,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

Spawn = Callable[..., WorkerProcess]

# Logged by asyncio for an exception nobody awaited, and by the loop for a failed callback.
UNSEEN = ("exception was never retrieved", "Exception in callback", "Unhandled exception")


async def _drain_and_stop(
    worker: WorkerProcess, client: QueueClient, topo: Topology, ids: list[str]
) -> None:
    replies = await asyncio.gather(*(client.result(cid, 240) for cid in ids))
    for i, reply in enumerate(replies):
        check_reply(i, reply)
    assert client.unexpected == 0
    assert await queue_depth(topo.queue) == 0
    assert await queue_depth(topo.dead_letter_queue) == 0
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.proc.wait, 60) == 0, worker.output()
    log = worker.log.read_text(encoding="utf-8", errors="replace")
    for text in UNSEEN:
        assert text not in log, worker.output()
    assert "reconnected to RabbitMQ" in log
    assert "still in flight" not in log  # nothing hung on the dead connection


async def test_broker_restart_mid_run_every_request_is_answered(
    worker_processes: Spawn, client: QueueClient, topo: Topology
) -> None:
    # 0.5 s per batch of 8: the run outlasts rabbitmqctl, which takes seconds on a busy host.
    worker = worker_processes(delay_s=0.5, PYTHONASYNCIODEBUG="1")
    await worker.wait_ready()
    n = 300
    ids = [await client.publish(MODEL, request(i)) for i in range(n)]
    await wait_for(lambda: client.answered >= 20, 120)
    await restart_broker()
    assert client.answered < n, "the restart came too late to test anything"
    await _drain_and_stop(worker, client, topo, ids)


async def test_connection_forced_closed_mid_batch_every_request_is_answered(
    worker_processes: Spawn, client: QueueClient, topo: Topology
) -> None:
    # 0.5 s per batch of 8: the run outlasts rabbitmqctl, which takes seconds on a busy host.
    worker = worker_processes(delay_s=0.5, PYTHONASYNCIODEBUG="1")
    await worker.wait_ready()
    pids = await asyncio.to_thread(connection_pids, f"podserve-worker {topo.queue}")
    assert pids, "the worker's connection is not listed"
    n = 300
    ids = [await client.publish(MODEL, request(i)) for i in range(n)]
    await wait_for(lambda: client.answered >= 20, 120)
    await asyncio.to_thread(close_connections, pids)
    assert client.answered < n, "the close came too late to test anything"
    await _drain_and_stop(worker, client, topo, ids)
