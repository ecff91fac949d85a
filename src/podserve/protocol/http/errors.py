"""The one mapping from exceptions to HTTP error responses of the REST surface.

Every error answer is ``{"error": "<message>"}`` with the status the error class carries
(:attr:`~podserve.errors.PodserveError.http_status`). Anything that is not a
:class:`~podserve.errors.PodserveError` is a bug: it is logged with its traceback and answered
500 without internals, and the server keeps serving.
"""

from __future__ import annotations

import logging

import orjson

from podserve.errors import PodserveError

log = logging.getLogger(__name__)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_response(exc: BaseException) -> tuple[int, bytes]:
    """(status, JSON body) for any exception raised while answering a request."""
    if isinstance(exc, PodserveError):
        return exc.http_status, error_body(exc.message)
    log.error("unexpected error while answering an HTTP request", exc_info=exc)
    return 500, error_body(f"internal server error ({type(exc).__name__}); see the server log")
