"""The ``podserve`` command line.

Each command lives in ``podserve/commands/<command>.py`` and exposes ``register(subparsers)``;
this file registers them all, and ``podserve --help`` imports nothing heavy. Handlers return an
exit code; a :class:`~podserve.errors.PodserveError` becomes its message on stderr and its
``exit_code``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from podserve.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podserve",
        description="Serve AI models from a verified model repository (Open Inference Protocol).",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"podserve.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from podserve.errors import PodserveError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except PodserveError as exc:
        print(f"podserve {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _version() -> str:
    from podserve import __version__

    return f"podserve {__version__}"
