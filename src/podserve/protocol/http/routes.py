"""Path → endpoint matching for the REST surface, without regular expressions.

Static paths are one dict lookup; ``/v2/models/...`` and ``/v2/repository/models/...`` are
split once on ``/``. :func:`match` answers ``(endpoint, model, version)`` or raises
:class:`RouteError` with the status a client should see (404 unknown path, 405 wrong method).
"""

from __future__ import annotations

from typing import Final

from podserve.errors import ModelNotFoundError, PodserveError

# endpoint names the server dispatches on
SERVER_METADATA: Final = "server_metadata"
LIVE: Final = "live"
READY: Final = "ready"
METRICS: Final = "metrics"
OPENAPI: Final = "openapi"
STATS_ALL: Final = "stats_all"
REPO_INDEX: Final = "repository_index"
MODEL_METADATA: Final = "model_metadata"
MODEL_READY: Final = "model_ready"
MODEL_CONFIG: Final = "model_config"
MODEL_STATS: Final = "model_stats"
INFER: Final = "infer"
LOAD: Final = "load"
UNLOAD: Final = "unload"

_GET: Final = frozenset({"GET", "HEAD"})
_POST: Final = frozenset({"POST"})

_STATIC: Final[dict[str, tuple[str, frozenset[str]]]] = {
    "/v2": (SERVER_METADATA, _GET),
    "/v2/health/live": (LIVE, _GET),
    "/v2/health/ready": (READY, _GET),
    "/metrics": (METRICS, _GET),
    "/v2/openapi.json": (OPENAPI, _GET),
    "/v2/models/stats": (STATS_ALL, _GET),
    # Triton's client POSTs the index (with an optional {"ready": bool} body); GET is friendlier.
    "/v2/repository/index": (REPO_INDEX, _GET | _POST),
}
_MODEL_ACTIONS: Final[dict[str, tuple[str, frozenset[str]]]] = {
    "": (MODEL_METADATA, _GET),
    "ready": (MODEL_READY, _GET),
    "config": (MODEL_CONFIG, _GET),
    "stats": (MODEL_STATS, _GET),
    "infer": (INFER, _POST),
}
_REPO_ACTIONS: Final[dict[str, tuple[str, frozenset[str]]]] = {
    "load": (LOAD, _POST),
    "unload": (UNLOAD, _POST),
}
_MODELS = "/v2/models/"
_REPO_MODELS = "/v2/repository/models/"


class RouteError(PodserveError):
    """No endpoint at this path (404) or not with this method (405)."""

    http_status = 404
    grpc_code = "NOT_FOUND"

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.http_status = status  # type: ignore[misc]


def match(method: str, path: str) -> tuple[str, str, str | None]:
    """(endpoint, model name or '', version or None) for a request line."""
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/")
    found = _STATIC.get(path)
    model, version = "", None
    if found is None:
        if path.startswith(_MODELS):
            found, model, version = _model_route(path[len(_MODELS) :])
        elif path.startswith(_REPO_MODELS):
            parts = path[len(_REPO_MODELS) :].split("/")
            if len(parts) == 2 and parts[0]:
                found = _REPO_ACTIONS.get(parts[1])
                model = parts[0]
    if found is None:
        raise RouteError(f"no endpoint at {path}")
    endpoint, methods = found
    if method not in methods:
        raise RouteError(f"{method} is not allowed on {path}", 405)
    return endpoint, model, version


def _model_route(rest: str) -> tuple[tuple[str, frozenset[str]] | None, str, str | None]:
    parts = rest.split("/")
    model = parts[0]
    if not model:
        return None, "", None
    version = None
    if len(parts) >= 3 and parts[1] == "versions":
        version = parts[2]
        if not version:
            return None, model, None
        action_parts = parts[3:]
    else:
        action_parts = parts[1:]
    if len(action_parts) > 1:
        return None, model, version
    action = action_parts[0] if action_parts else ""
    return _MODEL_ACTIONS.get(action), model, version


def check_version_string(model: str, version: str | None) -> None:
    """Versions are positive integers on the volume; anything else cannot exist."""
    if version is not None and not version.isdigit():
        raise ModelNotFoundError(f"model '{model}' has no version {version!r}")
