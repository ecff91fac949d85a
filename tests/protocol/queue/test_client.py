"""The client helper, the topology declaration and ``podserve submit`` on the real broker."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aio_pika
import pytest

from podserve.errors import BrokerError, ConfigurationError
from podserve.protocol.queue import topology
from podserve.protocol.queue.client import QueueClient
from podserve.protocol.queue.connection import connect
from podserve.protocol.queue.topology import Topology
from tests.protocol.queue.conftest import (
    AMQP_URL,
    MODEL,
    StartWorker,
    check_reply,
    free_port,
    request,
)

pytestmark = pytest.mark.rabbitmq


async def test_declaration_is_idempotent_and_a_mismatch_is_a_clear_error(topo: Topology) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await topology.declare(await connection.channel(), topo)
        queue = await topology.declare(await connection.channel(), topo)
        assert queue.arguments is not None
        assert queue.arguments["x-queue-type"] == "quorum"
        other = Topology.for_queue(topo.queue, delivery_limit=topo.delivery_limit + 1)
        with pytest.raises(ConfigurationError, match="inequivalent arg 'x-delivery-limit'"):
            await topology.declare(await connection.channel(), other)
    finally:
        await connection.close()


async def test_client_hands_out_one_reply_per_correlation_id(
    start_worker: StartWorker, client: QueueClient
) -> None:
    await start_worker()
    cid = await client.publish(MODEL, request(4))
    first = await client.result(cid, 10)
    check_reply(4, first)
    # What a worker killed between publishing and acking does: the same reply again.
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(first.body, correlation_id=cid, headers=first.headers),
            client.reply_queue,
        )
    finally:
        await connection.close()
    for _ in range(100):
        if client.duplicates:
            break
        await asyncio.sleep(0.02)
    assert client.duplicates == 1
    with pytest.raises(KeyError):
        await client.result(cid, 1)  # answered once, not pending any more


async def test_an_unreachable_broker_is_a_broker_error_without_the_password() -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{free_port()}/"
    with pytest.raises(BrokerError, match=r"guest:\*\*\*@127\.0\.0\.1") as info:
        await connect(url, "test")
    assert "s3cret" not in str(info.value)


async def test_podserve_submit_prints_replies_and_fails_on_error_replies(
    start_worker: StartWorker, topo: Topology, tmp_path: Path
) -> None:
    await start_worker()
    body = tmp_path / "req.json"
    body.write_bytes(request(2))
    cmd = [
        sys.executable,
        "-m",
        "podserve",
        "submit",
        "--queue",
        topo.queue,
        "--model",
        MODEL,
        "--json",
        str(body),
        "--repeat",
        "3",
        "--amqp-url",
        AMQP_URL,
    ]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert len(lines) == 3
    assert lines[0]["outputs"][0]["data"] == [4.0, 5.0, -4.0, 2.0]
    assert len({line["correlation_id"] for line in lines}) == 3

    bad = [*cmd[:7], "nope", *cmd[8:]]
    proc = await asyncio.create_subprocess_exec(*bad, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "unknown model 'nope'" in out.decode()
