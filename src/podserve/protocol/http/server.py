"""The REST surface's transport: uvicorn (httptools) bound inside the running event loop.

Start it from the process lifecycle::

    app = create_app(dataplane, settings)                          # podserve.protocol.http.app
    server = HttpServer(app, settings, host="0.0.0.0", port=8080)   # port 0: any free port
    await server.start()        # bound and accepting; server.port is the real port
    ...
    await server.stop()         # stop listening, let in-flight requests finish, close

No connection is ever closed under a request: while the data plane drains every response says
``Connection: close`` (:mod:`.app`), and :meth:`HttpServer.stop` closes a connection only after
its answer or once it has been idle for :data:`IDLE_CLOSE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from podserve.protocol.http.body import ASGIApp
from podserve.settings import Settings

log = logging.getLogger(__name__)

# At stop, a connection idle this long has no request on its way: closing it races nothing.
IDLE_CLOSE_S = 0.5
_ACCEPT_QUEUE_S = 0.2  # to accept what waits in the listen queue before closing it


class _OneWrite:
    """The connection's transport, writing a response's head and body in one system call.

    uvicorn writes the status line and headers at ``http.response.start`` and the body at
    ``http.response.body``: two ``send`` calls per response, a quarter of the server's time on
    small answers. A small write is held until the next one (sent together with ``writelines``,
    which uvloop turns into one ``writev`` without copying) or the end of this loop iteration,
    so nothing ever waits for a write that does not come (HEAD, errors, 100-continue).
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines([held, data])
        elif len(data) <= 4096 and isinstance(data, bytes):
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over :class:`_OneWrite`, noting when it last had traffic."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _OneWrite(transport)  # type: ignore[assignment]
        self.last_active = self.loop.time()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        super().data_received(data)

    def on_response_complete(self) -> None:
        self.last_active = self.loop.time()
        super().on_response_complete()

    def idle_for(self, now: float) -> float:
        """Seconds without a request in progress nor bytes received; 0 while one runs."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return 0.0
        return now - self.last_active


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the lifecycle owns SIGTERM and drains."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """Binds the REST surface inside the running event loop; see the module docstring."""

    def __init__(self, app: ASGIApp, settings: Settings, host: str, port: int) -> None:
        self.app = app
        self.settings = settings
        self.host = host
        self.port = port
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            from podserve.errors import ConfigurationError

            raise ConfigurationError(f"cannot bind HTTP {self.host}:{self.port}: {exc}") from None
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            http=_Protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            proxy_headers=False,
            backlog=2048,
            timeout_graceful_shutdown=max(1, int(self.settings.drain_timeout_seconds)),
        )
        self._server = _Uvicorn(config)
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[sock]), name="podserve-http"
        )
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raises why uvicorn could not start
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.005)
        log.info("HTTP (Open Inference Protocol REST) listening on %s:%d", self.host, self.port)

    async def _close_listener(self) -> None:
        """Stop listening without resetting a connection the kernel already accepted.

        Closing a listening socket resets the connections waiting in its accept queue, whose
        clients may have sent a request already. The queue is shrunk to its minimum first
        (further handshakes wait; the client retries and is refused once the socket is
        closed) and what it holds is accepted and answered, then the socket is closed."""
        assert self._server is not None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.listen(0)
            await asyncio.sleep(_ACCEPT_QUEUE_S)
        for listener in self._server.servers:
            listener.close()

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening; close each connection after its answer or once idle; at most
        ``grace`` seconds (default: the drain timeout), then drop what is left."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.settings.drain_timeout_seconds if grace is None else grace)
        await self._close_listener()
        # A connection mid-request closes after its answer (it says Connection: close while
        # the server drains). One accepted a moment ago may have its first request on the way:
        # only a connection quiet for IDLE_CLOSE_S is closed here.
        while server.server_state.connections and loop.time() < deadline:
            now = loop.time()
            for conn in list(server.server_state.connections):
                if isinstance(conn, _Protocol) and conn.idle_for(now) >= IDLE_CLOSE_S:
                    conn.transport.close()
            await asyncio.sleep(0.05)
        server.should_exit = True  # uvicorn's own shutdown: whatever is left goes now
        try:
            await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - loop.time()) + 0.5)
        except TimeoutError:
            server.force_exit = True
            await task
        self._server, self._task = None, None


__all__ = ["HttpServer"]
