"""The REST surface: a lean ASGI app over the data plane, served by uvicorn (httptools).

No web framework sits on the request path: one dict lookup routes a request, the body is read
with the size limit enforced while it streams in, orjson parses and writes JSON, binary tensors
stay zero-copy views over the body. Start it from the process lifecycle::

    app = create_app(dataplane, settings)
    server = HttpServer(app, settings, host="0.0.0.0", port=8080)   # port 0: any free port
    await server.start()        # bound and accepting; server.port is the real port
    ...
    await server.stop()         # stop accepting, let in-flight requests finish, close

Endpoints (Open Inference Protocol v2 + Triton's extensions): ``GET /v2``,
``/v2/health/{live,ready}``, ``/v2/models/{m}[/versions/{v}][/ready|/config|/stats]``,
``POST .../infer``, ``/v2/models/stats``, ``/v2/repository/index``,
``POST /v2/repository/models/{m}/{load,unload}`` (403 unless ``repository_api``; bearer
``admin_token`` when set), ``/metrics`` and ``/v2/openapi.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hmac
import logging
import socket
import zlib
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from podserve import metrics
from podserve.dataplane import DataPlane
from podserve.errors import (
    ForbiddenError,
    InvalidRequestError,
    ModelNotReadyError,
    PayloadTooLargeError,
    UnauthorizedError,
)
from podserve.protocol.http import convert, routes
from podserve.protocol.http.errors import error_body, error_response
from podserve.protocol.http.openapi import document_bytes
from podserve.settings import Settings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_LIVE_TRUE = b'{"live":true}'
_READY_TRUE = b'{"ready":true}'


class _Disconnected(Exception):
    """The client went away while we read its body; there is no one to answer."""


class _Request:
    """The few headers podserve reads, pulled out of the ASGI scope in one pass."""

    __slots__ = ("accept", "auth", "content_encoding", "content_length", "header_length")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.content_length: bytes | None = None
        self.header_length: bytes | None = None
        self.content_encoding = b""
        self.accept = b""
        self.auth = b""
        for key, value in headers:
            if key == b"content-length":
                self.content_length = value
            elif key == b"inference-header-content-length":
                self.header_length = value
            elif key == b"content-encoding":
                self.content_encoding = value
            elif key == b"accept-encoding":
                self.accept = value
            elif key == b"authorization":
                self.auth = value


class App:
    """The ASGI application (``create_app`` builds it); one instance per data plane."""

    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.limit = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":  # the data plane's lifecycle is managed outside the app
                await _lifespan(receive, send)
            return
        req = _Request(scope["headers"])
        extra: list[tuple[bytes, bytes]] = []
        try:
            endpoint, model, version = routes.match(scope["method"], scope["path"])
            if endpoint == routes.INFER:
                await self._infer(req, receive, send, model, version)
                return
            status, body, ctype = await self._dispatch(endpoint, req, receive, model, version)
        except _Disconnected:
            return
        except Exception as exc:
            status, body = error_response(exc)
            ctype = _JSON
            if isinstance(exc, UnauthorizedError):
                extra.append((b"www-authenticate", b"Bearer"))
        await _respond(send, status, body, ctype, req.accept, extra)

    # --- inference: the hot path ----------------------------------------------------------

    async def _infer(
        self, req: _Request, receive: Receive, send: Send, model: str, version: str | None
    ) -> None:
        try:
            routes.check_version_string(model, version)
            body = await self._read_body(req, receive)
            self.dataplane.served(model, version)  # unknown model: 404 before any decoding
            if req.content_encoding:
                body = convert.decompress(
                    body, req.content_encoding.decode("latin-1").strip().lower(), self.limit
                )
            hlen = convert.parse_header_length(req.header_length, len(body))
            if hlen == 0:
                meta = self.dataplane.model_metadata(model, version)
                request = convert.decode_raw(body, model, version, meta)
            else:
                request = convert.decode_infer(body, hlen, model, version)
            response = await self.dataplane.infer(request, surface="http")
            payload, header_len = convert.encode_infer(response, request)
        except _Disconnected:
            return
        except Exception as exc:
            status, err = error_response(exc)
            await _respond(send, status, err, _JSON, req.accept, [])
            return
        if header_len is None:
            await _respond(send, 200, payload, _JSON, req.accept, [])
        else:
            extra = [(b"inference-header-content-length", b"%d" % header_len)]
            await _respond(send, 200, payload, _BINARY, req.accept, extra)

    async def _read_body(self, req: _Request, receive: Receive) -> bytes:
        """The whole body, refused with 413 as soon as it is known to exceed the limit."""
        limit = self.limit
        if req.content_length is not None:
            try:
                declared = int(req.content_length)
            except ValueError:
                raise InvalidRequestError("Content-Length is not an integer") from None
            if declared > limit:
                raise _too_large(limit)
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            return body
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    # --- everything else ------------------------------------------------------------------

    async def _dispatch(
        self, endpoint: str, req: _Request, receive: Receive, model: str, version: str | None
    ) -> tuple[int, bytes, bytes]:
        dp = self.dataplane
        if endpoint == routes.LIVE:
            if dp.live():
                return 200, _LIVE_TRUE, _JSON
            return 503, orjson.dumps({"live": False, "error": f"server is {dp.state}"}), _JSON
        if endpoint == routes.READY:
            if dp.ready():
                return 200, _READY_TRUE, _JSON
            return 503, orjson.dumps({"ready": False, "error": dp.not_ready_reason()}), _JSON
        if endpoint == routes.SERVER_METADATA:
            return 200, orjson.dumps(dp.server_metadata()), _JSON
        if endpoint == routes.METRICS:
            return 200, metrics.render(), _METRICS_TYPE
        if endpoint == routes.OPENAPI:
            return 200, document_bytes(), _JSON
        if endpoint == routes.STATS_ALL:
            return 200, orjson.dumps({"model_stats": dp.model_stats()}), _JSON
        if endpoint == routes.REPO_INDEX:
            self._check_admin(req)
            body = await self._read_body(req, receive)
            return 200, orjson.dumps(_index(dp.repository_index(), body)), _JSON
        if endpoint in (routes.LOAD, routes.UNLOAD):
            self._check_admin(req)
            await self._read_body(req, receive)
            return await self._load_unload(endpoint, model)
        routes.check_version_string(model, version)
        if endpoint == routes.MODEL_METADATA:
            return 200, orjson.dumps(dp.model_metadata(model, version)), _JSON
        if endpoint == routes.MODEL_READY:
            if dp.model_ready(model, version):
                return 200, orjson.dumps({"name": model, "ready": True}), _JSON
            served = dp.models[model]
            reason = f"model '{model}' is {served.state}" + (
                f": {served.reason}" if served.reason else ""
            )
            return 503, orjson.dumps({"name": model, "ready": False, "error": reason}), _JSON
        if endpoint == routes.MODEL_CONFIG:
            return 200, orjson.dumps(_triton_config(dp.model_metadata(model, version))), _JSON
        if endpoint == routes.MODEL_STATS:
            dp.model_ready(model, version)  # 404 for an unknown model or version
            return 200, orjson.dumps({"model_stats": dp.model_stats(model)}), _JSON
        raise routes.RouteError(f"no endpoint {endpoint}")  # pragma: no cover - table is closed

    def _check_admin(self, req: _Request) -> None:
        if not self.settings.repository_api:
            raise ForbiddenError(
                "the repository API is disabled; enable it with PODSERVE_REPOSITORY_API=true"
            )
        token = self.settings.admin_token
        if token:
            given = req.auth[7:].strip() if req.auth[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(given, token.encode()):
                raise UnauthorizedError("the repository API needs 'Authorization: Bearer <token>'")

    async def _load_unload(self, endpoint: str, model: str) -> tuple[int, bytes, bytes]:
        dp = self.dataplane
        if endpoint == routes.UNLOAD:
            await dp.unload(model)
            return 200, orjson.dumps({"name": model, "state": "UNLOADED"}), _JSON
        served = dp.models.get(model)
        if served is None or not served.ready:
            await asyncio.to_thread(dp.repository.resolve, model)  # 404 before any state change
            served = await dp.load(model)
            if not served.ready:
                raise ModelNotReadyError(f"model '{model}' failed to load: {served.reason}")
        return 200, orjson.dumps({"name": model, "state": "READY"}), _JSON


def create_app(dataplane: DataPlane, settings: Settings) -> ASGIApp:
    """The ASGI app serving ``dataplane``; any ASGI server can run it."""
    return App(dataplane, settings)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body exceeds the limit of {limit} bytes (PODSERVE_MAX_BODY_BYTES)"
    )


def _index(entries: list[dict[str, Any]], body: bytes) -> list[dict[str, Any]]:
    """Triton's index request may ask ``{"ready": true}`` for ready models only."""
    if not body.strip():
        return entries
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if isinstance(doc, dict) and doc.get("ready") is True:
        return [e for e in entries if e.get("state") == "READY"]
    return entries


def _triton_config(meta: dict[str, Any]) -> dict[str, Any]:
    """A minimal Triton model config (``/config``), which perf_analyzer and others read."""
    batched = meta["parameters"]["max_batch_size"] > 0

    def tensor(t: dict[str, Any]) -> dict[str, Any]:
        dt = "STRING" if t["datatype"] == "BYTES" else t["datatype"]
        return {
            "name": t["name"],
            "data_type": f"TYPE_{dt}",
            "dims": t["shape"][1:] if batched else t["shape"],
        }

    return {
        "name": meta["name"],
        "platform": meta["platform"],
        "max_batch_size": meta["parameters"]["max_batch_size"],
        "input": [tensor(t) for t in meta["inputs"]],
        "output": [tensor(t) for t in meta["outputs"]],
    }


def _choose_encoding(accept: bytes) -> bytes:
    for token in accept.split(b","):
        coding, _, params = token.strip().partition(b";")
        coding = coding.strip().lower()
        if coding in (b"gzip", b"deflate") and params.replace(b" ", b"") not in (b"q=0", b"q=0.0"):
            return coding
    return b""


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    accept: bytes,
    extra: list[tuple[bytes, bytes]],
) -> None:
    headers = [(b"content-type", content_type), *extra]
    if accept and body:
        coding = _choose_encoding(accept)
        if coding == b"gzip":
            body = gzip.compress(body, compresslevel=1)
            headers.append((b"content-encoding", coding))
        elif coding == b"deflate":
            body = zlib.compress(body, 1)
            headers.append((b"content-encoding", coding))
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


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
    """uvicorn's httptools protocol over :class:`_OneWrite`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _OneWrite(transport)  # type: ignore[assignment]


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

    async def stop(self, grace: float | None = None) -> None:
        """Close the listener and let in-flight requests finish for at most ``grace`` seconds.

        ``grace`` defaults to the drain timeout; past it, open connections are dropped.
        """
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        wait = self.settings.drain_timeout_seconds if grace is None else grace
        try:
            await asyncio.wait_for(asyncio.shield(self._task), wait + 0.5)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        self._server, self._task = None, None


__all__ = ["App", "HttpServer", "create_app", "error_body"]
