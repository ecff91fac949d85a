"""The REST surface: a lean ASGI app over the data plane.

No web framework sits on the request path: one dict lookup routes a request, the body is read
with the size limit enforced while it streams in, orjson parses and writes JSON, binary tensors
stay zero-copy views over the body. :mod:`.server` serves it with uvicorn.

Once the data plane is draining (SIGTERM), every response carries ``Connection: close``: a
keep-alive client finishes its request and reconnects, through the Service, to a replica that
is not going away.

Endpoints (Open Inference Protocol v2 + Triton's extensions): ``GET /v2``,
``/v2/health/{live,ready}``, ``/v2/models/{m}[/versions/{v}][/ready|/config|/stats]``,
``POST .../infer``, ``/v2/models/stats``, ``/v2/repository/index``,
``POST /v2/repository/models/{m}/{load,unload}`` (403 unless ``repository_api``; bearer
``admin_token`` when set, see :mod:`.admin`), ``/metrics`` and ``/v2/openapi.json``.
"""

from __future__ import annotations

from typing import Any

import orjson

from podserve import metrics
from podserve.dataplane import DataPlane
from podserve.errors import UnauthorizedError
from podserve.protocol.http import convert, routes
from podserve.protocol.http.admin import check_admin, filter_index, load_unload
from podserve.protocol.http.body import (
    ASGIApp,
    Disconnected,
    Receive,
    RequestHeaders,
    Scope,
    Send,
    read_body,
    respond,
)
from podserve.protocol.http.errors import error_response
from podserve.protocol.http.openapi import document_bytes
from podserve.settings import Settings
from podserve.v2.codecs import decode_infer, encode_infer
from podserve.v2.compression import decompress

_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_LIVE_TRUE = b'{"live":true}'
_READY_TRUE = b'{"ready":true}'
_CLOSE = (b"connection", b"close")


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
        req = RequestHeaders(scope["headers"])
        extra: list[tuple[bytes, bytes]] = []
        try:
            endpoint, model, version = routes.match(scope["method"], scope["path"])
            if endpoint == routes.INFER:
                await self._infer(req, receive, send, model, version)
                return
            status, body, ctype = await self._dispatch(endpoint, req, receive, model, version)
        except Disconnected:
            return
        except Exception as exc:
            status, body = error_response(exc)
            ctype = _JSON
            if isinstance(exc, UnauthorizedError):
                extra.append((b"www-authenticate", b"Bearer"))
        await respond(send, status, body, ctype, req.accept, extra + self._closing())

    # --- inference: the hot path ----------------------------------------------------------

    async def _infer(
        self, req: RequestHeaders, receive: Receive, send: Send, model: str, version: str | None
    ) -> None:
        try:
            routes.check_version_string(model, version)
            body = await read_body(req, receive, self.limit)
            self.dataplane.served(model, version)  # unknown model: 404 before any decoding
            if req.content_encoding:
                body = decompress(
                    body, req.content_encoding.decode("latin-1").strip().lower(), self.limit
                )
            hlen = convert.parse_header_length(req.header_length, len(body))
            if hlen == 0:
                meta = self.dataplane.model_metadata(model, version)
                request = convert.decode_raw(body, model, version, meta)
            else:
                request = decode_infer(body, hlen, model, version)
            response = await self.dataplane.infer(request, surface="http")
            payload, header_len = encode_infer(response, request)
        except Disconnected:
            return
        except Exception as exc:
            status, err = error_response(exc)
            await respond(send, status, err, _JSON, req.accept, self._closing())
            return
        if header_len is None:
            await respond(send, 200, payload, _JSON, req.accept, self._closing())
        else:
            extra = [(b"inference-header-content-length", b"%d" % header_len), *self._closing()]
            await respond(send, 200, payload, _BINARY, req.accept, extra)

    def _closing(self) -> list[tuple[bytes, bytes]]:
        """``Connection: close`` once draining: the client's next request goes elsewhere."""
        return [_CLOSE] if self.dataplane.state == "draining" else []

    # --- everything else ------------------------------------------------------------------

    async def _dispatch(
        self, endpoint: str, req: RequestHeaders, receive: Receive, model: str, version: str | None
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
            check_admin(self.settings, req)
            body = await read_body(req, receive, self.limit)
            return 200, orjson.dumps(filter_index(dp.repository_index(), body)), _JSON
        if endpoint in (routes.LOAD, routes.UNLOAD):
            check_admin(self.settings, req)
            await read_body(req, receive, self.limit)
            return await load_unload(dp, endpoint, model)
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


def create_app(dataplane: DataPlane, settings: Settings) -> ASGIApp:
    """The ASGI app serving ``dataplane``; any ASGI server can run it."""
    return App(dataplane, settings)


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


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
