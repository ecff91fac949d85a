"""``podserve serve [ROOT]``, and the serving flags ``demo`` and ``worker`` share."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from podserve.commands import Subparsers


def register(sub: Subparsers) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve models from a model repository",
        description="Serve models over HTTP and gRPC (Open Inference Protocol v2). Every flag "
        "also reads from its PODSERVE_* environment variable.",
    )
    serve.add_argument("root", nargs="?", help="repository root (PODSERVE_MODEL_ROOT)")
    add_serving_flags(serve)
    serve.set_defaults(handler=_serve)


def add_serving_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME[:VERSION]",
        help="model to serve (repeat); default: every model in the root",
    )
    p.add_argument("--host", help="bind address (PODSERVE_HOST)")
    p.add_argument("--http-port", type=int, help="HTTP port, 0 = off (PODSERVE_HTTP_PORT)")
    p.add_argument("--grpc-port", type=int, help="gRPC port, 0 = off (PODSERVE_GRPC_PORT)")
    p.add_argument("--max-batch-size", type=int, help="cap the manifest's max_batch_size")
    p.add_argument("--max-queue-delay-ms", type=float, help="batcher fill delay")
    p.add_argument(
        "--batching-policy",
        choices=["adaptive", "fixed_delay"],
        help="adaptive: wait only when it pays; fixed_delay: always wait for the batch to fill",
    )
    p.add_argument("--read-strategy", choices=["mmap", "read"], help="how weights are read")
    p.add_argument("--verify", choices=["full", "size"], help="weight check at load")
    p.add_argument("--queue", help="also consume v2 requests from this RabbitMQ queue")
    p.add_argument("--amqp-url", help="RabbitMQ URL (PODSERVE_AMQP_URL)")
    p.add_argument("--stage", help="serve pipeline stage I/K of a split model")
    p.add_argument("--tp-rank", help="serve tensor-parallel rank R/K (0 serves users)")
    p.add_argument(
        "--repository-api",
        action="store_true",
        default=None,
        help="enable /v2/repository load/unload (see PODSERVE_ADMIN_TOKEN)",
    )
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--log-level")


_FLAG_FIELDS = (
    "models",
    "host",
    "http_port",
    "grpc_port",
    "max_batch_size",
    "max_queue_delay_ms",
    "batching_policy",
    "read_strategy",
    "verify",
    "queue",
    "amqp_url",
    "stage",
    "tp_rank",
    "repository_api",
    "log_format",
    "log_level",
)


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Any:
    """Environment first, flags override: one Settings object."""
    from podserve.settings import Settings

    overrides = {f: getattr(args, f) for f in _FLAG_FIELDS if getattr(args, f, None) is not None}
    if getattr(args, "root", None):
        overrides["model_root"] = Path(args.root)
    overrides.update(extra)
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    from podserve import logs
    from podserve.lifecycle import run_server

    settings = settings_from_args(args)
    logs.configure(settings.log_level, settings.log_format)
    if settings.tp_rank:
        from podserve.tensor_parallel.worker import run_tensor_parallel

        return run_tensor_parallel(settings)
    if settings.stage:
        from podserve.pipeline.stage_server import run_stage

        return run_stage(settings)
    return run_server(settings)
