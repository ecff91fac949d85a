"""A round-robin TCP proxy with kube-proxy's habits, for rolling-update tests.

Each new client connection goes to the next backend in the rotation and stays with it until
either side closes (kube-proxy balances connections, not requests: a keep-alive client sticks
to one pod). A backend leaves the rotation when told (:meth:`remove`, like an endpoint removed
some time after its pod got SIGTERM) and comes back with :meth:`add` (a new pod turned
ready). Existing connections are never touched by either::

    proxy = RoundRobinProxy([("127.0.0.1", 8080), ("127.0.0.1", 9080)])
    await proxy.start()                  # proxy.port: where clients connect
    proxy.remove(("127.0.0.1", 8080))    # no new connections go there
    ...
    await proxy.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

Backend = tuple[str, int]


class RoundRobinProxy:
    def __init__(self, backends: list[Backend], host: str = "127.0.0.1") -> None:
        self.rotation: list[Backend] = list(backends)
        self.host = host
        self.port = 0
        self.connections = 0
        self.connect_failures = 0
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def remove(self, backend: Backend) -> None:
        if backend in self.rotation:
            self.rotation.remove(backend)

    def add(self, backend: Backend) -> None:
        if backend not in self.rotation:
            self.rotation.append(backend)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if not self.rotation:
            writer.close()
            return
        backend = self.rotation[next(self._turn) % len(self.rotation)]
        try:
            up_reader, up_writer = await asyncio.open_connection(*backend)
        except OSError:
            self.connect_failures += 1
            writer.close()
            return
        pumps = [
            asyncio.create_task(_pump(reader, up_writer)),
            asyncio.create_task(_pump(up_reader, writer)),
        ]
        self._pumps.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._pumps.difference_update(pumps)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error, then close ``dst``: a close on one side reaches the other,
    after every byte that came before it."""
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.close()
        with contextlib.suppress(ConnectionError, OSError):
            await dst.wait_closed()
