"""The repository API (Triton's model-repository extension): index, load and unload, off
unless ``repository_api`` is set, behind the bearer ``admin_token`` when one is."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import orjson

from podserve.dataplane import DataPlane
from podserve.errors import (
    ForbiddenError,
    InvalidRequestError,
    ModelNotReadyError,
    UnauthorizedError,
)
from podserve.protocol.http import routes
from podserve.protocol.http.body import RequestHeaders
from podserve.settings import Settings

_JSON = b"application/json"


def check_admin(settings: Settings, req: RequestHeaders) -> None:
    """403 while the repository API is off; 401 without the bearer ``admin_token`` when set."""
    if not settings.repository_api:
        raise ForbiddenError(
            "the repository API is disabled; enable it with PODSERVE_REPOSITORY_API=true"
        )
    token = settings.admin_token
    if token:
        given = req.auth[7:].strip() if req.auth[:7].lower() == b"bearer " else b""
        if not hmac.compare_digest(given, token.get_secret_value().encode()):
            raise UnauthorizedError("the repository API needs 'Authorization: Bearer <token>'")


async def load_unload(dp: DataPlane, endpoint: str, model: str) -> tuple[int, bytes, bytes]:
    """``POST /v2/repository/models/{m}/load|unload``."""
    if endpoint == routes.UNLOAD:
        await dp.unload(model)
        return 200, orjson.dumps({"name": model, "state": "UNLOADED"}), _JSON
    served = dp.models.get(model)
    if served is None or not served.ready:
        await asyncio.to_thread(dp.repository.resolve, model)  # 404 before any state change
        served = await dp.api_load(model)
        if not served.ready:
            raise ModelNotReadyError(f"model '{model}' failed to load: {served.reason}")
    return 200, orjson.dumps({"name": model, "state": "READY"}), _JSON


def filter_index(entries: list[dict[str, Any]], body: bytes) -> list[dict[str, Any]]:
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
