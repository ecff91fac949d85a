"""Queue worker throughput: podserve's worker vs a naive consumer, MiniLM, 2,000-message backlog.

Both drain the same backlog of v2 requests (one sentence each, ``text`` BYTES [1]) from a
quorum queue on the local RabbitMQ and reply to the client's reply queue; the clock runs
from the start of consuming to the last reply received. Everything runs in one process (one
event loop for client and consumer) with the same staged MiniLM demo model loaded the same
way (podserve's transformers runtime):

* **podserve worker**: ``QueueWorker`` + ``DataPlane``: prefetch 2 x batch size, each message
  its own task into the model's dynamic batcher, replies with publisher confirms, ack after
  the confirm.
* **naive consumer**: the plain loop: prefetch 1, decode, one ``model.infer`` per message
  (off the loop), publish the reply (no confirms), ack, next.

``by_batch_size`` repeats the worker run with ``max_batch_size`` capped at each size (smaller
backlog) and records rows/s: what one replica sustains at that batch size, for the planner.

    python benchmarks/queue_worker.py [--backlog 2000] [--sweep-backlog 400] [--no-sweep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import numpy as np
import orjson

from podserve.dataplane import DataPlane
from podserve.demo import DEMO_MODEL, stage_demo
from podserve.protocol.queue import topology
from podserve.protocol.queue.client import QueueClient, encode_request
from podserve.protocol.queue.topology import Topology
from podserve.protocol.queue.worker import QueueWorker
from podserve.runtime.registry import create_model
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository

AMQP_URL = os.environ.get("PODSERVE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
WORDS = "kubernetes scales the model replicas when the queue grows and drains them on sigterm"


def sentence(i: int) -> bytes:
    words = WORDS.split()
    rot = i % len(words)
    return f"request {i}: {' '.join(words[rot:] + words[:rot])}".encode()


def body(i: int) -> bytes:
    arr = np.empty(1, dtype=object)
    arr[0] = sentence(i)
    return encode_request({"text": arr})


async def publish_backlog(client: QueueClient, n: int) -> list[str]:
    return list(await asyncio.gather(*(client.publish(DEMO_MODEL, body(i)) for i in range(n))))


async def await_all(client: QueueClient, ids: list[str]) -> float:
    replies = await asyncio.gather(*(client.result(cid, 600) for cid in ids))
    for reply in replies:
        reply.raise_for_error()
    assert replies[0].outputs()["embedding"].shape == (1, 384)
    return time.perf_counter()


async def run_worker(root: Path, n: int, max_batch: int | None) -> dict[str, Any]:
    t = Topology.for_queue(f"bench-queue-{uuid.uuid4().hex[:8]}")
    settings = Settings(model_root=root, amqp_url=AMQP_URL, queue=t.queue, max_batch_size=max_batch)  # type: ignore[call-arg]
    dataplane = DataPlane(ModelRepository(root), settings)
    await dataplane.start([(DEMO_MODEL, None)])
    try:
        async with QueueClient(AMQP_URL, t.queue, topology=t) as client:
            ids = await publish_backlog(client, n)
            worker = QueueWorker(dataplane, settings)
            start = time.perf_counter()
            await worker.start()  # the data plane is ready: consumes at once
            end = await await_all(client, ids)
            await worker.stop(grace=1.0)
        stats = dataplane.models[DEMO_MODEL].batcher.stats  # type: ignore[union-attr]
        sizes = {k: v for k, v in stats.batch_sizes.items()}
        warm = sizes.pop(1, 0) - 1  # the warm-up ran through the model, not the batcher
        if warm > 0:
            sizes[1] = warm
        mean = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
        return {
            "messages": n,
            "seconds": round(end - start, 3),
            "throughput_rps": round(n / (end - start), 1),
            "prefetch": worker.prefetch,
            "max_batch_size": max_batch or 32,
            "mean_batch_size": round(mean, 1),
            "model_busy_share": round(stats.compute_ns / 1e9 / (end - start), 2),
        }
    finally:
        await dataplane.stop()
        await delete(t)


async def run_naive(root: Path, n: int) -> dict[str, Any]:
    """The plain consumer loop, on the same model object podserve would load."""
    t = Topology.for_queue(f"bench-naive-{uuid.uuid4().hex[:8]}")
    settings = Settings(model_root=root)  # type: ignore[call-arg]
    model = create_model(ModelRepository(root).open(DEMO_MODEL), settings)
    model.load()
    model.infer(model.warmup_inputs())
    try:
        async with QueueClient(AMQP_URL, t.queue, topology=t) as client:
            ids = await publish_backlog(client, n)
            connection = await aio_pika.connect(AMQP_URL)
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1)
            queue = await channel.get_queue(t.queue, ensure=False)
            start = time.perf_counter()
            done = 0
            async with queue.iterator() as messages:
                async for message in messages:
                    doc = orjson.loads(message.body)
                    text = np.empty(1, dtype=object)
                    text[0] = doc["inputs"][0]["data"][0].encode()
                    out = await asyncio.to_thread(model.infer, {"text": text})
                    reply = orjson.dumps(
                        {
                            "model_name": DEMO_MODEL,
                            "outputs": [
                                {
                                    "name": "embedding",
                                    "datatype": "FP32",
                                    "shape": [1, 384],
                                    "data": out["embedding"].reshape(-1).tolist(),
                                }
                            ],
                        }
                    )
                    await channel.default_exchange.publish(
                        aio_pika.Message(reply, correlation_id=message.correlation_id),
                        message.reply_to or "",
                    )
                    await message.ack()
                    done += 1
                    if done == n:
                        break
            end = await await_all(client, ids)
            await connection.close()
        return {
            "messages": n,
            "seconds": round(end - start, 3),
            "throughput_rps": round(n / (end - start), 1),
            "prefetch": 1,
            "max_batch_size": 1,
            "mean_batch_size": 1.0,
        }
    finally:
        model.unload()
        await delete(t)


def model_only(root: Path, sizes: list[int], seconds: float = 3.0) -> dict[str, float]:
    """Rows/s of ``model.infer`` alone at each batch size: the ceiling any consumer can reach."""
    model = create_model(ModelRepository(root).open(DEMO_MODEL), Settings())  # type: ignore[call-arg]
    model.load()
    out: dict[str, float] = {}
    try:
        for size in sizes:
            text = np.empty(size, dtype=object)
            text[:] = [sentence(i) for i in range(size)]
            model.infer({"text": text})
            rows, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                model.infer({"text": text})
                rows += size
            out[str(size)] = round(rows / (time.perf_counter() - start), 1)
    finally:
        model.unload()
    return out


async def delete(t: Topology) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await topology.delete(await connection.channel(), t)
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--sweep-backlog", type=int, default=400)
    parser.add_argument("--sweep", default="1,4,8,16,32", help="batch sizes for by_batch_size")
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="podserve-bench-queue-")) / "models"
    stage_demo(root)
    worker = await run_worker(root, args.backlog, None)
    naive = await run_naive(root, args.backlog)
    ceiling = model_only(root, [1, 32])
    by_batch: dict[str, float] = {}
    if not args.no_sweep:
        for b in (int(x) for x in args.sweep.split(",")):
            by_batch[str(b)] = (await run_worker(root, args.sweep_backlog, b))["throughput_rps"]
    speedup = worker["throughput_rps"] / naive["throughput_rps"]
    result = {
        "benchmark": "queue",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, no GPU",
        "command": " ".join(["python", "benchmarks/queue_worker.py", *sys.argv[1:]]),
        "model": "minilm (all-MiniLM-L6-v2, transformers runtime, max_batch_size 32)",
        "backlog": args.backlog,
        "podserve_worker": worker,
        "naive_consumer": naive,
        "speedup": round(speedup, 2),
        "model_only_rows_per_s": ceiling,  # {batch size: rows/s}, no queue, no server
        "throughput_rps": worker["throughput_rps"],  # one replica, what the planner reads
        "by_batch_size": by_batch,  # {max batch size: rows/s end to end, one replica}
    }
    out = Path(__file__).parent / "results" / "queue.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| consumer | messages | seconds | msg/s | prefetch | mean batch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in (("podserve worker", worker), ("naive consumer", naive)):
        print(
            f"| {name} | {r['messages']} | {r['seconds']} | {r['throughput_rps']} | "
            f"{r['prefetch']} | {r['mean_batch_size']} |"
        )
    print(f"\nspeedup: {speedup:.1f}x; model alone (rows/s by batch size): {ceiling}")
    if by_batch:
        print("\n| max batch size | " + " | ".join(by_batch) + " |")
        print("|---|" + "---:|" * len(by_batch))
        print("| msg/s | " + " | ".join(str(v) for v in by_batch.values()) + " |")


if __name__ == "__main__":
    asyncio.run(main())
