"""Queue soak: worker processes drain a backlog through broker restarts and a SIGKILL.

N ``podserve worker`` processes serve a cheap model (``OUTPUT0 = INPUT0``, a few ms per
batch so the run lasts through the disruptions) from one quorum queue; a client publishes the
whole backlog (persistent, confirmed) and waits for every reply on its durable reply queue.
As the replies come in, the broker is restarted (``rabbitmqctl stop_app && start_app``) and
a worker is killed with SIGKILL and replaced, at fixed shares of the backlog. Afterwards every
worker gets SIGTERM and must exit 0, and the script checks:

* every request answered, each reply the right one (``OUTPUT0`` equals the request's input);
* no delivery acked twice (the broker would close the channel with PRECONDITION_FAILED
  "unknown delivery tag") and no task exception unobserved, from the workers' logs;
* nothing left in the request queue, its DLQ or the reply queue.

Duplicate replies are counted, not failed: a worker that published a reply and lost its
connection (or its life) before the ack sees the message again, which at-least-once allows;
the client hands out the first reply only.

Needs root for ``rabbitmqctl`` and the broker on ``PODSERVE_AMQP_URL`` to itself (a restart
drops every client's connections).

    python benchmarks/queue_soak.py [--requests 5000] [--workers 2] [--restarts 2] [--kills 1]
        [--out benchmarks/results/queue_soak.json]

Exit status 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import numpy as np

from podserve.protocol.queue import topology
from podserve.protocol.queue.client import QueueClient, encode_request
from podserve.protocol.queue.topology import Topology
from podserve.storage.staging import stage_model

AMQP_URL = os.environ.get("PODSERVE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MODEL = "echo"
MODEL_SOURCE = """
import time


class Echo:
    def __init__(self, delay_s=0.0):
        self.delay_s = delay_s

    def infer(self, inputs):
        time.sleep(self.delay_s)
        return {"OUTPUT0": inputs["INPUT0"].copy()}
"""
# Logged when a task's or future's exception went unseen, or a delivery tag was acked twice.
BAD_LOG_LINES = ("exception was never retrieved", "Exception in callback", "unknown delivery tag")


def stage(root: Path, delay_s: float) -> Path:
    src = root.parent / "echo-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "model.py").write_text(MODEL_SOURCE, encoding="utf-8")
    spec = {"datatype": "FP32", "shape": [4]}
    stage_model(
        {"model.py": src / "model.py"},
        root / MODEL / "1",
        {
            "runtime": "python",
            "inputs": [{"name": "INPUT0", **spec}],
            "outputs": [{"name": "OUTPUT0", **spec}],
            "max_batch_size": 8,
            "batching": {"max_queue_delay_ms": 2.0},
            "options": {"module": "model.py:Echo", "kwargs": {"delay_s": delay_s}},
        },
        overwrite=True,
    )
    return root


def row(i: int) -> np.ndarray:
    return np.array([[i, -i, i / 2, 1.0]], dtype=np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    """One ``podserve worker`` process and its log."""

    def __init__(self, root: Path, t: Topology, log: Path) -> None:
        self.port = free_port()
        self.log = log
        cmd = [sys.executable, "-m", "podserve", "worker", str(root), "--queue", t.queue]
        cmd += ["--amqp-url", AMQP_URL, "--host", "127.0.0.1", "--http-port", str(self.port)]
        cmd += ["--delivery-limit", str(t.delivery_limit)]
        env = {**os.environ, "PODSERVE_DRAIN_GRACE_SECONDS": "0.2"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker not ready (exit {self.proc.poll()}): {tail}")
            await asyncio.sleep(0.2)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=180)


async def wait_for_broker(timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection = await aio_pika.connect(AMQP_URL, timeout=10)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
            continue
        await connection.close()
        return


async def restart_broker(client: QueueClient, event: dict[str, Any]) -> None:
    started = time.monotonic()
    try:
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        event["answered_when_stopped"] = client.answered
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
    await wait_for_broker()
    event["seconds"] = round(time.monotonic() - started, 1)


async def depth(name: str) -> int:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        queue = await (await connection.channel()).declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await connection.close()


def schedule(restarts: int, kills: int) -> list[tuple[float, str]]:
    """Disruptions at evenly spaced shares of the backlog, restarts and kills alternating."""
    ordered: list[str] = []
    for i in range(max(restarts, kills)):
        ordered += ["restart"] * (i < restarts) + ["kill"] * (i < kills)
    last = max(len(ordered) - 1, 1)
    return [(round(0.15 + 0.45 * i / last, 2), kind) for i, kind in enumerate(ordered)]


async def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    root = stage(work / "models", args.batch_delay_ms / 1000)
    t = Topology.for_queue(f"podserve-soak-{uuid.uuid4().hex[:8]}", delivery_limit=20)
    workers: list[Worker] = []
    events: list[dict[str, Any]] = []
    n = args.requests
    async with QueueClient(AMQP_URL, t.queue, topology=t, connection_name="podserve-soak") as c:
        try:
            # The whole backlog first, so the disruptions fall at known shares of the work.
            ids = list(
                await asyncio.gather(
                    *(c.publish(MODEL, encode_request({"INPUT0": row(i)})) for i in range(n))
                )
            )
            started = time.monotonic()
            for _ in range(args.workers):
                workers.append(Worker(root, t, work / f"worker{len(workers)}.log"))
            results = asyncio.gather(*(c.result(cid, args.timeout) for cid in ids))
            for share, kind in schedule(args.restarts, args.kills):
                while True:  # until this share of the backlog is answered
                    if c.answered >= share * n or results.done():
                        break
                    await asyncio.sleep(0.05)
                event: dict[str, Any] = {"kind": kind, "answered_before": c.answered}
                if kind == "restart":
                    await restart_broker(c, event)
                else:
                    victim = next(w for w in workers if w.proc.poll() is None)
                    victim.proc.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(victim.proc.wait, 30)
                    workers.append(Worker(root, t, work / f"worker{len(workers)}.log"))
                    event["answered_when_killed"] = c.answered
                events.append(event)
            replies = await results
            seconds = time.monotonic() - started
            wrong = sum(
                1
                for i, reply in enumerate(replies)
                if reply.error is not None or not np.array_equal(reply.outputs()["OUTPUT0"], row(i))
            )
            await asyncio.sleep(1.0)  # late duplicates arrive by now
            exits = []
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.send_signal(signal.SIGTERM)
                    exits.append(await asyncio.to_thread(w.proc.wait, 120))
            left = {
                "requests": await depth(t.queue),
                "dead_letters": await depth(t.dead_letter_queue),
                "replies": await depth(c.reply_queue),
            }
            logs = "".join(w.text() for w in workers)
        finally:
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
                    w.proc.wait(30)
            connection = await aio_pika.connect(AMQP_URL)
            try:
                await topology.delete(await connection.channel(), t)
            finally:
                await connection.close()
    bad = {line: logs.count(line) for line in BAD_LOG_LINES}
    return {
        "requests": n,
        "answered": c.answered,
        "wrong_or_error_replies": wrong,
        "duplicate_replies": c.duplicates,
        "unexpected_replies": c.unexpected,
        "left_in_queues": left,
        "bad_log_lines": bad,
        "forgotten_deliveries": logs.count("forgotten: its connection closed"),
        "reconnects": logs.count("reconnected to RabbitMQ"),
        "disruptions": events,
        "sigterm_exit_codes": exits,
        "seconds": round(seconds, 1),
        "ok": (
            c.answered == n
            and wrong == 0
            and c.unexpected == 0
            and not any(left.values())
            and not any(bad.values())
            and all(code == 0 for code in exits)
            # each disruption hit the run, not its end
            and all(
                e.get("answered_when_stopped", e.get("answered_when_killed", n)) < n for e in events
            )
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--kills", type=int, default=1)
    parser.add_argument(
        "--batch-delay-ms", type=float, default=100.0, help="model time per batch of 8"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per reply, at most")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "queue_soak.json"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="podserve-soak-") as work:
        result = asyncio.run(soak(args, Path(work)))
    result = {
        "benchmark": "queue_soak",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores, shared",
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(["python", "benchmarks/queue_soak.py", *sys.argv[1:]]),
        "workers": args.workers,
        "batch_delay_ms": args.batch_delay_ms,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
