"""``podserve verify ROOT [NAME[:VERSION]]``: check a model repository without loading it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from podserve.commands import Subparsers
from podserve.errors import ConfigurationError, PodserveError


def register(sub: Subparsers) -> None:
    verify = sub.add_parser(
        "verify",
        help="check a model repository without loading it",
        description="Check what serve checks, without loading: symbolic links, signatures "
        "(PODSERVE_TRUSTED_KEYS_DIR, PODSERVE_REQUIRE_SIGNATURE), manifests, runtime options and "
        "the code policy, listings, sizes and checksums. Exits non-zero with the reason.",
    )
    verify.add_argument("root", nargs="?", help="repository root")
    verify.add_argument("model", nargs="?", help="NAME or NAME:VERSION (default: all)")
    verify.add_argument(
        "--sha256",
        action="store_true",
        help="check SHA-256 (as sha256sum -c would) instead of the fast BLAKE3",
    )
    verify.add_argument(
        "--size-only", action="store_true", help="check sizes, not digests (reported as such)"
    )
    verify.add_argument(
        "--trusted-keys", type=Path, metavar="DIR", help="public keys (PODSERVE_TRUSTED_KEYS_DIR)"
    )
    verify.add_argument(
        "--require-signature",
        action="store_true",
        default=None,
        help="refuse unsigned versions (PODSERVE_REQUIRE_SIGNATURE)",
    )
    verify.add_argument(
        "--cache",
        metavar="DIR",
        help="also hash every blob of the node cache DIR and every version materialised from it",
    )
    verify.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from podserve.runtime.checks import check_version_options
    from podserve.settings import Settings
    from podserve.storage.integrity import verify_digests
    from podserve.storage.names import parse_model_ref
    from podserve.storage.repository import ModelRepository

    if args.root is None and args.cache is None:
        raise ConfigurationError("give a repository ROOT, --cache DIR, or both")
    overrides: dict[str, Any] = {}
    if args.trusted_keys is not None:
        overrides["trusted_keys_dir"] = args.trusted_keys
    if args.require_signature is not None:
        overrides["require_signature"] = args.require_signature
    targets: list[tuple[Any, str, str | None]] = []
    failed, code = 0, 0
    if args.cache is not None:
        failed, code, found = _verify_cache(Path(args.cache))
        for root, name, version in found:
            at = ModelRepository.from_settings(Settings(**overrides, model_root=root))
            targets.append((at, name, version))
    settings = Settings(**overrides, model_root=Path(args.root or "."))
    if args.root is not None:
        repo = ModelRepository.from_settings(settings)
        repo.check_root()
        if args.model:
            targets.append((repo, *parse_model_ref(args.model)))
        else:
            models = repo.models()
            if not models:
                raise ConfigurationError(f"no models under {args.root}")
            targets += [(repo, name, None) for name in models]
    for repo, name, version in targets:
        label = f"{name}:{version or 'latest'}"
        try:
            started = time.perf_counter()
            mv = repo.open(name, version)
            label = f"{name}:{mv.version}"
            check_version_options(mv, settings)  # before touching weights, as serve does
            n, total = len(mv.listing.files), mv.listing.total_bytes
            if args.size_only:
                how = "sizes only (digests NOT checked)"
            else:
                verify_digests(mv.listing, algorithm="sha256" if args.sha256 else None)
                fast = all(f.blake3 for f in mv.listing.files.values()) and not args.sha256
                how = "BLAKE3 digests" if fast else "SHA-256 digests"
            secs = time.perf_counter() - started
            signed = f", signed by {mv.signer.describe()}" if mv.signer else ""
            print(
                f"ok      {label}: manifest (runtime {mv.manifest.runtime}), {n} files, "
                f"{total / 1e6:.1f} MB, {how} checked in {secs:.2f}s{signed}"
            )
        except PodserveError as exc:
            failed += 1
            print(f"FAILED  {label}: {exc}", file=sys.stderr)
            code = exc.exit_code
    return code if failed else 0


def _verify_cache(directory: Path) -> tuple[int, int, list[tuple[Path, str, str | None]]]:
    """Hash every blob; returns (failures, exit code, the versions materialised from it)."""
    from podserve.errors import IntegrityError
    from podserve.storage.cache import NodeCache

    if not directory.is_dir():
        raise ConfigurationError(f"--cache {directory}: not a directory")
    cache = NodeCache(directory)
    started = time.perf_counter()
    blobs = cache.blobs()
    damaged = cache.verify_blobs()
    for key in damaged:
        print(f"FAILED  cache {directory}: blob {key} is damaged", file=sys.stderr)
    if not damaged:
        total = sum(b.size for b in blobs) / 1e6
        secs = time.perf_counter() - started
        print(f"ok      cache {directory}: {len(blobs)} blobs, {total:.1f} MB, digests "
              f"checked in {secs:.2f}s")  # fmt: skip
    versions: list[tuple[Path, str, str | None]] = [
        (p.parent.parent, p.parent.name, p.name) for p in cache.versions()
    ]
    return len(damaged), (IntegrityError.exit_code if damaged else 0), versions
