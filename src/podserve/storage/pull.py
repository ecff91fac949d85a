"""``podserve pull``: put one model version onto a volume, verified and atomic.

The order of operations is the guarantee:

1. a version already at ``<root>/<model>/<version>`` whose checksums match the source's is
   verified and left alone (a restarted init container is a no-op; through the node cache,
   files still the blobs it verified are not hashed again: the server verifies at load;
   policy ``if-not-present`` skips the source's checksums: :mod:`.pull_policy`);
2. an exclusive ``flock`` on ``<root>/<model>/.pull-<version>.lock`` makes concurrent pulls
   of the same version queue up; the loser finds the version present and verifies it;
3. bytes go to ``<root>/<model>/.tmp-<version>/`` (a name readers ignore), are verified while
   they stream (:mod:`podserve.storage.download`) and fsynced;
4. one ``rename`` publishes the directory; a reader sees all of it or nothing.

Interrupted pulls resume from the journal in the temporary directory. Archives are
downloaded the same way, then extracted safely (:mod:`podserve.storage.archive`) and
verified against the ``SHA256SUMS`` inside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from podserve.errors import (
    ConfigurationError,
    IntegrityError,
    RepositoryError,
)
from podserve.storage.archive import ArchiveLimits, extract_archive
from podserve.storage.cache import NodeCache
from podserve.storage.cache_pull import check_present, fill_from_cache, load_skips_digests
from podserve.storage.download import (
    JOURNAL,
    FileJob,
    Reporter,
    download_resumable,
    fingerprint,
    retrying,
)
from podserve.storage.durable import fsync_dir, fsync_tree
from podserve.storage.integrity import (
    SUMS_NAME,
    check_listing,
    check_pickle_free,
    parse_sums,
    verify_digests,
)
from podserve.storage.manifest import MANIFEST_NAME, parse_manifest
from podserve.storage.names import check_model_name, check_version
from podserve.storage.pull_policy import PullPolicy, check_policy, present_on_node
from podserve.storage.pull_signature import check_remote_signature, download_digest, signature_bytes
from podserve.storage.repository import ModelRepository, open_version, refuse_link
from podserve.storage.signature import SIGNATURE_NAME, TrustPolicy, check_file_set
from podserve.storage.sources.base import ARCHIVE_SUFFIXES, Source, SourceOptions, open_source

DEFAULT_CONCURRENCY = 8
DEFAULT_PART_SIZE = 32 * 1024 * 1024


@dataclass(frozen=True)
class PullResult:
    path: Path
    total_bytes: int
    fetched_bytes: int  # 0 when already present; less than total when resumed
    seconds: float
    already_present: bool
    asked_source: bool = True  # False: present, and kept by the pull policy if-not-present


class _Quiet:
    def start(self, total: int, done: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...


def split_destination(dest: Path) -> tuple[Path, str, str]:
    """``ROOT/NAME/VERSION`` → (root, name, version), validated."""
    version = check_version(dest.name)
    name = check_model_name(dest.parent.name)
    return dest.parent.parent, name, version


def pull(
    uri: str,
    dest: Path,
    *,
    options: SourceOptions | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    part_size: int = DEFAULT_PART_SIZE,
    reporter: Reporter | None = None,
    force_sha256: bool = False,
    archive_limits: ArchiveLimits | None = None,
    trust: TrustPolicy | None = None,
    cache: NodeCache | None = None,
    policy: PullPolicy = "always",
) -> PullResult:
    """Pull ``uri`` into ``dest`` (``ROOT/NAME/VERSION``); ``trust``: signatures checked first.

    With ``cache``, files come from (and go to) the node cache and are hard-linked into
    ``dest`` (:mod:`podserve.storage.cache`). ``policy``: whether a version already at
    ``dest`` is checked against the source (:mod:`podserve.storage.pull_policy`).
    """
    return asyncio.run(
        pull_async(
            uri,
            dest,
            options=options,
            concurrency=concurrency,
            part_size=part_size,
            reporter=reporter,
            force_sha256=force_sha256,
            archive_limits=archive_limits,
            trust=trust,
            cache=cache,
            policy=policy,
        )
    )


async def pull_async(
    uri: str,
    dest: Path,
    *,
    options: SourceOptions | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    part_size: int = DEFAULT_PART_SIZE,
    reporter: Reporter | None = None,
    force_sha256: bool = False,
    archive_limits: ArchiveLimits | None = None,
    trust: TrustPolicy | None = None,
    cache: NodeCache | None = None,
    policy: PullPolicy = "always",
) -> PullResult:
    root, name, version = split_destination(dest)
    dest = root / name / version
    trust = trust or TrustPolicy()
    refuse_link(root / name, "model directory")  # never publish through a link
    refuse_link(dest, "version directory")
    rep: Reporter = reporter or _Quiet()
    started = time.perf_counter()
    if check_policy(policy) == "if-not-present":  # before open_source: no backend imported
        repo = ModelRepository(root, trust)
        mv = await asyncio.to_thread(present_on_node, uri, root, name, version, repo, cache, rep)
        if mv is not None:
            took = time.perf_counter() - started
            return PullResult(dest, mv.listing.total_bytes, 0, took, True, asked_source=False)
    source = open_source(uri, options)
    try:
        if cache is not None and source.is_archive():
            raise ConfigurationError(
                "--cache needs a version published as files (podserve push), not an archive"
            )
        if dest.exists():
            return await _already_present(source, root, name, version, started, rep, trust, cache)
        model_dir = root / name
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RepositoryError(f"cannot create {model_dir}: {exc.strerror}") from None
        lock_fd = await _lock(model_dir / f".pull-{version}.lock", rep, f"{name}/{version}")
        try:
            if dest.exists():  # another pull published it while we waited
                return await _already_present(
                    source, root, name, version, started, rep, trust, cache
                )
            tmp = model_dir / f".tmp-{version}"
            tmp.mkdir(exist_ok=True)
            data = tmp / "data"
            try:
                with _volume_errors(dest):
                    if source.is_archive():
                        fetched, total = await _pull_archive(
                            source, tmp, data, concurrency, part_size, rep, archive_limits
                        )
                        # verified once extracted: signature, listing, digests
                        mv = await asyncio.to_thread(open_version, data, name, version, trust)
                        await asyncio.to_thread(verify_digests, mv.listing)
                    else:
                        fetched, total = await _pull_files(
                            source, tmp, data, concurrency, part_size, rep, force_sha256, trust,
                            cache,
                        )  # fmt: skip
                        # digests checked while streaming; signature and listing once more
                        await asyncio.to_thread(open_version, data, name, version, trust)
            except BaseException:
                if not (tmp / JOURNAL).exists():  # nothing worth resuming: leave no trace
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
            _publish(data, dest, tmp)
            if cache is not None:
                cache.record(dest)
            rep.finish()
            return PullResult(dest, total, fetched, time.perf_counter() - started, False)
        finally:
            os.close(lock_fd)
    finally:
        await source.close()


async def _already_present(
    source: Source,
    root: Path,
    name: str,
    version: str,
    started: float,
    rep: Reporter,
    trust: TrustPolicy,
    cache: NodeCache | None = None,
) -> PullResult:
    dest = root / name / version
    if not source.is_archive():
        remote_bytes = await retrying(lambda: source.read_bytes(SUMS_NAME), rep)
        remote = parse_sums(remote_bytes.decode("utf-8"), source.join(SUMS_NAME))
        try:
            local = parse_sums((dest / SUMS_NAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            local = {}
        if local != remote:
            raise IntegrityError(
                f"{dest} already exists with other content than {source.describe()}; "
                "versions are immutable: publish a new version number or remove this one"
            )
    repo = ModelRepository(root, trust)
    if cache is None:
        mv = await asyncio.to_thread(repo.verify, name, version)
    else:  # files still the blobs the cache verified are not read again (cache_stamp)
        mv = await asyncio.to_thread(check_present, cache, repo, name, version, rep)
        cache.record(dest)
    rep.message(f"{dest} already present and verified; nothing to do")
    return PullResult(dest, mv.listing.total_bytes, 0, time.perf_counter() - started, True)


async def _lock(path: Path, rep: Reporter, what: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        rep.message(f"another pull of {what} is running; waiting for it")
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
    return fd


async def _pull_files(
    source: Source,
    tmp: Path,
    data: Path,
    concurrency: int,
    part_size: int,
    rep: Reporter,
    force_sha256: bool,
    trust: TrustPolicy,
    cache: NodeCache | None = None,
) -> tuple[int, int]:
    sums_bytes = await retrying(lambda: source.read_bytes(SUMS_NAME), rep)
    manifest_bytes = await retrying(lambda: source.read_bytes(MANIFEST_NAME), rep)
    signature = await signature_bytes(source, rep)
    signer = check_remote_signature(source, tmp, signature, trust, manifest_bytes, sums_bytes)
    sums = parse_sums(sums_bytes.decode("utf-8"), source.join(SUMS_NAME))
    if signer is not None:
        check_file_set(source.describe(), set(sums), signer)
    manifest = parse_manifest(manifest_bytes.decode("utf-8"), source.join(MANIFEST_NAME))
    for rel in sums:
        check_pickle_free(Path(rel), manifest)  # refuse before downloading, not after
    for rel in manifest.files:
        if rel not in sums:
            raise IntegrityError(f"{source.join(MANIFEST_NAME)}: {rel} not in {SUMS_NAME}")
    sizes = await retrying(lambda: source.sizes(sorted(sums)), rep)
    jobs: list[FileJob] = []
    for rel in sorted(sums, key=lambda n: -sizes[n]):  # big files first: they take longest
        entry = manifest.files.get(rel)
        if entry is not None and entry.size != sizes[rel]:
            raise IntegrityError(
                f"{rel}: size mismatch: {sizes[rel]} bytes at {source.describe()}, "
                f"{entry.size} in the manifest; nothing was published"
            )
        b3 = entry.blake3 if entry is not None else None
        algo, expected = download_digest(rel, b3, sums[rel], signer, force_sha256)
        jobs.append(FileJob(rel, data / rel, sizes[rel], algo, expected))  # type: ignore[arg-type]
    small = [(MANIFEST_NAME, manifest_bytes), (SUMS_NAME, sums_bytes)]
    small += [(SIGNATURE_NAME, signature)] if signature is not None else []
    if cache is not None:
        cache.rehash |= load_skips_digests(manifest, signer)  # then the pull is the check
        fetched = await fill_from_cache(cache, source, jobs, concurrency, part_size, rep)
        await asyncio.to_thread(_finish_data, data, small, True)
        return fetched, sum(j.size for j in jobs)
    fp = fingerprint(source.describe(), sums_bytes, manifest_bytes, part_size, source.ranged)
    return await _run(source, tmp, jobs, fp, concurrency, part_size, rep, data, small)


async def _pull_archive(
    source: Source,
    tmp: Path,
    data: Path,
    concurrency: int,
    part_size: int,
    rep: Reporter,
    limits: ArchiveLimits | None,
) -> tuple[int, int]:
    size = (await retrying(lambda: source.sizes([""]), rep))[""]
    lower = source.uri.split("?", 1)[0].lower()
    suffix = next(s for s in ARCHIVE_SUFFIXES if lower.endswith(s))
    archive = tmp / f"archive{suffix}"
    job = FileJob("", archive, size)
    fp = fingerprint(source.describe(), size, part_size, source.ranged)
    fetched, _ = await _run(source, tmp, [job], fp, concurrency, part_size, rep, None, [])
    rep.message(f"extracting {source.describe()}")
    shutil.rmtree(data, ignore_errors=True)
    try:
        await asyncio.to_thread(extract_archive, archive, data, source.describe(), limits)
    except BaseException:
        # A half-extracted tree is never resumed (extraction starts over): free its space.
        shutil.rmtree(data, ignore_errors=True)
        raise
    manifest_text = (
        (data / MANIFEST_NAME).read_text(encoding="utf-8")
        if (data / MANIFEST_NAME).exists()
        else ""
    )
    if not manifest_text:
        raise IntegrityError(f"{source.describe()}: the archive has no {MANIFEST_NAME}")
    manifest = parse_manifest(manifest_text, f"{source.describe()}:{MANIFEST_NAME}")
    listing = check_listing(data, manifest)
    await asyncio.to_thread(verify_digests, listing)
    await asyncio.to_thread(fsync_tree, data)
    archive.unlink()
    return fetched, listing.total_bytes


async def _run(
    source: Source,
    tmp: Path,
    jobs: list[FileJob],
    fp: str,
    concurrency: int,
    part_size: int,
    rep: Reporter,
    data: Path | None,
    small: list[tuple[str, bytes]],
) -> tuple[int, int]:
    total = sum(j.size for j in jobs)
    kept = await download_resumable(
        source, jobs, tmp, fp, part_size=part_size, concurrency=concurrency, reporter=rep
    )
    if data is not None:
        await asyncio.to_thread(_finish_data, data, small)
    return total - kept, total


# The volume itself failed: full, over quota, read-only or an I/O error.
_VOLUME_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)


@contextlib.contextmanager
def _volume_errors(dest: Path) -> Iterator[None]:
    """Writing the version failed on the volume: a RepositoryError (exit 3), not a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _VOLUME_ERRNOS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        raise RepositoryError(
            f"pulling {dest}: {exc.strerror}{where}; nothing was published (rerun to resume "
            "once the volume is fixed)"
        ) from None


def _finish_data(data: Path, small: list[tuple[str, bytes]], read_only: bool = False) -> None:
    """Write the manifest and sums, check the listing (nothing unlisted, nothing missing)."""
    data.mkdir(parents=True, exist_ok=True)
    for name, content in small:
        (data / name).write_bytes(content)
        if read_only:  # like the linked weights: a version from the cache is not edited
            (data / name).chmod(0o444)
    manifest = parse_manifest((data / MANIFEST_NAME).read_text(encoding="utf-8"))
    check_listing(data, manifest)
    fsync_tree(data)


def _publish(data: Path, dest: Path, tmp: Path) -> None:
    """Rename into place; if someone else published meanwhile, keep theirs."""
    try:
        os.rename(data, dest)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise RepositoryError(f"cannot publish {dest}: {exc.strerror}") from None
    fsync_dir(dest.parent)
    shutil.rmtree(tmp, ignore_errors=True)
