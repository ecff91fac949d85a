"""Verification stamps: a pull through the node cache reads a blob again only when it changed.

What a pull hashed is observed through ``NodeCache.hashed`` (every blob or file it read to
hash, in order) and its reporter's messages, never through timings.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from podserve.errors import IntegrityError
from podserve.runtime.registry import create_model
from podserve.settings import Settings
from podserve.storage.cache import BlobKey, NodeCache
from podserve.storage.cache_stamp import Stamp, read_stamp, write_stamp
from podserve.storage.integrity import hash_file
from podserve.storage.pull import pull
from podserve.storage.push import push
from podserve.storage.repository import ModelRepository
from podserve.storage.sources.base import SourceOptions
from podserve.storage.staging import stage_model
from tests.storage.test_cache import (
    SHARD,
    SMALL_OVERHEAD,
    publish,
    pulled_once,
    shards,
    verified,
)
from tests.storage.transfer_servers import CountingProxy

IDENTITY = {  # a real runtime (tests/models.py) whose load verifies every file first
    "runtime": "python",
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [384]}],
    "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [384]}],
    "options": {"module": "tests.models:Identity"},
}


class Lines:
    """A reporter that keeps the pull's messages."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def start(self, total: int, done: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def message(self, text: str) -> None:
        self.messages.append(text)

    def finish(self) -> None: ...


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[CountingProxy]:
    with CountingProxy(moto_endpoint) as p:
        yield p


def keys_of(dest: Path) -> dict[str, BlobKey]:
    return {
        p.name: BlobKey("blake3", hash_file(p, "blake3"))
        for p in sorted(dest.glob("model-*.safetensors"))
    }


def overwrite_in_place(path: Path, offset: int) -> os.stat_result:
    """Change one byte of a 0444 file in place, then put its mode and times back (what root,
    or a careless tool, could do): only the change time, which no call sets, tells."""
    before = path.stat()
    path.chmod(0o644)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        value = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([value ^ 0xFF]))
    path.chmod(0o444)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert after.st_ctime_ns != before.st_ctime_ns
    return after


def test_a_blob_unchanged_since_verified_is_not_hashed_again(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    uri, options, cache, first = pulled_once(tmp_path, s3_bucket, proxy)
    assert cache.hashed == []  # downloads are verified while they stream, then stamped
    keys = keys_of(first)
    for key in keys.values():
        stamp = read_stamp(cache.stamp_path(key))
        assert stamp is not None
        assert stamp.matches(str(key), cache.blob_path(key).stat())

    lines = Lines()  # blobs present, a new destination: linked without being read
    second = tmp_path / "b" / "m" / "1"
    result = pull(uri, second, options=options, cache=cache, reporter=lines)
    assert result.fetched_bytes == 0
    assert cache.hashed == []
    assert any("(0 of 4 files hashed again" in m for m in lines.messages), lines.messages

    lines = Lines()  # the version present (a restarted init container): not read either
    again = pull(uri, second, options=options, cache=cache, reporter=lines)
    assert again.already_present
    assert cache.hashed == []
    assert "node cache: 0 of 4 files hashed again" in lines.messages
    verified(second)

    lines = Lines()  # --rehash: every file read again, in both paths
    rehash = NodeCache(tmp_path / "cache", rehash=True)
    pull(uri, second, options=options, cache=rehash, reporter=lines)
    assert sorted(rehash.hashed, key=str) == sorted(keys.values(), key=str)
    assert "node cache: 4 of 4 files hashed again" in lines.messages
    rehash.hashed.clear()
    pull(uri, tmp_path / "c" / "m" / "1", options=options, cache=rehash)
    assert len(rehash.hashed) == 4


def test_blobs_without_a_valid_stamp_are_hashed_once_then_trusted(
    tmp_path: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    uri = publish(tmp_path, s3_bucket, "1", shards())
    cache = NodeCache(tmp_path / "cache")
    pull(uri, tmp_path / "a" / "m" / "1", cache=cache)

    shutil.rmtree(tmp_path / "cache" / "stamps")  # a cache from before stamps
    pull(uri, tmp_path / "b" / "m" / "1", cache=cache)
    assert len(cache.hashed) == 4
    cache.hashed.clear()
    pull(uri, tmp_path / "c" / "m" / "1", cache=cache)
    assert cache.hashed == []

    # Removing a version unlinks its files: the blobs' link counts, and so their change
    # times, change. The next pull cannot tell that from a write: it hashes them once.
    shutil.rmtree(tmp_path / "a")
    pull(uri, tmp_path / "d" / "m" / "1", cache=cache)
    assert len(cache.hashed) == 4
    cache.hashed.clear()
    pull(uri, tmp_path / "e" / "m" / "1", cache=cache)
    assert cache.hashed == []


def test_a_blob_overwritten_in_place_is_hashed_and_fetched_again(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    """Same inode, same size, modification time put back: the stamp still catches it."""
    uri, options, cache, first = pulled_once(tmp_path, s3_bucket, proxy)
    key = keys_of(first)["model-2.safetensors"]
    overwrite_in_place(cache.blob_path(key), SHARD // 3)

    proxy.reset()
    lines = Lines()
    second = tmp_path / "b" / "m" / "1"
    pull(uri, second, options=options, cache=cache, reporter=lines)
    assert cache.hashed == [key]  # only the changed blob was read, and found damaged
    assert f"{key} in the node cache is damaged; removed, fetching it again" in lines.messages
    assert SHARD <= proxy.bytes_down < SHARD + SMALL_OVERHEAD  # that blob, downloaded again
    verified(second)
    assert hash_file(cache.blob_path(key), "blake3") == key.digest

    # The first version still links the damaged inode: its next pull hashes it and refuses.
    cache.hashed.clear()
    with pytest.raises(IntegrityError, match=r"model-2\.safetensors: BLAKE3 checksum mismatch"):
        pull(uri, first, options=options, cache=cache)
    assert cache.hashed == [key]


def test_a_version_file_written_in_place_is_refused_by_the_next_pull(
    tmp_path: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    uri = publish(tmp_path, s3_bucket, "1", shards())
    cache = NodeCache(tmp_path / "cache")
    dest = tmp_path / "a" / "m" / "1"
    pull(uri, dest, cache=cache)
    overwrite_in_place(dest / "model-0.safetensors", 5)  # the blob's inode, through the link
    with pytest.raises(IntegrityError, match=r"model-0\.safetensors: BLAKE3 checksum mismatch"):
        pull(uri, dest, cache=cache)


def test_a_forged_stamp_never_gets_bad_bytes_served(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    """Someone who can write the cache rewrites a blob and its stamp: the pull trusts it,
    the server's load does not (it hashes every byte against the manifest's digests)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.safetensors").write_bytes(shards()["model-0.safetensors"])
    staged = tmp_path / "staged" / "ident" / "1"
    stage_model({"weights.safetensors": src / "weights.safetensors"}, staged, IDENTITY)
    uri = f"s3://{s3_bucket}/ident/1"
    push(staged, uri)
    options = SourceOptions(endpoint_url=proxy.url)
    cache = NodeCache(tmp_path / "cache")
    pull(uri, tmp_path / "a" / "ident" / "1", options=options, cache=cache)
    key = BlobKey("blake3", hash_file(staged / "weights.safetensors", "blake3"))
    blob = cache.blob_path(key)
    write_stamp(cache.stamp_path(key), Stamp.of(str(key), overwrite_in_place(blob, 100)))

    proxy.reset()
    root = tmp_path / "b"
    pull(uri, root / "ident" / "1", options=options, cache=cache)
    assert cache.hashed == []  # the forged stamp was believed: no read, no download
    assert proxy.bytes_down < SMALL_OVERHEAD

    settings = Settings(allowed_modules=["tests.models"])
    model = create_model(ModelRepository(root).open("ident"), settings)
    bad = root / "ident" / "1" / "weights.safetensors"
    with pytest.raises(IntegrityError, match=rf"^{bad}: BLAKE3 checksum mismatch"):
        model.load()  # what the server's load does: the model never becomes ready


def test_a_size_only_load_makes_the_pull_hash_every_file(
    tmp_path: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    """``verify: size``: the server will not hash, so the pull trusts no stamp."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.safetensors").write_bytes(shards()["model-1.safetensors"])
    staged = tmp_path / "staged" / "ident" / "1"
    stage_model({"w.safetensors": src / "w.safetensors"}, staged, {**IDENTITY, "verify": "size"})
    uri = f"s3://{s3_bucket}/ident/1"
    push(staged, uri)
    pull(uri, tmp_path / "a" / "ident" / "1", cache=NodeCache(tmp_path / "cache"))
    for dest in ("b", "b"):  # blobs present, then the version present
        cache = NodeCache(tmp_path / "cache")
        pull(uri, tmp_path / dest / "ident" / "1", cache=cache)
        assert len(cache.hashed) == 1


def test_verify_cache_unstamps_a_damaged_blob_so_the_next_pull_fetches_it(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    """Damage no stamp can see (stood in for by a write and a forged stamp): the server
    refuses it; ``verify --cache`` finds it and drops its stamp; the next pull replaces it."""
    uri = publish(tmp_path, s3_bucket, "1", shards())
    options = SourceOptions(endpoint_url=proxy.url)
    cache = NodeCache(tmp_path / "cache")
    pull(uri, tmp_path / "a" / "m" / "1", options=options, cache=cache)
    key = keys_of(tmp_path / "a" / "m" / "1")["model-1.safetensors"]
    blob = cache.blob_path(key)
    write_stamp(cache.stamp_path(key), Stamp.of(str(key), overwrite_in_place(blob, 7)))
    assert cache.verify_blobs() == [str(key)]
    assert read_stamp(cache.stamp_path(key)) is None
    proxy.reset()
    second = tmp_path / "b" / "m" / "1"
    pull(uri, second, options=options, cache=cache)
    assert SHARD <= proxy.bytes_down < SHARD + SMALL_OVERHEAD
    verified(second)
