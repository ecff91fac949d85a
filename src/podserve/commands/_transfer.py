"""What ``pull`` and ``push`` share: the source flags and the progress reporters."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def add_source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint-url", default=None, help="S3-compatible endpoint (else AWS_ENDPOINT_URL)"
    )
    p.add_argument("--region", default=None, help="bucket region (else AWS_REGION)")
    p.add_argument(
        "--credentials-dir",
        type=Path,
        help="directory with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY files, as a mounted "
        "Kubernetes Secret (PODSERVE_S3_CREDENTIALS_DIR)",
    )
    p.add_argument("--anonymous", action="store_true", help="unsigned requests (public buckets)")
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "log", "none"),
        default="auto",
        help="a progress bar on a terminal, log lines otherwise (default auto)",
    )


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def source_options(args: argparse.Namespace) -> Any:
    from podserve.settings import Settings
    from podserve.storage.sources.base import SourceOptions

    return SourceOptions(
        endpoint_url=args.endpoint_url,
        region=args.region,
        credentials_dir=args.credentials_dir or Settings().s3_credentials_dir,
        anonymous=args.anonymous,
    )


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
