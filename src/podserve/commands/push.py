"""``podserve push ROOT/NAME/VERSION DEST``: publish a staged model version to object storage."""

from __future__ import annotations

import argparse
from pathlib import Path

from podserve.commands import Subparsers
from podserve.commands._transfer import add_source_flags, make_reporter, source_options


def register(sub: Subparsers) -> None:
    q = sub.add_parser(
        "push",
        help="publish a staged model version to object storage",
        description="Verify ROOT/NAME/VERSION, then upload it with its manifest and SHA256SUMS "
        "(SHA256SUMS last) to DEST.",
    )
    q.add_argument("src", metavar="ROOT/NAME/VERSION", type=Path)
    q.add_argument("dest", metavar="DEST")
    q.add_argument("--concurrency", type=int, default=4, help="files uploaded at once")
    q.add_argument("--force", action="store_true", help="overwrite a different version at DEST")
    add_source_flags(q)
    q.set_defaults(handler=_push)


def _push(args: argparse.Namespace) -> int:
    from podserve.settings import Settings
    from podserve.storage.push import push
    from podserve.storage.signature import TrustPolicy

    reporter = make_reporter(args.progress, "push")
    try:
        result = push(
            args.src,
            args.dest,
            options=source_options(args),
            concurrency=args.concurrency,
            force=args.force,
            reporter=reporter,
            trust=TrustPolicy.from_settings(Settings()),
        )
    finally:
        reporter.finish()
    if result.already_present:
        print(f"{result.uri}: already holds this version")
    else:
        print(
            f"pushed {args.src} to {result.uri}: {result.total_bytes / 1e6:.1f} MB in "
            f"{result.seconds:.1f} s"
        )
    return 0
