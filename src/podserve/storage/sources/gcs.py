"""Google Cloud Storage (``gs://``) through ``gcsfs``, behind the same small interface.

Credentials follow gcsfs (``GOOGLE_APPLICATION_CREDENTIALS``, workload identity). Ranges are
fetched with ``_cat_file`` in bounded slices, so memory stays bounded by the slice size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from podserve.errors import ConfigurationError, PermanentTransferError, TransferError
from podserve.storage.sources.base import Source, SourceOptions, access_denied, not_found

SLICE = 8 * 1024 * 1024


class GcsSource(Source):
    def __init__(self, uri: str, options: SourceOptions) -> None:
        super().__init__(uri, options)
        self.path = uri.split("://", 1)[1].split("?", 1)[0].rstrip("/")
        self._fs: Any = None

    async def _filesystem(self) -> Any:
        if self._fs is None:
            try:
                import gcsfs
            except ImportError:
                raise ConfigurationError(
                    "gs:// needs gcsfs, which is not installed: pip install gcsfs"
                ) from None
            token = "anon" if self.options.anonymous else None
            self._fs = gcsfs.GCSFileSystem(asynchronous=True, token=token)
        return self._fs

    def _full(self, name: str) -> str:
        return f"{self.path}/{name}" if name else self.path

    async def sizes(self, names: Iterable[str]) -> dict[str, int]:
        fs = await self._filesystem()
        out = {}
        for name in names:
            try:
                out[name] = int((await fs._info(self._full(name)))["size"])
            except Exception as exc:
                raise translate(exc, self.join(name)) from None
        return out

    async def read_bytes(self, name: str) -> bytes:
        fs = await self._filesystem()
        try:
            return bytes(await fs._cat_file(self._full(name)))
        except Exception as exc:
            raise translate(exc, self.join(name)) from None

    async def stream(self, name: str, start: int, end: int) -> AsyncIterator[bytes]:
        fs = await self._filesystem()
        pos = start
        while pos < end:
            stop = min(end, pos + SLICE)
            try:
                data = await fs._cat_file(self._full(name), start=pos, end=stop)
            except Exception as exc:
                raise translate(exc, self.join(name)) from None
            pos += len(data)
            yield data

    async def put_file(self, local: Path, name: str) -> None:
        fs = await self._filesystem()
        try:
            await fs._put_file(str(local), self._full(name))
        except Exception as exc:
            raise translate(exc, self.join(name)) from None


def translate(exc: BaseException, where: str) -> TransferError:
    if isinstance(exc, TransferError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return not_found(where)
    if isinstance(exc, PermissionError):
        return access_denied(where, "; check GOOGLE_APPLICATION_CREDENTIALS")
    if isinstance(exc, ValueError):
        return PermanentTransferError(f"{where}: {exc}")
    return TransferError(f"{where}: network error ({type(exc).__name__}); retrying")
