"""A model version on a local or mounted filesystem (a path or ``file://``), e.g. NFS."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from podserve.errors import PermanentTransferError, TransferError
from podserve.storage.sources.base import Source, SourceOptions, access_denied, not_found

CHUNK = 4 * 1024 * 1024


class LocalSource(Source):
    def __init__(self, uri: str, options: SourceOptions) -> None:
        super().__init__(uri, options)
        self.base = Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else Path(uri)

    def _path(self, name: str) -> Path:
        return self.base / name if name else self.base

    async def sizes(self, names: Iterable[str]) -> dict[str, int]:
        out = {}
        for name in names:
            try:
                out[name] = self._path(name).stat().st_size
            except OSError as exc:
                raise _translate(exc, self._path(name)) from None
        return out

    async def read_bytes(self, name: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(name).read_bytes)
        except OSError as exc:
            raise _translate(exc, self._path(name)) from None

    async def stream(self, name: str, start: int, end: int) -> AsyncIterator[bytes]:
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise _translate(exc, path) from None
        try:
            pos = start
            while pos < end:
                data = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - pos), pos)
                if not data:
                    raise TransferError(f"{path}: file shrank while reading")
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    async def put_file(self, local: Path, name: str) -> None:
        dest = self._path(name)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(shutil.copyfile, local, dest)
        except OSError as exc:
            raise _translate(exc, dest) from None


def _translate(exc: OSError, path: Path) -> TransferError:
    if isinstance(exc, FileNotFoundError):
        return not_found(str(path))
    if isinstance(exc, PermissionError):
        return access_denied(str(path))
    return PermanentTransferError(f"{path}: {exc.strerror or exc}")
