"""``podserve worker`` (consume a RabbitMQ queue) and ``podserve submit`` (publish, await)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from podserve.commands.serve import add_serving_flags

    worker = sub.add_parser(
        "worker",
        help="consume v2 inference requests from a RabbitMQ queue and reply",
        description="Serve models from a repository to a RabbitMQ queue: each message is a v2 "
        "inference request (the REST JSON body) with reply_to and correlation_id; the reply is "
        "published (with confirms) before the message is acked. Undecodable or invalid "
        "messages get an error reply and go to the dead-letter queue. HTTP health endpoints "
        "stay on for the probes; gRPC is off unless --grpc-port is given. Every flag also "
        "reads from its PODSERVE_* environment variable.",
    )
    worker.add_argument("root", nargs="?", help="repository root (PODSERVE_MODEL_ROOT)")
    add_serving_flags(worker)  # includes --queue (required here) and --amqp-url
    worker.add_argument("--prefetch", type=int, help="unacked messages (default 2 x batch size)")
    worker.add_argument("--delivery-limit", type=int, help="deliveries before the DLQ (3)")
    worker.add_argument("--dead-letter-queue", help="DLQ name (default <queue>.dlq)")
    worker.add_argument("--dead-letter-exchange", help="DLX name (default <queue>.dlx)")
    worker.add_argument("--results-exchange", help="publish replies to this exchange")
    worker.set_defaults(handler=_worker)

    submit = sub.add_parser(
        "submit",
        help="publish inference requests to a worker queue and print the replies",
        description="Publish v2 inference requests to QUEUE and print each reply as one JSON "
        "line (in the order given). Exit status 1 if any reply is an error.",
    )
    submit.add_argument("--queue", required=True, help="the worker's request queue")
    submit.add_argument("--model", help="target model (the 'model' header)")
    submit.add_argument("--model-version", help="target version (the 'model_version' header)")
    body = submit.add_mutually_exclusive_group(required=True)
    body.add_argument(
        "--json",
        action="append",
        metavar="FILE",
        help="a v2 request body (JSON); '-' reads stdin; repeat for more",
    )
    body.add_argument(
        "--text",
        action="append",
        help="one request with this string as a BYTES input; repeat for more",
    )
    submit.add_argument("--input", default="text", help="input name for --text (default: text)")
    submit.add_argument("--repeat", type=int, default=1, help="send every request N times")
    submit.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per reply")
    submit.add_argument("--no-wait", action="store_true", help="publish only, print the ids")
    submit.add_argument("--amqp-url", help="RabbitMQ URL (PODSERVE_AMQP_URL)")
    submit.set_defaults(handler=_submit)


_WORKER_FIELDS = (
    "prefetch",
    "delivery_limit",
    "dead_letter_queue",
    "dead_letter_exchange",
    "results_exchange",
)


def _worker(args: argparse.Namespace) -> int:
    from podserve import logs
    from podserve.commands.serve import settings_from_args
    from podserve.errors import ConfigurationError
    from podserve.lifecycle import Server

    extra = {f: getattr(args, f) for f in _WORKER_FIELDS if getattr(args, f) is not None}
    settings = settings_from_args(args, **extra)
    if not settings.queue:
        raise ConfigurationError("podserve worker needs --queue NAME (or PODSERVE_QUEUE)")
    logs.configure(settings.log_level, settings.log_format)
    grpc = args.grpc_port is not None or "PODSERVE_GRPC_PORT" in os.environ
    server = Server(settings, http=True, grpc=grpc)
    try:
        import uvloop

        return uvloop.run(server.run())
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(server.run())


def _requests(args: argparse.Namespace) -> list[bytes]:
    import numpy as np

    from podserve.errors import ConfigurationError
    from podserve.protocol.queue.client import encode_request

    if args.text:
        out = []
        for text in args.text:
            arr = np.empty(1, dtype=object)
            arr[0] = text.encode("utf-8")
            out.append(encode_request({args.input: arr}))
        return out
    bodies = []
    for name in args.json:
        try:
            bodies.append(sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes())
        except OSError as exc:
            raise ConfigurationError(f"cannot read {name}: {exc.strerror}") from None
    return bodies


def _submit(args: argparse.Namespace) -> int:
    from podserve.settings import Settings

    url = args.amqp_url or Settings().amqp_url  # type: ignore[call-arg]
    bodies = _requests(args) * max(args.repeat, 1)
    return asyncio.run(_submit_async(url, args, bodies))


async def _submit_async(url: str, args: argparse.Namespace, bodies: list[bytes]) -> int:
    import orjson

    from podserve.protocol.queue.client import QueueClient
    from podserve.protocol.queue.convert import HEADER_LENGTH
    from podserve.protocol.v2 import tensor_to_json

    failed = False
    async with QueueClient(url, args.queue, connection_name="podserve-submit") as client:
        ids = [
            await client.publish(args.model, body, version=args.model_version) for body in bodies
        ]
        if args.no_wait:
            for cid in ids:
                print(cid)
            return 0
        for cid in ids:
            reply = await client.result(cid, args.timeout)
            doc = reply.json()
            if HEADER_LENGTH in reply.headers:  # binary outputs: print them as JSON data
                arrays = reply.outputs()
                for item in doc.get("outputs", []):
                    item.pop("parameters", None)
                    item["data"] = tensor_to_json(arrays[item["name"]])
            doc["correlation_id"] = cid
            failed |= reply.error is not None
            sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    return 1 if failed else 0
