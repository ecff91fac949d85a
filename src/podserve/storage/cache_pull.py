"""The files of a version through the node cache: fetch what is missing, link the rest.

Called by :func:`podserve.storage.pull.pull_async` (``--cache DIR``) with the jobs it planned
from the source's manifest. Under the cache's lock: every blob the version needs is checked
(present and unchanged since the cache verified it, or hashing to its name now: a hit;
damaged: removed), the missing ones are downloaded into the cache's incoming directory with
the same parallel, verified, resumable machinery as a plain pull, moved into the store, and
each file of the version is materialised from its blob.

:func:`check_present` is the same check for a version already materialised: its files that
are still the stamped, unchanged blob inodes are not read again; the rest are hashed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from podserve.errors import ConfigurationError
from podserve.storage.cache import BlobKey, Materialised, NodeCache
from podserve.storage.download import FileJob, Reporter, download_resumable, fingerprint
from podserve.storage.integrity import check_digest, expected_digest
from podserve.storage.manifest import Manifest
from podserve.storage.repository import ModelRepository, ModelVersion
from podserve.storage.signature import Signer
from podserve.storage.sources.base import Source

Stat = os.stat_result


async def fill_from_cache(
    cache: NodeCache,
    source: Source,
    jobs: list[FileJob],
    concurrency: int,
    part_size: int,
    rep: Reporter,
) -> int:
    """Materialise ``jobs`` (their ``path``) from the cache; returns the bytes downloaded."""
    keys: dict[str, BlobKey] = {}
    for job in jobs:
        if job.algorithm is None or job.expected is None:
            raise ConfigurationError(f"{job.name}: no digest recorded; the cache needs one")
        keys[job.name] = BlobKey(job.algorithm, job.expected)
    if cache.is_locked():
        rep.message(f"another pull is using the node cache {cache.directory}; waiting for it")
    lock = await asyncio.to_thread(cache.acquire)
    try:
        missing: dict[BlobKey, FileJob] = {}
        hits = 0
        hashed_before = len(cache.hashed)
        for job in jobs:
            key = keys[job.name]
            if key in missing:
                continue  # the same bytes twice in one version: fetched once
            state = await asyncio.to_thread(cache.check, key, job.size)
            if state:
                hits += job.size
                continue
            if state is False:
                rep.message(f"{key} in the node cache is damaged; removed, fetching it again")
            missing[key] = job
        fetched = sum(j.size for j in missing.values())
        if missing:
            await asyncio.to_thread(cache.evict, fetched, set(keys.values()))
        rehashed = len(cache.hashed) - hashed_before
        rep.message(
            f"node cache: {hits / 1e6:.1f} MB already on this node ({rehashed} of "
            f"{len(keys)} files hashed again, the rest unchanged since verified), "
            f"{fetched / 1e6:.1f} MB to download"
        )
        if missing:
            await _download(cache, source, missing, concurrency, part_size, rep)
        modes: set[Materialised] = set()
        for job in jobs:
            modes.add(await asyncio.to_thread(cache.materialise, keys[job.name], job.path))
        if modes - {"link"}:
            rep.message(
                f"{sorted(modes)} from {cache.directory}: the destination is on another "
                "filesystem, so copies share neither disk nor memory with the cache"
            )
        await asyncio.to_thread(cache.evict)
        return fetched
    finally:
        cache.release(lock)


def check_present(
    cache: NodeCache, repo: ModelRepository, name: str, version: str, rep: Reporter
) -> ModelVersion:
    """Open a present version (signature, manifest, listing) and hash the files the cache
    cannot vouch for; raises IntegrityError naming the first file that does not match."""
    mv = repo.open(name, version)
    cache.rehash |= load_skips_digests(mv.manifest, mv.signer)
    hashed = 0
    for _, key, path, before in unvouched(cache, mv):
        check_digest(path, key.algorithm, key.digest, cache.hash_and_stamp(key, path, before))
        hashed += 1
    rep.message(f"node cache: {hashed} of {len(mv.listing.files)} files hashed again")
    return mv


def unvouched(cache: NodeCache, mv: ModelVersion) -> Iterator[tuple[str, BlobKey, Path, Stat]]:
    """The files of ``mv`` the cache cannot vouch for without hashing them, in name order:
    (relative path, blob key, path, its stat now)."""
    for rel, entry in sorted(mv.listing.files.items()):
        key, path = BlobKey(*expected_digest(entry)), mv.path / rel
        before = path.stat()
        if not cache.vouches(key, before):
            yield rel, key, path, before


def load_skips_digests(manifest: Manifest, signer: Signer | None) -> bool:
    """The server will check sizes only (``verify: size``, unsigned): no stamp is trusted."""
    return manifest.verify == "size" and signer is None


async def _download(
    cache: NodeCache,
    source: Source,
    missing: dict[BlobKey, FileJob],
    concurrency: int,
    part_size: int,
    rep: Reporter,
) -> None:
    incoming = cache.incoming
    order = sorted(missing, key=lambda k: -missing[k].size)  # big files first
    jobs = [
        FileJob(missing[key].name, incoming / key.digest, missing[key].size, key.algorithm,
                key.digest)
        for key in order
    ]  # fmt: skip
    fp = fingerprint(source.describe(), *(f"{j.name}={j.expected}" for j in jobs), part_size,
                     source.ranged)  # fmt: skip
    await download_resumable(
        source, jobs, incoming, fp, part_size=part_size, concurrency=concurrency, reporter=rep
    )
    for key, job in zip(order, jobs, strict=True):
        await asyncio.to_thread(cache.adopt, job.path, key)
    _clear(incoming)


def _clear(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
