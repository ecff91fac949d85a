"""``podserve push``: publish a staged model version to object storage.

The local version is fully verified first (a corrupt copy is never published). Weight files
go up first, several at once, then ``podserve.yaml``, ``model.sig`` (when signed) and
``SHA256SUMS`` last: a pull that
starts while a push is running either finds no ``SHA256SUMS`` (404, a clear error) or finds
every file it lists. Pushing the same content again is a no-op; other content at the same
destination is refused unless ``force``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from podserve.errors import PermanentTransferError
from podserve.storage.download import Reporter
from podserve.storage.integrity import SUMS_NAME, parse_sums
from podserve.storage.manifest import MANIFEST_NAME
from podserve.storage.pull import _Quiet, split_destination
from podserve.storage.repository import ModelRepository
from podserve.storage.signature import SIGNATURE_NAME, TrustPolicy
from podserve.storage.sources.base import Source, SourceNotFoundError, SourceOptions, open_source


@dataclass(frozen=True)
class PushResult:
    uri: str
    total_bytes: int
    seconds: float
    already_present: bool


def push(
    src: Path,
    uri: str,
    *,
    options: SourceOptions | None = None,
    concurrency: int = 4,
    force: bool = False,
    reporter: Reporter | None = None,
    trust: TrustPolicy | None = None,
) -> PushResult:
    """Verify ``ROOT/NAME/VERSION`` (with ``trust``: its signature too) and upload it."""
    return asyncio.run(
        push_async(
            src,
            uri,
            options=options,
            concurrency=concurrency,
            force=force,
            reporter=reporter,
            trust=trust,
        )
    )


async def push_async(
    src: Path,
    uri: str,
    *,
    options: SourceOptions | None = None,
    concurrency: int = 4,
    force: bool = False,
    reporter: Reporter | None = None,
    trust: TrustPolicy | None = None,
) -> PushResult:
    root, name, version = split_destination(src)
    rep: Reporter = reporter or _Quiet()
    started = time.perf_counter()
    mv = await asyncio.to_thread(ModelRepository(root, trust).verify, name, version)
    local_sums = (mv.path / SUMS_NAME).read_text(encoding="utf-8")
    target = open_source(uri, options)
    try:
        remote = await _remote_sums(target)
        signature = mv.path / SIGNATURE_NAME
        if remote is not None and remote == parse_sums(local_sums) and not force:
            if signature.is_file():  # signed after an earlier push: the signature goes up
                await target.put_file(signature, SIGNATURE_NAME)
            rep.message(f"{target.describe()} already holds this version; nothing to do")
            return PushResult(
                target.describe(), mv.listing.total_bytes, time.perf_counter() - started, True
            )
        if remote is not None and not force:
            raise PermanentTransferError(
                f"{target.describe()} already holds a different model version; push to a new "
                "prefix (versions are immutable) or pass --force"
            )
        files = sorted(mv.listing.files.values(), key=lambda f: -f.size)
        rep.start(mv.listing.total_bytes, 0)
        gate = asyncio.Semaphore(max(1, concurrency))

        async def upload(rel: str, size: int) -> None:
            async with gate:
                await target.put_file(mv.path / rel, rel)
                rep.advance(size)

        async with asyncio.TaskGroup() as group:
            for f in files:
                group.create_task(upload(f.name, f.size))
        await target.put_file(mv.path / MANIFEST_NAME, MANIFEST_NAME)
        if signature.is_file():
            await target.put_file(signature, SIGNATURE_NAME)
        await target.put_file(mv.path / SUMS_NAME, SUMS_NAME)  # last: marks it complete
        rep.finish()
        return PushResult(
            target.describe(), mv.listing.total_bytes, time.perf_counter() - started, False
        )
    except BaseExceptionGroup as group_exc:
        raise group_exc.exceptions[0] from None
    finally:
        await target.close()


async def _remote_sums(target: Source) -> dict[str, str] | None:
    try:
        text = (await target.read_bytes(SUMS_NAME)).decode("utf-8")
    except SourceNotFoundError:
        return None
    return parse_sums(text, target.join(SUMS_NAME))
