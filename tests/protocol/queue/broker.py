"""Driving the test broker from outside: restart it, close connections, read queue depths.

These use ``rabbitmqctl`` (root on the test machine). A restart affects every client of the
broker, so tests that restart it are marked ``slow`` and wait robustly for it to come back.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import aio_pika
import pytest

from tests.protocol.queue.conftest import AMQP_URL

CTL_TIMEOUT_S = 120


def rabbitmqctl(*args: str) -> str:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed")
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=CTL_TIMEOUT_S
    )
    if done.returncode != 0:
        if "access" in done.stderr.lower() or "permission" in done.stderr.lower():
            pytest.skip(f"rabbitmqctl needs privileges: {done.stderr.strip()[:200]}")
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


async def wait_for_broker(timeout_s: float = 180.0) -> None:
    """Until an AMQP connection opens (the port opens a little before the vhost is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection = await aio_pika.connect(AMQP_URL, timeout=10)
        except Exception:
            if time.monotonic() > deadline:
                raise AssertionError(f"the broker did not come back within {timeout_s}s") from None
            await asyncio.sleep(0.5)
            continue
        await connection.close()
        return


async def restart_broker() -> None:
    """``rabbitmqctl stop_app && rabbitmqctl start_app``, then wait until it accepts clients."""
    try:
        await asyncio.to_thread(rabbitmqctl, "stop_app")
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
    await wait_for_broker()


def connection_pids(name: str) -> list[str]:
    """Broker-side ids of the connections with this client-provided name.

    Only the test's own connections are closed: ``close_all_connections`` would hit other suites.
    """
    listing = rabbitmqctl(
        "list_connections", "-q", "--no-table-headers", "pid", "client_properties"
    )
    return [
        line.split("\t")[0]
        for line in listing.splitlines()
        if f'{{"connection_name","{name}"}}' in line
    ]


def close_connections(pids: list[str]) -> None:
    for pid in pids:
        rabbitmqctl("close_connection", pid, "test: forced close")
