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
from typing import NoReturn

from podserve.commands import COMMANDS


class _Parser(argparse.ArgumentParser):
    """argparse, with an input error as one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    except ValueError as exc:  # pydantic's ValidationError: a flag or PODSERVE_* value
        if type(exc).__name__ != "ValidationError":
            raise
        print(f"podserve {args.command}: error: {_setting_error(exc, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _setting_error(exc: ValueError, args: argparse.Namespace) -> str:
    """The first invalid setting of a pydantic ValidationError, named as its variable and, when
    this command has a flag of the same name, as that flag."""
    errors = exc.errors()  # type: ignore[attr-defined]
    first = errors[0]
    field = str(first["loc"][0]) if first.get("loc") else "?"
    flag = "--" + field.replace("_", "-") + " / " if hasattr(args, field) else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (
        f"invalid value {first.get('input')!r} for {flag}PODSERVE_{field.upper()}: "
        f"{first['msg']}{more}"
    )


def _version() -> str:
    from podserve import __version__

    return f"podserve {__version__}"
