"""The node cache: ``podserve pull --cache`` against moto S3, bytes counted on the wire."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podserve.errors import IntegrityError
from podserve.storage.cache import BlobKey, NodeCache, parse_size
from podserve.storage.integrity import hash_file
from podserve.storage.pull import pull
from podserve.storage.push import push
from podserve.storage.repository import ModelRepository
from podserve.storage.sources.base import SourceOptions
from tests.storage.privileges import as_nobody
from tests.storage.transfer_servers import CountingProxy, make_model, s3_env

MiB = 1024 * 1024
SHARD = 2 * MiB
PULL = [sys.executable, "-m", "podserve", "pull", "--progress", "log"]
SMALL_OVERHEAD = 256 * 1024  # HEADs, SHA256SUMS, podserve.yaml, HTTP headers


def shards(changed: int | None = None, seed: bytes = b"") -> dict[str, bytes]:
    """Four 2 MiB shards; ``changed`` gets other content."""
    files = {}
    for i in range(4):
        tag = seed + (b"v2" if i == changed else b"v1") + bytes([i])
        files[f"model-{i}.safetensors"] = (tag * (SHARD // len(tag) + 1))[:SHARD]
    return files


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[CountingProxy]:
    with CountingProxy(moto_endpoint) as p:
        yield p


def publish(tmp_path: Path, bucket: str, version: str, files: dict[str, bytes]) -> str:
    src = make_model(tmp_path / "staged" / "m" / version, files)
    uri = f"s3://{bucket}/m/{version}"
    push(src, uri)
    return uri


def pulled_once(
    tmp_path: Path, bucket: str, proxy: CountingProxy
) -> tuple[str, SourceOptions, NodeCache, Path]:
    """Version 1 published, then pulled once through ``proxy`` into a fresh node cache:
    (its URI, the source options, the cache, the pulled version directory)."""
    uri = publish(tmp_path, bucket, "1", shards())
    options = SourceOptions(endpoint_url=proxy.url)
    cache = NodeCache(tmp_path / "cache")
    first = tmp_path / "a" / "m" / "1"
    pull(uri, first, options=options, cache=cache)
    return uri, options, cache, first


def verified(dest: Path) -> None:
    ModelRepository(dest.parent.parent).verify(dest.parent.name, dest.name)


def test_second_version_downloads_only_the_changed_shard(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    v1 = publish(tmp_path, s3_bucket, "1", shards())
    v2 = publish(tmp_path, s3_bucket, "2", shards(changed=2))
    cache = NodeCache(tmp_path / "cache")
    options = SourceOptions(endpoint_url=proxy.url)
    root = tmp_path / "models"

    first = pull(v1, root / "m" / "1", options=options, cache=cache, part_size=MiB)
    assert first.fetched_bytes == 4 * SHARD
    assert 4 * SHARD <= proxy.bytes_down < 4 * SHARD + SMALL_OVERHEAD

    proxy.reset()
    second = pull(v2, root / "m" / "2", options=options, cache=cache, part_size=MiB)
    assert second.fetched_bytes == SHARD
    assert SHARD <= proxy.bytes_down < SHARD + SMALL_OVERHEAD  # counted on the wire

    verified(root / "m" / "1")
    verified(root / "m" / "2")
    for i in range(4):
        a = (root / "m" / "1" / f"model-{i}.safetensors").stat()
        b = (root / "m" / "2" / f"model-{i}.safetensors").stat()
        assert (a.st_ino == b.st_ino) == (i != 2)  # one inode (one page-cache copy) if equal
        assert stat.S_IMODE(b.st_mode) == 0o444
    assert stat.S_IMODE((root / "m" / "2" / "podserve.yaml").stat().st_mode) == 0o444
    assert len(cache.blobs()) == 5
    assert sorted(cache.versions()) == [(root / "m" / "1").resolve(), (root / "m" / "2").resolve()]

    proxy.reset()  # the same version elsewhere on the node: nothing downloaded but metadata
    third = pull(v2, tmp_path / "other" / "m" / "2", options=options, cache=cache)
    assert third.fetched_bytes == 0
    assert proxy.bytes_down < SMALL_OVERHEAD


def test_materialised_files_cannot_be_written_by_the_server_user(
    tmp_path: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    uri = publish(tmp_path, s3_bucket, "1", shards())
    base = Path(tempfile.mkdtemp(prefix="podserve-cache-"))
    try:
        base.chmod(0o755)
        dest = base / "models" / "m" / "1"
        pull(uri, dest, cache=NodeCache(base / "cache"))
        for p in [base, *base.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        target = dest / "model-0.safetensors"

        def write() -> str:
            try:
                with open(target, "r+b"):
                    return "written"
            except PermissionError:
                return "denied"

        assert as_nobody(write) == "denied"
    finally:
        _force_rmtree(base)


def test_concurrent_pulls_on_one_cache_download_once(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    """Two processes (two pods on one node), two destinations, one cache: one download."""
    files = {"model.safetensors": os.urandom(16 * MiB), "config.json": b"{}"}
    uri = publish(tmp_path, s3_bucket, "1", files)
    env = {**s3_env(proxy.url), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    cache = tmp_path / "cache"
    dests = [tmp_path / f"pod{i}" / "m" / "1" for i in range(2)]
    procs = [
        subprocess.Popen(
            [*PULL, uri, str(dest), "--cache", str(cache), "--part-size-mb", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for dest in dests
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    size = 16 * MiB + 2
    assert size <= proxy.bytes_down < size + SMALL_OVERHEAD
    for dest in dests:
        verified(dest)
    inodes = {(d / "model.safetensors").stat().st_ino for d in dests}
    assert len(inodes) == 1


def test_eviction_never_removes_a_blob_a_present_version_uses(
    tmp_path: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    v1 = publish(tmp_path, s3_bucket, "1", shards())
    v2 = publish(tmp_path, s3_bucket, "2", shards(changed=0))
    root = tmp_path / "models"
    cache = NodeCache(tmp_path / "cache", max_bytes=1)  # far below what the versions need
    pull(v1, root / "m" / "1", cache=cache)
    pull(v2, root / "m" / "2", cache=cache)
    assert len(cache.blobs()) == 5  # over the cap, but every blob is in use
    verified(root / "m" / "1")
    verified(root / "m" / "2")

    _force_rmtree(root / "m" / "1")  # the old version goes: its one own blob is now unused
    with cache.locked():
        removed = cache.evict()
    assert [b.key.digest for b in removed] == [
        hash_file(tmp_path / "staged" / "m" / "1" / "model-0.safetensors", "blake3")
    ]
    verified(root / "m" / "2")
    assert cache.versions() == [(root / "m" / "2").resolve()]


def test_a_pull_never_evicts_the_unused_blobs_it_is_about_to_link(
    tmp_path: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    """Version 1 removed, then pulled again with a tight cap while another blob downloads."""
    v1 = publish(tmp_path, s3_bucket, "1", shards())
    v2 = publish(tmp_path, s3_bucket, "2", shards(changed=1))
    root = tmp_path / "models"
    cache = NodeCache(tmp_path / "cache", max_bytes=4 * SHARD)
    pull(v1, root / "m" / "1", cache=cache)
    own = BlobKey("blake3", hash_file(root / "m" / "1" / "model-1.safetensors", "blake3"))
    _force_rmtree(root / "m" / "1")  # its 4 blobs are unused now
    later = time.time() + 60  # the blob v2 does not need is the most recently used:
    os.utime(cache.blob_path(own), (later, later))  # LRU alone would evict a hit first
    second = pull(v2, root / "m" / "2", cache=cache)  # 3 hits + 1 download over the cap
    assert second.fetched_bytes == SHARD
    verified(root / "m" / "2")
    assert len(cache.blobs()) == 4
    assert own not in {b.key for b in cache.blobs()}  # v1's own shard went, the hits stayed


def test_eviction_removes_least_recently_used_first(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache", max_bytes=2 * 1000)
    keys = []
    for i in range(4):
        path = cache.incoming / f"b{i}"
        path.write_bytes(bytes([i]) * 1000)
        key = BlobKey("blake3", hash_file(path, "blake3"))
        cache.adopt(path, key)
        keys.append(key)
    now = time.time()
    for age, key in zip([40, 10, 30, 20], keys, strict=True):  # b1 used last, b0 first
        os.utime(cache.blob_path(key), (now - age, now - age))
    removed = cache.evict()
    assert [b.key for b in removed] == [keys[0], keys[2]]
    assert {b.key for b in cache.blobs()} == {keys[1], keys[3]}


def test_corrupted_blob_is_detected_and_fetched_again(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    uri, options, cache, first = pulled_once(tmp_path, s3_bucket, proxy)
    key = BlobKey("blake3", hash_file(first / "model-3.safetensors", "blake3"))
    blob = cache.blob_path(key)
    blob.chmod(0o644)  # what only root (or a bad disk) can do
    with open(blob, "r+b") as fh:
        fh.seek(SHARD // 2)
        fh.write(b"\xff")

    result = subprocess.run(
        [sys.executable, "-m", "podserve", "verify", "--cache", str(cache.directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 4, result
    assert f"blob {key} is damaged" in result.stderr
    assert f"FAILED  m:1: {first}/" in result.stderr  # the version linked from the cache

    proxy.reset()
    second = tmp_path / "b" / "m" / "1"
    pull(uri, second, options=options, cache=cache)
    assert SHARD <= proxy.bytes_down < SHARD + SMALL_OVERHEAD  # only the damaged blob again
    verified(second)
    assert hash_file(cache.blob_path(key), "blake3") == key.digest
    with pytest.raises(IntegrityError, match=r"model-3\.safetensors: BLAKE3 checksum mismatch"):
        verified(first)  # it shares the damaged inode: caught, never served as good


def test_other_filesystem_falls_back_to_read_only_copies(
    tmp_path: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    if os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is not another filesystem here")
    uri = publish(tmp_path, s3_bucket, "1", shards())
    shm = Path(tempfile.mkdtemp(prefix="podserve-cache-", dir="/dev/shm"))
    messages: list[str] = []

    class Lines:
        def start(self, total: int, done: int) -> None: ...
        def advance(self, nbytes: int) -> None: ...
        def message(self, text: str) -> None:
            messages.append(text)

        def finish(self) -> None: ...

    try:
        dest = tmp_path / "models" / "m" / "1"
        pull(uri, dest, cache=NodeCache(shm), reporter=Lines())
        verified(dest)
        assert stat.S_IMODE((dest / "model-0.safetensors").stat().st_mode) == 0o444
        assert any("share neither disk nor memory" in m for m in messages), messages
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_cli_input_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "podserve", "pull", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    src = make_model(tmp_path / "staged" / "m" / "1", shards())
    dest = str(tmp_path / "models" / "m" / "1")
    for args, expected in [
        ((str(src), dest, "--cache-max-size", "10G"), "--cache-max-size needs --cache"),
        ((str(src), dest, "--rehash"), "--rehash needs --cache"),
        ((str(src), dest, "--cache", str(tmp_path / "c"), "--cache-max-size", "lots"),
         "cache size 'lots'"),
        ((str(tmp_path / "x.tar.gz"), dest, "--cache", str(tmp_path / "c")), "not an archive"),
    ]:  # fmt: skip
        result = run(*args)
        assert result.returncode == 2, result
        assert expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_present_version_replaced_at_its_uri_is_refused_not_kept(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    """``push --force`` can replace what a version's URI holds, so a present, stamped version
    is still compared with the source's SHA256SUMS (one small request): the node keeps its
    copy, and the pull fails instead of starting a pod on bytes the URI no longer names."""
    uri, options, cache, first = pulled_once(tmp_path, s3_bucket, proxy)
    replacement = make_model(tmp_path / "staged-again" / "m" / "1", shards(changed=2))
    push(replacement, uri, force=True)
    proxy.reset()
    with pytest.raises(IntegrityError, match="already exists with other content"):
        pull(uri, first, options=options, cache=cache)
    assert 0 < proxy.bytes_down < SMALL_OVERHEAD  # asked, and downloaded no weights
    verified(first)
    assert (first / "model-2.safetensors").read_bytes() == shards()["model-2.safetensors"]


def test_parse_size() -> None:
    assert parse_size("50G") == 50 * 10**9
    assert parse_size("512M") == 512 * 10**6
    assert parse_size("1.5T") == 15 * 10**11
    assert parse_size("1000") == 1000


def _force_rmtree(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(path)
