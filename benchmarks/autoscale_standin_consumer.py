"""STAND-IN for `podserve worker`, used by autoscale_validation.py until the real worker lands.

A minimal aio-pika consumer with the worker's shape: it waits ``--startup-s`` (the weight
load), consumes with prefetch = batch, takes up to ``--batch`` messages, "infers" for
``--batch-ms`` (a fixed batch time, so the batched rate is batch / batch time), publishes one
reply per message to ``reply_to`` with its correlation id, then acks. SIGTERM stops consuming,
finishes the batch in hand and exits 0. It is NOT podserve's worker.

    python benchmarks/autoscale_standin_consumer.py --queue Q [--batch 8] [--batch-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import aio_pika


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", required=True)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-ms", type=float, default=100.0)
    parser.add_argument("--startup-s", type=float, default=2.0)
    args = parser.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.sleep(args.startup_s)  # weight load and warm-up
    connection = await aio_pika.connect(args.amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=args.batch)
    queue = await channel.get_queue(args.queue, ensure=True)
    inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    tag = await queue.consume(inbox.put)
    print("consuming", flush=True)
    while not stop.is_set():
        try:
            first = await asyncio.wait_for(inbox.get(), timeout=0.05)
        except TimeoutError:
            continue
        batch = [first]
        while len(batch) < args.batch and not inbox.empty():
            batch.append(inbox.get_nowait())
        await asyncio.sleep(args.batch_ms / 1000.0)  # the batched inference
        for message in batch:
            if message.reply_to:
                await channel.default_exchange.publish(
                    aio_pika.Message(b'{"outputs": []}', correlation_id=message.correlation_id),
                    routing_key=message.reply_to,
                )
            await message.ack()
    await queue.cancel(tag)
    while not inbox.empty():  # delivered but not started: hand back to the broker
        await inbox.get_nowait().nack(requeue=True)
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main())
