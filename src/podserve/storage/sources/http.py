"""A model version served over HTTP(S): a directory URL (files listed by its ``SHA256SUMS``)
or an archive URL. Byte ranges are used when the server advertises ``Accept-Ranges: bytes``;
otherwise each file is fetched in one stream (and a resumed pull restarts that file)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from podserve.errors import ConfigurationError, PermanentTransferError, TransferError
from podserve.storage.sources.base import Source, SourceOptions, access_denied, not_found

CHUNK = 4 * 1024 * 1024


class HttpSource(Source):
    ranged = False  # until a HEAD says otherwise

    def __init__(self, uri: str, options: SourceOptions) -> None:
        super().__init__(uri, options)
        self._session: Any = None

    def url(self, name: str) -> str:
        if not name:
            return self.uri
        base, _, query = self.uri.partition("?")
        url = base.rstrip("/") + "/" + name
        return f"{url}?{query}" if query else url

    async def _client(self) -> Any:
        if self._session is None:
            try:
                import aiohttp
            except ImportError:
                raise ConfigurationError(
                    "http(s):// needs aiohttp: pip install 'podserve[http]'"
                ) from None
            timeout = aiohttp.ClientTimeout(
                sock_connect=self.options.timeout_s, sock_read=self.options.timeout_s
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(limit=64), auto_decompress=False
            )
        return self._session

    async def sizes(self, names: Iterable[str]) -> dict[str, int]:
        names = list(names)
        results = await asyncio.gather(*(self._head(n) for n in names))
        ranged = all(r for _, r in results)
        self.ranged = ranged
        return {n: size for n, (size, _) in zip(names, results, strict=True)}

    async def _head(self, name: str) -> tuple[int, bool]:
        session = await self._client()
        where = self.join(name)
        try:
            async with session.head(self.url(name), allow_redirects=True) as resp:
                _check(resp.status, where)
                length = resp.headers.get("Content-Length")
                if length is None:
                    raise PermanentTransferError(f"{where}: the server sent no Content-Length")
                ranged = resp.headers.get("Accept-Ranges", "").lower() == "bytes"
                return int(length), ranged
        except Exception as exc:
            raise translate(exc, where) from None

    async def read_bytes(self, name: str) -> bytes:
        return b"".join([c async for c in self._get(name, None)])

    def stream(self, name: str, start: int, end: int) -> AsyncIterator[bytes]:
        return self._get(name, (start, end))

    async def _get(self, name: str, span: tuple[int, int] | None) -> AsyncIterator[bytes]:
        session = await self._client()
        where = self.join(name)
        headers = {"Range": f"bytes={span[0]}-{span[1] - 1}"} if span else {}
        try:
            async with session.get(self.url(name), headers=headers) as resp:
                _check(resp.status, where)
                if span and span[0] > 0 and resp.status != 206:
                    raise PermanentTransferError(f"{where}: the server ignored a Range request")
                while chunk := await resp.content.read(CHUNK):
                    yield chunk
        except Exception as exc:
            raise translate(exc, where) from None

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _check(status: int, where: str) -> None:
    if status in (404, 410):
        raise not_found(where)
    if status in (401, 403):
        raise access_denied(where, "; check the URL's token or credentials")
    if status == 429 or status >= 500:
        raise TransferError(f"{where}: HTTP {status}; retrying")
    if status >= 400:
        raise PermanentTransferError(f"{where}: HTTP {status}")


def translate(exc: BaseException, where: str) -> TransferError:
    if isinstance(exc, TransferError):
        return exc
    return TransferError(f"{where}: network error ({type(exc).__name__}); retrying")
