"""Fixtures for the queue worker tests: unique queues on the real broker, a cheap model.

Every test gets its own queue names (``podserve-test-<random>``) and deletes them afterwards.
The model is the ``python`` runtime running :data:`DOUBLER_SOURCE` from its staged version
directory, so worker subprocesses load it exactly as a user's model would be loaded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import numpy as np
import pytest

from podserve.dataplane import DataPlane
from podserve.protocol.queue import topology
from podserve.protocol.queue.client import QueueClient, encode_request
from podserve.protocol.queue.topology import Topology
from podserve.protocol.queue.worker import QueueWorker
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from podserve.storage.staging import stage_model

AMQP_URL = os.environ.get("PODSERVE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MODEL = "doubler"
WIDTH = 4

# OUTPUT0 = 2 * INPUT0; sleeps delay_s per batch; a row starting with -1 kills the process
# (a model that segfaults on some input), which only worker subprocesses are sent; a row
# starting with -2 fails the batch with a retryable error (a downstream stage is down).
DOUBLER_SOURCE = """
import os
import time

from podserve.errors import StageUnavailableError


class Doubler:
    def __init__(self, delay_s=0.0):
        self.delay_s = delay_s

    def infer(self, inputs):
        x = inputs["INPUT0"]
        if (x[:, 0] == -1).any():
            os._exit(17)
        if (x[:, 0] == -2).any():
            raise StageUnavailableError("the downstream stage is down")
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"OUTPUT0": x * 2}
"""


def stage_doubler(root: Path, *, delay_s: float = 0.0, max_batch_size: int = 8) -> Path:
    src = root.parent / "doubler-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "model.py").write_text(DOUBLER_SOURCE, encoding="utf-8")
    spec = {"datatype": "FP32", "shape": [WIDTH]}
    stage_model(
        {"model.py": src / "model.py"},
        root / MODEL / "1",
        {
            "runtime": "python",
            "inputs": [{"name": "INPUT0", **spec}],
            "outputs": [{"name": "OUTPUT0", **spec}],
            "max_batch_size": max_batch_size,
            "batching": {"max_queue_delay_ms": 2.0},
            "options": {"module": "model.py:Doubler", "kwargs": {"delay_s": delay_s}},
        },
        overwrite=True,
    )
    return root


def row(i: int) -> np.ndarray:
    """Request ``i``'s input: one row that encodes ``i`` so replies can be checked."""
    return np.array([[i, i + 0.5, -i, 1.0]], dtype=np.float32)


def request(i: int) -> bytes:
    return encode_request({"INPUT0": row(i)})


def check_reply(i: int, reply: Any) -> None:
    reply.raise_for_error()
    np.testing.assert_array_equal(reply.outputs()["OUTPUT0"], row(i) * 2)


async def delete_topology(t: Topology) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await topology.delete(await connection.channel(), t)
    finally:
        await connection.close()


async def queue_depth(name: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        queue = await (await connection.channel()).declare_queue(name, passive=True)
        count = queue.declaration_result.message_count
        return int(count or 0)
    finally:
        await connection.close()


@pytest.fixture
async def topo() -> AsyncIterator[Topology]:
    """Unique names for this test; deleted at teardown."""
    t = Topology.for_queue(f"podserve-test-{uuid.uuid4().hex[:12]}", delivery_limit=2)
    yield t
    await delete_topology(t)


@pytest.fixture
async def client(topo: Topology) -> AsyncIterator[QueueClient]:
    async with QueueClient(AMQP_URL, topo.queue, topology=topo) as c:
        yield c


StartWorker = Callable[..., Awaitable[tuple[DataPlane, QueueWorker]]]


@pytest.fixture
async def start_worker(tmp_path: Path, topo: Topology) -> AsyncIterator[StartWorker]:
    """``await start_worker(delay_s=0, load=True, **settings)`` → (data plane, worker)."""
    running: list[tuple[DataPlane, QueueWorker]] = []

    async def start(
        *, delay_s: float = 0.0, load: bool = True, **overrides: Any
    ) -> tuple[DataPlane, QueueWorker]:
        root = stage_doubler(tmp_path / f"models{len(running)}", delay_s=delay_s)
        settings = Settings(
            model_root=root,
            amqp_url=AMQP_URL,
            queue=topo.queue,
            delivery_limit=topo.delivery_limit,
            **overrides,
        )
        dataplane = DataPlane(ModelRepository(root), settings)
        worker = QueueWorker(dataplane, settings)
        await worker.start()
        running.append((dataplane, worker))
        if load:
            await dataplane.start([(MODEL, None)])
        return dataplane, worker

    yield start
    for dataplane, worker in running:
        await worker.stop(grace=1.0)
        await dataplane.stop()


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# --- worker subprocesses ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """``podserve worker`` in a subprocess, ready when its HTTP readiness probe says so."""

    def __init__(self, root: Path, t: Topology, log: Path, **env: str) -> None:
        self.port = free_port()
        self.log = log
        cmd = [
            sys.executable,
            "-m",
            "podserve",
            "worker",
            str(root),
            "--queue",
            t.queue,
            "--amqp-url",
            AMQP_URL,
            "--host",
            "127.0.0.1",
            "--http-port",
            str(self.port),
            "--delivery-limit",
            str(t.delivery_limit),
        ]
        environ = {**os.environ, "PODSERVE_DRAIN_GRACE_SECONDS": "0.2", **env}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environ)

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not ready in {timeout_s}s: {self.output()}")
            await asyncio.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def worker_processes(tmp_path: Path, topo: Topology) -> Iterator[Callable[..., WorkerProcess]]:
    """``spawn(delay_s=..., **env)`` starts a worker subprocess; all are killed at teardown."""
    procs: list[WorkerProcess] = []

    def spawn(*, delay_s: float = 0.0, **env: str) -> WorkerProcess:
        root = tmp_path / f"models-{delay_s}"
        if not root.exists():
            stage_doubler(root, delay_s=delay_s)
        proc = WorkerProcess(root, topo, tmp_path / f"worker{len(procs)}.log", **env)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        proc.stop()
