"""``podserve pull`` and ``podserve push``: the init-container step and its reverse.

Exit codes an init container's restart policy can act on (from the error tree): 0 done or
already present, 2 bad arguments or names, 3 the volume, 4 checksum/manifest problems,
5 transient network trouble (retries exhausted; restarting may help), 6 permanent (404,
access denied, wrong region: restarting will not help).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_CONCURRENCY = 8
DEFAULT_PART_MB = 32


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pull",
        help="copy a model version from s3://, gs://, https:// or a path onto the volume",
        description="Download SOURCE (a version directory or a .tar/.tar.gz/.zip archive) into "
        "ROOT/NAME/VERSION: parallel ranged parts, verified against SHA256SUMS while "
        "streaming, resumable, published by one atomic rename.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("dest", metavar="ROOT/NAME/VERSION", type=Path)
    p.add_argument(
        "--concurrency",
        type=int,
        default=_env_int("PODSERVE_PULL_CONCURRENCY", DEFAULT_CONCURRENCY),
        help="parallel requests (env PODSERVE_PULL_CONCURRENCY; default %(default)s)",
    )
    p.add_argument(
        "--part-size-mb",
        type=int,
        default=_env_int("PODSERVE_PULL_PART_SIZE_MB", DEFAULT_PART_MB),
        help="byte-range part size in MiB (env PODSERVE_PULL_PART_SIZE_MB; default %(default)s)",
    )
    p.add_argument(
        "--sha256",
        action="store_true",
        help="verify with SHA-256 even when the manifest records BLAKE3 digests",
    )
    _common(p)
    p.set_defaults(handler=_pull)

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
    _common(q)
    q.set_defaults(handler=_push)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint-url", default=None, help="S3-compatible endpoint (else AWS_ENDPOINT_URL)"
    )
    p.add_argument("--region", default=None, help="bucket region (else AWS_REGION)")
    p.add_argument(
        "--credentials-dir",
        type=Path,
        default=os.environ.get("PODSERVE_S3_CREDENTIALS_DIR"),
        help="directory with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY files, as a mounted "
        "Kubernetes Secret (env PODSERVE_S3_CREDENTIALS_DIR)",
    )
    p.add_argument("--anonymous", action="store_true", help="unsigned requests (public buckets)")
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "log", "none"),
        default="auto",
        help="a progress bar on a terminal, log lines otherwise (default auto)",
    )


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value and value.isdigit() else default


def _options(args: argparse.Namespace) -> Any:
    from podserve.storage.sources.base import SourceOptions

    return SourceOptions(
        endpoint_url=args.endpoint_url,
        region=args.region,
        credentials_dir=args.credentials_dir,
        anonymous=args.anonymous,
    )


def _pull(args: argparse.Namespace) -> int:
    from podserve.errors import ConfigurationError
    from podserve.storage.pull import pull
    from podserve.storage.sources.base import redact

    if args.concurrency < 1 or args.part_size_mb < 1:
        raise ConfigurationError("--concurrency and --part-size-mb must be at least 1")
    reporter = make_reporter(args.progress, "pull")
    try:
        result = pull(
            args.source,
            args.dest,
            options=_options(args),
            concurrency=args.concurrency,
            part_size=args.part_size_mb * 1024 * 1024,
            reporter=reporter,
            force_sha256=args.sha256,
        )
    finally:
        reporter.finish()
    if result.already_present:
        print(f"{result.path}: already present and verified")
    else:
        rate = result.fetched_bytes / 1e6 / max(result.seconds, 1e-9)
        print(
            f"pulled {redact(args.source)} to {result.path}: {result.total_bytes / 1e6:.1f} MB "
            f"({result.fetched_bytes / 1e6:.1f} MB fetched) in {result.seconds:.1f} s "
            f"({rate:.0f} MB/s), verified"
        )
    return 0


def _push(args: argparse.Namespace) -> int:
    from podserve.storage.push import push

    reporter = make_reporter(args.progress, "push")
    try:
        result = push(
            args.src,
            args.dest,
            options=_options(args),
            concurrency=args.concurrency,
            force=args.force,
            reporter=reporter,
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


def make_reporter(mode: str, verb: str) -> Any:
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "log"
    if mode == "bar":
        return BarReporter(verb)
    if mode == "log":
        return LogReporter(verb)
    return LogReporter(verb, interval_s=float("inf"))


class LogReporter:
    """Plain lines on stderr every few seconds, for `kubectl logs`."""

    def __init__(self, verb: str, interval_s: float = 5.0) -> None:
        self.verb, self.interval_s = verb, interval_s
        self.total = self.done = self.base = 0
        self.t0 = self.last = time.monotonic()

    def start(self, total: int, done: int) -> None:
        self.total, self.done, self.base = total, done, done
        self.t0 = self.last = time.monotonic()
        self.message(f"{total / 1e6:.1f} MB to transfer ({done / 1e6:.1f} MB already here)")

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            rate = (self.done - self.base) / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            pct = 100 * self.done / max(self.total, 1)
            self.message(
                f"{pct:.0f}% {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB, "
                f"{rate / 1e6:.1f} MB/s, ETA {eta:.0f}s"
            )

    def message(self, text: str) -> None:
        if self.interval_s != float("inf") or "retry" in text or "waiting" in text:
            print(f"podserve {self.verb}: {text}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        pass


class BarReporter:
    """A rich progress bar (bytes, rate, ETA) on a terminal."""

    def __init__(self, verb: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn(f"{verb}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task: Any = None

    def start(self, total: int, done: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("", total=total, completed=done)
        else:
            self.progress.update(self.task, total=total, completed=done)

    def advance(self, nbytes: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, nbytes)

    def message(self, text: str) -> None:
        self.console.print(f"podserve: {text}")

    def finish(self) -> None:
        if self.task is not None:
            self.progress.stop()
            self.task = None
