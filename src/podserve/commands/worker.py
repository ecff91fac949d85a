"""``podserve worker [ROOT]``: serve models to a RabbitMQ queue (``submit`` publishes to it)."""

from __future__ import annotations

import argparse
import asyncio
import os

from podserve.commands import Subparsers


def register(sub: Subparsers) -> None:
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
