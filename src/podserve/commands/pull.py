"""``podserve pull SOURCE ROOT/NAME/VERSION``: the init-container step (``push`` is its reverse).

Exit codes an init container's restart policy can act on (from the error tree): 0 done or
already present, 2 bad arguments or names, 3 the volume, 4 checksum/manifest problems,
5 transient network trouble (retries exhausted; restarting may help), 6 permanent (404,
access denied, wrong region: restarting will not help).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from podserve.commands import Subparsers
from podserve.commands._transfer import (
    add_source_flags,
    make_reporter,
    positive_int,
    source_options,
)


def register(sub: Subparsers) -> None:
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
        type=positive_int,
        help="parallel requests (PODSERVE_PULL_CONCURRENCY; default 8)",
    )
    p.add_argument(
        "--part-size-mb",
        type=positive_int,
        help="byte-range part size in MiB (PODSERVE_PULL_PART_SIZE_MB; default 32)",
    )
    p.add_argument(
        "--sha256",
        action="store_true",
        help="verify with SHA-256 even when the manifest records BLAKE3 digests",
    )
    p.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="node cache: keep each file once under DIR (by digest) and hard-link it into "
        "the destination; only files not already in DIR are downloaded",
    )
    p.add_argument(
        "--cache-max-size",
        metavar="SIZE",
        help="evict blobs no version on the node uses, oldest first, to keep DIR under SIZE "
        "(e.g. 200G); blobs in use are never evicted",
    )
    p.add_argument(
        "--rehash",
        action="store_true",
        help="with --cache: hash every cached file again instead of trusting the ones "
        "unchanged since the cache verified them (the server verifies them at load anyway)",
    )
    p.add_argument(
        "--policy",
        choices=("always", "if-not-present"),
        help="a version already at the destination: 'always' (default) compares its checksums "
        "with SOURCE's (one request: notices a version republished with push --force); "
        "'if-not-present' keeps it without asking SOURCE when the node vouches for it "
        "(with --cache: every file still the blob the cache verified; else every file "
        "hashed): a republished version is then not noticed, as with a mutable image tag and "
        "imagePullPolicy IfNotPresent. Use it only when versions are never republished "
        "(PODSERVE_PULL_POLICY)",
    )
    add_source_flags(p)
    p.set_defaults(handler=_pull)


def _pull(args: argparse.Namespace) -> int:
    from podserve.errors import ConfigurationError
    from podserve.settings import Settings
    from podserve.storage.archive import ArchiveLimits
    from podserve.storage.pull import pull
    from podserve.storage.signature import TrustPolicy
    from podserve.storage.sources.base import redact

    settings = Settings()
    args.concurrency = args.concurrency or settings.pull_concurrency
    args.part_size_mb = args.part_size_mb or settings.pull_part_size_mb
    limits = ArchiveLimits(settings.archive_max_bytes, settings.archive_max_members)
    cache = None
    for flag, given in (("--cache-max-size", args.cache_max_size), ("--rehash", args.rehash)):
        if given and not args.cache:
            raise ConfigurationError(f"{flag} needs --cache DIR")
    if args.cache:
        from podserve.storage.cache import NodeCache, parse_size

        limit = parse_size(args.cache_max_size) if args.cache_max_size else None
        # A server that checks sizes only does not verify what the cache trusts: hash it here.
        cache = NodeCache(args.cache, limit, rehash=args.rehash or settings.verify == "size")
    reporter = make_reporter(args.progress, "pull")
    try:
        result = pull(
            args.source,
            args.dest,
            options=source_options(args),
            concurrency=args.concurrency,
            part_size=args.part_size_mb * 1024 * 1024,
            reporter=reporter,
            force_sha256=args.sha256,
            archive_limits=limits,
            trust=TrustPolicy.from_settings(settings),  # the keys serve trusts, checked first
            cache=cache,
            policy=args.policy or settings.pull_policy,
        )
    finally:
        reporter.finish()
    if result.already_present:
        unasked = "" if result.asked_source else " (policy if-not-present: source not asked)"
        print(f"{result.path}: already present and verified{unasked}")
    else:
        rate = result.fetched_bytes / 1e6 / max(result.seconds, 1e-9)
        print(
            f"pulled {redact(args.source)} to {result.path}: {result.total_bytes / 1e6:.1f} MB "
            f"({result.fetched_bytes / 1e6:.1f} MB fetched) in {result.seconds:.1f} s "
            f"({rate:.0f} MB/s), verified"
        )
    return 0
