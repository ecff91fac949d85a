"""``podserve verify ROOT [NAME[:VERSION]]``: check a model repository without loading it."""

from __future__ import annotations

import argparse
import sys
import time

from podserve.commands import Subparsers
from podserve.errors import ConfigurationError, PodserveError


def register(sub: Subparsers) -> None:
    verify = sub.add_parser(
        "verify",
        help="check a model repository without loading it",
        description="Check manifests, listings, sizes and checksums. Exits non-zero with the "
        "reason on the first problem.",
    )
    verify.add_argument("root", help="repository root")
    verify.add_argument("model", nargs="?", help="NAME or NAME:VERSION (default: all)")
    verify.add_argument(
        "--sha256",
        action="store_true",
        help="check SHA-256 (as sha256sum -c would) instead of the fast BLAKE3",
    )
    verify.add_argument(
        "--size-only", action="store_true", help="check sizes, not digests (reported as such)"
    )
    verify.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from podserve.storage.integrity import verify_digests
    from podserve.storage.names import parse_model_ref
    from podserve.storage.repository import ModelRepository

    repo = ModelRepository(args.root)
    repo.check_root()
    if args.model:
        targets = [parse_model_ref(args.model)]
    else:
        targets = [(name, None) for name in repo.models()]
        if not targets:
            raise ConfigurationError(f"no models under {args.root}")
    failed = 0
    for name, version in targets:
        label = f"{name}:{version or 'latest'}"
        try:
            started = time.perf_counter()
            mv = repo.open(name, version)
            label = f"{name}:{mv.version}"
            n, total = len(mv.listing.files), mv.listing.total_bytes
            if args.size_only:
                how = "sizes only (digests NOT checked)"
            else:
                verify_digests(mv.listing, algorithm="sha256" if args.sha256 else None)
                fast = all(f.blake3 for f in mv.listing.files.values()) and not args.sha256
                how = "BLAKE3 digests" if fast else "SHA-256 digests"
            secs = time.perf_counter() - started
            print(
                f"ok      {label}: manifest (runtime {mv.manifest.runtime}), {n} files, "
                f"{total / 1e6:.1f} MB, {how} checked in {secs:.2f}s"
            )
        except PodserveError as exc:
            failed += 1
            print(f"FAILED  {label}: {exc}", file=sys.stderr)
            code = exc.exit_code
    return code if failed else 0
