"""One HTTP exchange at the ASGI level: the request headers podserve reads, the body read under
its size limit, and the response written (gzip / deflate when the client accepts it)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from podserve.errors import InvalidRequestError, PayloadTooLargeError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Disconnected(Exception):
    """The client went away while we read its body; there is no one to answer."""


class RequestHeaders:
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


async def read_body(req: RequestHeaders, receive: Receive, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed the limit."""
    if req.content_length is not None:
        try:
            declared = int(req.content_length)
        except ValueError:
            raise InvalidRequestError("Content-Length is not an integer") from None
        if declared > limit:
            raise too_large(limit)
    message = await receive()
    if message["type"] == "http.disconnect":
        raise Disconnected
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise too_large(limit)
    if not message.get("more_body", False):
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body exceeds the limit of {limit} bytes (PODSERVE_MAX_BODY_BYTES)"
    )


def choose_encoding(accept: bytes) -> bytes:
    for token in accept.split(b","):
        coding, _, params = token.strip().partition(b";")
        coding = coding.strip().lower()
        if coding in (b"gzip", b"deflate") and params.replace(b" ", b"") not in (b"q=0", b"q=0.0"):
            return coding
    return b""


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    accept: bytes,
    extra: list[tuple[bytes, bytes]],
) -> None:
    headers = [(b"content-type", content_type), *extra]
    if accept and body:
        coding = choose_encoding(accept)
        if coding == b"gzip":
            body = gzip.compress(body, compresslevel=1)
            headers.append((b"content-encoding", coding))
        elif coding == b"deflate":
            body = zlib.compress(body, 1)
            headers.append((b"content-encoding", coding))
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
