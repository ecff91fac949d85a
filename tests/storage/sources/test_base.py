"""URI → backend, redaction, and the HTTP backend's range detection on a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from podserve.errors import ConfigurationError, PermanentTransferError
from podserve.storage.sources.base import SourceNotFoundError, open_source, redact
from podserve.storage.sources.http import HttpSource
from podserve.storage.sources.local import LocalSource
from podserve.storage.sources.s3 import S3Source
from tests.storage.transfer_servers import RangeServer


def test_open_source_picks_one_backend_per_scheme(tmp_path: Path) -> None:
    assert isinstance(open_source("s3://bucket/p"), S3Source)
    assert isinstance(open_source("https://h/p/"), HttpSource)
    assert isinstance(open_source(str(tmp_path)), LocalSource)
    assert isinstance(open_source(f"file://{tmp_path}"), LocalSource)
    with pytest.raises(ConfigurationError, match="unsupported source"):
        open_source("ftp://user:pw@h/x")
    assert open_source("https://h/m.tar.gz?sig=1").is_archive()
    assert not open_source("s3://b/models/m/1").is_archive()


def test_redact() -> None:
    assert redact("https://u:p@h:8/x?token=abc&a=1") == "https://h:8/x?token=***&a=1"
    assert redact("/plain/path") == "/plain/path"


@pytest.mark.parametrize("ranges", [True, False])
def test_http_ranges_detected_and_streamed(tmp_path: Path, ranges: bool) -> None:
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * 1000)

    async def go(url: str) -> tuple[int, bool, bytes]:
        src = open_source(url)
        try:
            size = (await src.sizes(["f.bin"]))["f.bin"]
            if src.ranged:
                data = b"".join([c async for c in src.stream("f.bin", 10, 20)])
            else:
                data = b"".join([c async for c in src.stream("f.bin", 0, size)])[10:20]
            with pytest.raises(SourceNotFoundError):
                await src.read_bytes("missing")
            return size, src.ranged, data
        finally:
            await src.close()

    with RangeServer(tmp_path, ranges=ranges) as server:
        size, ranged, data = asyncio.run(go(server.url + "/"))
    assert (size, ranged, data) == (256_000, ranges, bytes(range(10, 20)))
    assert issubclass(SourceNotFoundError, PermanentTransferError)
