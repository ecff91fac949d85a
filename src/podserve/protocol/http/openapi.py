"""The OpenAPI 3.1 document of the REST surface, served at ``/v2/openapi.json``.

Written as data here (not generated from handlers: there is no framework on the request path)
and kept honest by ``tests/protocol/http/test_fuzz.py``, which drives every operation listed
below with generated requests and checks that none answers 5xx.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from podserve import __version__
from podserve.v2 import DATATYPES

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "malformed request",
        401: "missing or wrong bearer token",
        403: "repository API disabled",
        404: "unknown model or version",
        413: "body larger than max_body_bytes",
        503: "not ready, draining or overloaded",
        504: "timeout expired in the queue",
    }
    return {str(c): _json(_ERROR, text[c]) for c in codes}


_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_OBJ = {"type": "object"}


def _model_paths(prefix: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    tag = ["models"]
    return {
        prefix: {
            "get": {
                "tags": tag,
                "summary": "Model metadata",
                "parameters": params,
                "responses": {"200": _json(_OBJ, "metadata"), **_errors(404, 503)},
            }
        },
        f"{prefix}/ready": {
            "get": {
                "tags": tag,
                "summary": "Model readiness",
                "parameters": params,
                "responses": {"200": _json(_OBJ, "ready"), **_errors(404, 503)},
            }
        },
        f"{prefix}/config": {
            "get": {
                "tags": tag,
                "summary": "Triton-style model config",
                "parameters": params,
                "responses": {"200": _json(_OBJ, "config"), **_errors(404, 503)},
            }
        },
        f"{prefix}/stats": {
            "get": {
                "tags": tag,
                "summary": "Model statistics",
                "parameters": params,
                "responses": {"200": _json(_OBJ, "stats"), **_errors(404)},
            }
        },
        f"{prefix}/infer": {
            "post": {
                "tags": tag,
                "summary": "Inference (JSON or Triton binary-tensor extension)",
                "parameters": [
                    *params,
                    {
                        "name": "Inference-Header-Content-Length",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/InferRequest"}
                        },
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/InferResponse"}, "outputs"),
                    **_errors(400, 404, 413, 503, 504),
                },
            }
        },
    }


def document() -> dict[str, Any]:
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": list(DATATYPES)},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "parameters": _OBJ,
            "data": {},
        },
    }
    admin: dict[str, Any] = {"security": [{"bearer": []}]}
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "tags": ["server"],
                "summary": "Server metadata",
                "responses": {"200": _json(_OBJ, "metadata")},
            }
        },
        "/v2/health/live": {
            "get": {
                "tags": ["health"],
                "summary": "Liveness",
                "responses": {"200": _json(_OBJ, "live"), **_errors(503)},
            }
        },
        "/v2/health/ready": {
            "get": {
                "tags": ["health"],
                "summary": "Readiness",
                "responses": {"200": _json(_OBJ, "ready"), **_errors(503)},
            }
        },
        "/v2/models/stats": {
            "get": {
                "tags": ["models"],
                "summary": "All model statistics",
                "responses": {"200": _json(_OBJ, "stats")},
            }
        },
        **_model_paths("/v2/models/{model}", [_MODEL]),
        **_model_paths("/v2/models/{model}/versions/{version}", [_MODEL, _VERSION]),
        "/v2/repository/index": {
            "post": {
                "tags": ["repository"],
                "summary": "Repository index",
                **admin,
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _OBJ}},
                },
                "responses": {"200": _json({"type": "array"}, "models"), **_errors(400, 401, 403)},
            }
        },
        "/v2/repository/models/{model}/load": {
            "post": {
                "tags": ["repository"],
                "summary": "Load a model",
                **admin,
                "parameters": [_MODEL],
                "responses": {"200": _json(_OBJ, "loaded"), **_errors(401, 403, 404, 503)},
            }
        },
        "/v2/repository/models/{model}/unload": {
            "post": {
                "tags": ["repository"],
                "summary": "Unload a model",
                **admin,
                "parameters": [_MODEL],
                "responses": {"200": _json(_OBJ, "unloaded"), **_errors(401, 403, 404)},
            }
        },
        "/metrics": {
            "get": {
                "tags": ["server"],
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "podserve Open Inference Protocol (v2) REST API", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": _OBJ,
                        "inputs": {"type": "array", "minItems": 1, "items": tensor},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "parameters": _OBJ},
                            },
                        },
                    },
                },
                "InferResponse": {
                    "type": "object",
                    "required": ["model_name", "outputs"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "parameters": _OBJ,
                        "outputs": {"type": "array", "items": tensor},
                    },
                },
            },
        },
    }


@functools.cache
def document_bytes() -> bytes:
    return orjson.dumps(document())
